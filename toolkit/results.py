"""What a request gives back: stream events and the final ``InferResult``.

Every dataclass here has ``to_dict()`` with JSON-ready values, so a result
can be stored and an answer replayed from its ``RunRecord``.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from typing import Any

from toolkit.grounding import Grounding
from toolkit.wire import ENUM, JSON, checked


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # prompt_tokens is an estimate from bytes: the model's server did not count them


@dataclass(frozen=True)
class Timings:
    """Seconds from the moment the request was accepted."""

    queued_s: float
    first_token_s: float | None
    total_s: float


@dataclass(frozen=True)
class Source:
    """A search result that was sent to the model, as ``[index]``."""

    index: int
    title: str
    url: str
    snippet: str


@dataclass(frozen=True)
class RunRecord:
    """Everything needed to replay an answer."""

    request_id: str
    created_at: str
    model: str  # the name the request used (the service's name for it)
    model_source: str  # gguf | local | hub (a local model), or the remote engine's kind
    model_hash: str | None  # sha256 of the weights (None: a remote server does not say)
    adapter: str | None
    device: str | None
    dtype: str | None
    quantization: str | None
    params: dict[str, Any]  # with the seed actually used
    messages: list[dict[str, str]]  # exactly what the model was sent
    prompt_text: str | None  # the messages rendered by the chat template (None: a remote server renders them)
    versions: dict[str, str]
    search: dict[str, Any] | None = None  # provider, query, time, status and results of the web search
    dropped_history_turns: int = 0
    adapter_hash: str | None = None  # sha256 of the LoRA adapter's weights, with ``adapter``
    engine: str = "local"  # local | openai
    served_model: str | None = None  # the model's name where it ran (a remote server's own name)
    engine_version: str | None = None  # the remote server's system_fingerprint or version, when it says
    sent: dict[str, Any] | None = None  # the parameters sent to a remote server, as sent
    answer: str | None = None  # the text answered, and why it ended: what a replay is compared with
    finish_reason: str | None = None
    raw_answer: str | None = None  # what the model generated, when the loop guard cut its copies off the answer
    replay_of: str | None = None  # the request id of the record this answer replayed
    grounding: dict[str, Any] | None = None  # the grounding check of the answer, when it had sources
    # who asked: the caller's identity on a server (an API key's fingerprint, or the client's address
    # without keys; never the key), None in process
    owner: str | None = None
    # how it went (a kept conversation's turn shows them as when it was live): tokens, and seconds
    usage: dict[str, Any] | None = None  # Usage's fields
    timings: dict[str, Any] | None = None  # Timings' fields
    # a local model's decode steps: eager, compiled (COMPILE_DECODE) or mixed (some of each); a replay takes the
    # path named (mixed: the engine's choice); None: a remote server, or a record from before it was kept
    decode: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """A record back from its JSON form (a file, GraphQL, the run log). A record is untrusted input: each
        field is checked against this dataclass (the one that writes records), the messages' roles, the
        parameters and the search snapshot too; ``InvalidRequest`` names the first field that is wrong."""
        from toolkit.errors import InvalidRequest
        from toolkit.params import GenerationParams
        from toolkit.search import SearchOutcome

        if isinstance(data, RunRecord):
            return data
        if not isinstance(data, dict):
            raise InvalidRequest("run_record", "must be a run record (a JSON object), as a result's run_record is")
        required = [f.name for f in dataclass_fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise InvalidRequest("run_record", f"is not a run record: no {missing[0]!r}")
        fields = checked(cls, data, "run_record")
        for i, message in enumerate(fields["messages"]):
            if set(message) != {"role", "content"} or message["role"] not in ("system", "user", "assistant"):
                raise InvalidRequest(
                    f"run_record.messages[{i}]", "must be {role: system | user | assistant, content: string}"
                )
        known = GenerationParams.names()
        for name, value in fields["params"].items():
            if name in known:
                GenerationParams.check(name, value, where="run_record.params")
        if fields.get("search") is not None:
            SearchOutcome.from_dict(fields["search"])  # checked here: a replay uses it instead of a new search
        dropped = fields.get("dropped_history_turns", 0)
        if not 0 <= dropped <= MAX_HISTORY_TURNS:  # a count of turns, written into the new record
            raise InvalidRequest(
                "run_record.dropped_history_turns", f"must be between 0 and {MAX_HISTORY_TURNS}, got {dropped}"
            )
        if fields.get("decode") not in (None, *DECODE_PATHS):
            raise InvalidRequest("run_record.decode", f"must be one of {', '.join(DECODE_PATHS)}")
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DECODE_PATHS = ("eager", "compiled", "mixed")
MAX_HISTORY_TURNS = 1_000_000  # far more than any input limit holds: a record's count beyond it is not one


@dataclass(frozen=True)
class InferResult:
    id: str
    text: str
    finish_reason: str = field(metadata=ENUM)  # stop | length | cancelled | timeout | repetition
    usage: Usage
    timings: Timings
    model: str
    adapter: str | None
    run_record: RunRecord = field(metadata=JSON)
    sources: tuple[Source, ...] = ()
    # off | ok | timeout | rate_limited | no_results | network | error
    search_status: str = field(default="off", metadata=ENUM)
    search_message: str | None = None  # why the search failed, for the user
    grounding: Grounding | None = None  # with sources: is each sentence supported by them (toolkit.grounding)
    conversation_id: str | None = None  # the kept conversation this answer is a turn of (toolkit.conversation)
    conversation_error: str | None = None  # asked to be kept and not kept: why (the answer itself stands)

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed after the first token."""
        t = self.timings
        n = self.usage.completion_tokens - 1
        if t.first_token_s is None or n <= 0 or t.total_s <= t.first_token_s:
            return None
        return n / (t.total_s - t.first_token_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tokens_per_s"] = self.tokens_per_s
        return d


@dataclass(frozen=True)
class Token:
    """A stream event: new text (``delta``) and the answer so far (``text``)."""

    request_id: str
    delta: str
    text: str


@dataclass(frozen=True)
class SearchStarted:
    """Web search began (before any token)."""

    request_id: str
    query: str
    provider: str


@dataclass(frozen=True)
class SearchFinished:
    """Web search ended: ``sources`` when ``status == "ok"``, else ``message`` says why not."""

    request_id: str
    status: str
    sources: tuple[Source, ...]
    message: str | None
    from_cache: bool
    seconds: float


@dataclass(frozen=True)
class Done:
    """The last stream event, with the full result."""

    result: InferResult


StreamEvent = SearchStarted | SearchFinished | Token | Done


@dataclass(frozen=True)
class ModelHealth:
    """One model's status, in ``Health.models``."""

    name: str
    engine: str  # local | openai
    status: str = field(metadata=ENUM)  # loading | ready | unavailable | error | stopped
    error: str | None = None  # why it failed to load, or why a remote one is not reachable (yet, or now)
    since: str | None = None  # when the status began (ISO time)
    compiled: tuple[str, ...] = ()  # a local model's decode-step shapes served compiled (COMPILE_DECODE)


@dataclass(frozen=True)
class Health:
    status: str = field(metadata=ENUM)  # loading | ready | unavailable | error | stopped: the default model's
    model: str  # the default model
    device: str | None
    dtype: str | None
    quantization: str | None
    queue_depth: int  # over all models
    active: int
    uptime_s: float
    version: str
    error: str | None = None
    models: tuple[ModelHealth, ...] = ()
    preparing: int = 0  # accepted, being searched for or prepared: not yet in an engine's queue
    store: str = "off"  # the conversation store: off | ok | full | busy | read-only | corrupt | ... (its last failure)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    id: str  # the name requests pass as ``model``
    source: str  # gguf | local | hub | openai | pending
    loaded: bool
    context_length: int | None
    content_hash: str | None
    engine: str = "local"  # local | openai
    status: str = field(default="ready", metadata=ENUM)  # loading | ready | unavailable | error | stopped
    error: str | None = None
    default: bool = False
    served_model: str | None = None
    device: str | None = None
    dtype: str | None = None
    quantization: str | None = None
    # what a request that leaves a parameter out gets: generation_config.json, the bundled recipe, the models file
    defaults: dict[str, Any] = field(default_factory=dict, metadata=JSON)
    # the parameters a remote model leaves to its server's own defaults (vLLM reads the generation config)
    server_defaults: tuple[str, ...] = ()
    since: str | None = None  # when the status began (ISO time)
    batch_size: int | None = None  # the most requests its engine generates together; None: it cannot tell
    linear: str | None = None  # a bfloat16 CPU model's linear layers: packed (oneDNN's kernels) or plain (F.linear)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded adapter, as ``adapters()`` and the GraphQL ``adapters`` query list it."""

    name: str
    path: str  # relative to ADAPTERS_DIR
    base_model: str | None
    adapter_hash: str  # sha256 of the adapter weights file
    r: int | None
    alpha: int | None
    target_modules: tuple[str, ...]
    steps: int | None
    examples: int | None
    final_loss: float | None
    created_at: str | None
    loaded_at: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_modules": list(self.target_modules)}


@dataclass(frozen=True)
class Difference:
    """Something a replay cannot match: the field of the run record, what it says, and what there is now."""

    field: str
    recorded: str | None
    now: str | None


@dataclass(frozen=True)
class Replay:
    """A replayed run record: the new answer, and whether its text is the recorded one.

    ``result`` is None when something could not match (another model hash, a missing adapter, a
    changed chat template): ``differences`` says what, instead of an answer that only looks comparable.
    """

    result: InferResult | None
    identical: bool
    differences: tuple[Difference, ...] = ()
