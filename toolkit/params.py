"""Requests and their validation: ``GenerationParams`` and ``InferRequest``.

Validation happens here, once, when the dataclass is built: every problem is
an ``InvalidRequest`` naming the field and the bound. Limits that depend on
the deployment (the largest ``max_new_tokens``, the input budget) are checked
by ``resolve`` (and the service, which counts tokens) against a ``Limits`` from the settings.

Each generation parameter is declared once, on ``GenerationParams`` (``param(...)``: its kind,
bounds, default where the model has none, and its names on the OpenAI API); the GraphQL input,
the OpenAI endpoint, the client, the remote engine and the error mappings derive from ``PARAMS``.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from toolkit.errors import InvalidRequest

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64
MAX_SEED = 2**63 - 1
ROLES = ("user", "assistant")
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")  # a caller's own request id: no paths, no control characters


def split_model(name: str, served: Iterable[str]) -> tuple[str, str | None] | None:
    """``name`` as (model, adapter), the one reading of a model name everywhere (routing, the client, the
    evaluation runner): a served model's own name is itself (a remote ``llama3:8b`` routes as itself), else
    ``<model>:<adapter>`` split at the last colon (``llama3:8b:quenby``); None when it names no served model."""
    names = set(served)
    if name in names:
        return name, None
    base, sep, adapter = name.rpartition(":")
    if sep and adapter and base in names:
        return base, adapter
    return None


@dataclass(frozen=True)
class Limits:
    """Per-deployment bounds, built from ``Settings``."""

    max_new_tokens: int = 1024
    max_input_tokens: int = 4096


@dataclass(frozen=True)
class Control:
    """How the dashboard shows a parameter: a slider named ``label`` from ``low`` to ``high`` by ``step`` (within
    the declaration's bounds: where it has none above, the slider's end is a practical one)."""

    label: str
    low: float
    high: float
    step: float


@dataclass(frozen=True)
class Param:
    """How one generation parameter is declared; every front end, client and engine derives from this.

    The GraphQL name is the field's name in camelCase (``toolkit.wire.camel``); ``openai`` is its name on
    the OpenAI API (``None``: not served there), ``extra`` whether it travels as an extra field beside
    OpenAI's own (as vLLM takes ``top_k``), ``remote`` whether a remote engine can be sent it at all.
    ``fallback`` is the toolkit's default where the model says none (``None``: none; a remote model then
    leaves it to its server); ``neutral`` the value that changes nothing.
    """

    kind: str  # int | float | strings
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # > low, not >=
    hint: str = ""  # what a value means, for messages ("0 means greedy")
    doc: str = ""
    fallback: Any = None
    neutral: Any = None
    openai: str | None = ""  # "": the same name
    openai_aliases: tuple[str, ...] = ()
    extra: bool = False
    remote: bool = True
    control: Control | None = None  # shown in the dashboard's settings (None: not there)

    def __post_init__(self) -> None:
        c = self.control
        if c is not None and (
            (self.low is not None and c.low < self.low) or (self.high is not None and c.high > self.high)
        ):
            raise ValueError(f"control: {c.low}..{c.high} is outside the parameter's bounds {self.bound()}")

    def describe(self) -> str | None:
        """What a front end says about the parameter: its doc, bound and hint ("... (between -2 and 2; 0 means
        none)."), for GraphQL's descriptions."""
        words = "; ".join(w for w in (self.bound(), self.hint) if w)
        local = "" if self.remote else "Local models only."
        text = " ".join(p for p in (self.doc, f"({words})." if words else "", local) if p)
        return text or None

    def bound(self) -> str:
        def number(x: float) -> str:
            return str(int(x)) if self.kind == "int" else f"{x:g}"

        if self.low is not None and self.high is not None:
            if self.low_open:
                return f"in ({number(self.low)}, {number(self.high)}]"
            return f"between {number(self.low)} and {number(self.high)}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {number(self.low)}"
        return ""


def param(kind: str, **options: Any) -> Any:
    """``field()`` of a ``GenerationParams`` parameter, with its declaration in the metadata."""
    default: Any = () if kind == "strings" else None
    return field(default=default, metadata={"param": Param(kind, **options)})


@dataclass(frozen=True)
class GenerationParams:
    """How to sample. ``temperature == 0`` means greedy decoding.

    Each field is declared here once (its bounds, names on the wire, default where the model has
    none); ``PARAMS`` and the functions below derive the rest. A field left as None takes the model's
    default (see ``ModelInfo.defaults``): its generation_config.json, the toolkit's recipe for the bundled
    model, the models file; for a local model the declared ``fallback`` where none says, for a remote
    one its server's own. ``resolve`` fills them, once, for the engine.
    """

    max_new_tokens: int | None = param(
        "int", low=1, fallback=256, openai="max_tokens", openai_aliases=("max_completion_tokens",),
        doc="The most tokens to generate.", control=Control("Max tokens", 1, 1024, 1),
    )  # fmt: skip
    temperature: float | None = param(
        "float", low=0, hint="0 means greedy", fallback=0.7, neutral=None, control=Control("Temperature", 0, 2, 0.05)
    )
    top_p: float | None = param("float", low=0, high=1, low_open=True, fallback=1.0, neutral=1.0)
    top_k: int | None = param("int", low=0, hint="0 means all", fallback=0, neutral=0, extra=True)
    min_p: float | None = param(
        "float", low=0, high=1, hint="0 means none", fallback=0.0, neutral=0.0, extra=True,
        doc="Drop tokens less likely than min_p times the most likely one.", control=Control("Min p", 0, 1, 0.01),
    )  # fmt: skip
    repetition_penalty: float | None = param(
        "float", low=0, low_open=True, hint="1 means none", fallback=1.0, neutral=1.0, extra=True,
        doc="transformers' CTRL-style penalty; it counts the prompt too.",
    )  # fmt: skip
    # against repeating oneself, over the generated tokens only (toolkit/engines/local/repeats.py): the local
    # engine's (extra fields on this server's /v1); a remote model refuses them (llama.cpp has DRY, vLLM not)
    dry_multiplier: float | None = param(
        "float", low=0, hint="0 means off", fallback=0.0, neutral=0.0, extra=True, remote=False,
        doc="DRY: penalise a token that would extend a sequence the answer already has.",
    )  # fmt: skip
    dry_base: float | None = param(
        "float", low=1, low_open=True, fallback=1.75, extra=True, remote=False,
        doc="DRY: how fast the penalty grows with the length of the repeated sequence.",
    )  # fmt: skip
    dry_allowed_length: int | None = param(
        "int", low=1, fallback=2, extra=True, remote=False,
        doc="DRY: the longest repeated sequence that is not penalised.",
    )  # fmt: skip
    no_repeat_ngram_size: int | None = param(
        "int", low=0, hint="0 means off", fallback=0, neutral=0, extra=True, remote=False,
        doc="Never generate an n-gram of this many tokens twice.",
    )  # fmt: skip
    seed: int | None = param("int", low=0, high=MAX_SEED)
    stop: tuple[str, ...] = param(
        "strings", doc=f"Up to {MAX_STOP_STRINGS} strings that end the answer (not included in it)."
    )
    # OpenAI's (and vLLM's) penalties, over the generated tokens only: copying a source is not punished
    presence_penalty: float | None = param(
        "float", low=-2, high=2, hint="0 means none", fallback=0.0, neutral=0.0,
        doc="Subtracted once from every token already generated (OpenAI's meaning, generated tokens only).",
        control=Control("Presence", -2, 2, 0.1),
    )  # fmt: skip
    frequency_penalty: float | None = param(
        "float", low=-2, high=2, hint="0 means none", fallback=0.0, neutral=0.0,
        doc="Subtracted per time a token was generated (OpenAI's meaning, generated tokens only).",
        control=Control("Frequency", -2, 2, 0.1),
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in PARAMS:
            value = self.check(name, getattr(self, name))
            object.__setattr__(self, name, value)

    @staticmethod
    def check(name: str, value: Any, *, where: str = "params") -> Any:
        """``value`` checked against the declaration of ``name`` (stop strings as a tuple); ``InvalidRequest``
        naming ``where.name`` and the bound."""
        spec, label = PARAMS[name], f"{where}.{name}"
        if spec.kind == "strings":
            return _strings(label, value)
        if value is None:
            return None
        if spec.kind == "int":
            _int(label, value, low=int(spec.low) if spec.low is not None else None, high=spec.high)
        else:
            _number(label, value)
        low_fails = spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low)
        high_fails = spec.high is not None and value > spec.high
        if low_fails or high_fails:
            hint = f" ({spec.hint})" if spec.hint else ""
            raise InvalidRequest(label, f"must be {spec.bound()}{hint}, got {value}")
        return value

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(PARAMS)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def complete(self) -> bool:
        """Every parameter with a fallback is set (what the local engine needs)."""
        return not self.missing()

    def missing(self) -> list[str]:
        """The parameters with a fallback that are not set: what ``resolve`` has not filled."""
        return [name for name, spec in PARAMS.items() if spec.fallback is not None and getattr(self, name) is None]

    def given(self) -> dict[str, Any]:
        """The parameters this request sets (not None, not empty)."""
        return {k: v for k, v in self.to_dict().items() if v is not None and v != []}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


# ----- derived from the declaration ---------------------------------------------------------

PARAMS: dict[str, Param] = {f.name: f.metadata["param"] for f in fields(GenerationParams)}
# The toolkit's own defaults, where neither the request nor the model says (local models only).
FALLBACK_DEFAULTS: dict[str, Any] = {n: p.fallback for n, p in PARAMS.items() if p.fallback is not None}
DEFAULT_MAX_NEW_TOKENS: int = FALLBACK_DEFAULTS["max_new_tokens"]
DEFAULTABLE = tuple(n for n, p in PARAMS.items() if p.kind != "strings" and n != "seed")


def openai_names() -> dict[str, str]:
    """OpenAI request field -> parameter (aliases included)."""
    out: dict[str, str] = {}
    for name, spec in PARAMS.items():
        if spec.openai is not None:
            out[spec.openai or name] = name
            out.update(dict.fromkeys(spec.openai_aliases, name))
    return out


def openai_name(name: str) -> str | None:
    spec = PARAMS[name]
    return None if spec.openai is None else spec.openai or name


def model_defaults(engine: Mapping[str, Any], configured: Mapping[str, Any], *, fallback: bool) -> dict[str, Any]:
    """What a request that leaves a parameter out gets from a model: the declared fallbacks (``fallback``:
    a local model), under the model's own (``engine``: generation_config.json, the bundled recipe), under
    the configured ones (the models file, GENERATION_DEFAULTS). ``max_new_tokens`` always has one: a
    remote model's other parameters left out here are its server's own defaults."""
    base = FALLBACK_DEFAULTS if fallback else {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}
    given = {**engine, **configured}
    return {**base, **{k: v for k, v in given.items() if k in DEFAULTABLE and v is not None}}


def filled(**params: Any) -> GenerationParams:
    """Parameters with every one set: the given ones, the toolkit's fallbacks for the rest. For an engine
    used directly (tests, benchmarks); the service resolves a request's against its model's defaults."""
    return resolve(GenerationParams(**params), FALLBACK_DEFAULTS, Limits(max_new_tokens=2**31))


def resolve(
    params: GenerationParams, defaults: Mapping[str, Any], limits: Limits, *, where: str = "params"
) -> GenerationParams:
    """The parameters an engine runs with, filled once: the request's own, else the model's ``defaults``
    (``model_defaults``); ``max_new_tokens`` within the deployment's limit. A parameter still None is left
    to a remote model's server."""
    filled = {name: defaults[name] for name in DEFAULTABLE if getattr(params, name) is None and name in defaults}
    if params.max_new_tokens is None and "max_new_tokens" not in filled:
        filled["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
    out = replace(params, **filled) if filled else params
    wanted = out.max_new_tokens or 0
    if wanted > limits.max_new_tokens:
        if params.max_new_tokens is None:  # the model's default is over this deployment's limit
            return replace(out, max_new_tokens=limits.max_new_tokens)
        raise InvalidRequest(f"{where}.max_new_tokens", f"must be between 1 and {limits.max_new_tokens}, got {wanted}")
    return out


@dataclass(frozen=True)
class Turn:
    """One earlier message of the conversation."""

    role: str
    content: str


@dataclass(frozen=True)
class InferRequest:
    """One question to the model, with its context and parameters."""

    prompt: str
    history: tuple[Turn, ...] = ()
    system_prompt: str | None = None
    web_search: bool = False
    model: str | None = None
    adapter: str | None = None
    params: GenerationParams = field(default_factory=GenerationParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timeout_s: float | None = None  # seconds before it ends with finish reason "timeout"; at most REQUEST_TIMEOUT
    # Who sent it (the server's caller identity; "" in process). Request ids are unique per owner,
    # and only the owner can cancel one: another owner's id answers as an unknown id does.
    owner: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidRequest("prompt", "must be a non-empty string")
        object.__setattr__(self, "history", _history(self.history))
        if self.system_prompt is not None:
            if not isinstance(self.system_prompt, str):
                raise InvalidRequest("system_prompt", "must be a string")
            if not self.system_prompt.strip():
                object.__setattr__(self, "system_prompt", None)
        if not isinstance(self.web_search, bool):
            raise InvalidRequest("web_search", f"must be true or false, got {self.web_search!r}")
        for name in ("model", "adapter"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidRequest(name, "must be a non-empty string or null")
        params = self.params
        if isinstance(params, Mapping):
            params = _params_from_mapping(params)
        if not isinstance(params, GenerationParams):
            raise InvalidRequest("params", f"must be GenerationParams, got {type(params).__name__}")
        object.__setattr__(self, "params", params)
        if not isinstance(self.request_id, str) or not REQUEST_ID.fullmatch(self.request_id):
            raise InvalidRequest("request_id", "must be 1-128 letters, digits, '_', '.', ':' or '-'")
        if not isinstance(self.owner, str):
            raise InvalidRequest("owner", "must be a string")
        if self.timeout_s is not None:
            _number("timeout_s", self.timeout_s)
            if self.timeout_s <= 0:
                raise InvalidRequest("timeout_s", f"must be > 0 seconds, got {self.timeout_s}")

    @classmethod
    def build(cls, prompt: str, **kwargs: Any) -> InferRequest:
        """Convenience for notebooks: generation parameters may be passed flat.

        ``InferRequest.build("Hi", temperature=0, max_new_tokens=32)``
        """
        param_names = {f.name for f in fields(GenerationParams)}
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in param_names}
        params = kwargs.pop("params", None) or GenerationParams()
        if isinstance(params, Mapping):
            params = _params_from_mapping(params)
        if flat:
            params = replace(params, **flat)
        request_names = {f.name for f in fields(cls)}
        unknown = set(kwargs) - request_names
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequest(name, f"unknown field; known: {', '.join(sorted(request_names | param_names))}")
        return cls(prompt=prompt, params=params, **kwargs)

    def resolved_params(self, limits: Limits, defaults: Mapping[str, Any] | None = None) -> GenerationParams:
        """Params with the model's ``defaults`` filled in, checked against the deployment's limits (``resolve``).
        (The input length is checked by the service, which has the tokenizer.)"""
        return resolve(self.params, defaults if defaults is not None else model_defaults({}, {}, fallback=True), limits)

    def messages(self) -> list[dict[str, str]]:
        """Chat messages for the model: system prompt, history, then the prompt."""
        out: list[dict[str, str]] = []
        if self.system_prompt:
            out.append({"role": "system", "content": self.system_prompt})
        out.extend({"role": t.role, "content": t.content} for t in self.history)
        out.append({"role": "user", "content": self.prompt})
        return out


def _params_from_mapping(data: Mapping[str, Any]) -> GenerationParams:
    known = {f.name for f in fields(GenerationParams)}
    unknown = set(data) - known
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"params.{name}", f"unknown parameter; known: {', '.join(sorted(known))}")
    return GenerationParams(**dict(data))


def _history(history: Any) -> tuple[Turn, ...]:
    if history is None:
        return ()
    if isinstance(history, (str, bytes)) or not isinstance(history, Iterable):
        raise InvalidRequest("history", "must be a list of {role, content} turns")
    turns: list[Turn] = []
    for i, item in enumerate(history):
        where = f"history[{i}]"
        if isinstance(item, Turn):
            turn = item
        elif isinstance(item, Mapping):
            if set(item) - {"role", "content"}:
                raise InvalidRequest(where, "a turn has only 'role' and 'content'")
            turn = Turn(role=item.get("role"), content=item.get("content"))  # type: ignore[arg-type]
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            turn = Turn(role=item[0], content=item[1])
        else:
            raise InvalidRequest(where, "must be a {role, content} mapping or a (role, content) pair")
        if turn.role not in ROLES:
            raise InvalidRequest(f"{where}.role", f"must be 'user' or 'assistant', got {turn.role!r}")
        expected = ROLES[i % 2]
        if turn.role != expected:
            raise InvalidRequest(
                f"{where}.role",
                f"turns must alternate user/assistant starting with user; expected {expected!r}, got {turn.role!r}",
            )
        if not isinstance(turn.content, str) or not turn.content.strip():
            raise InvalidRequest(f"{where}.content", "must be a non-empty string")
        turns.append(turn)
    if turns and turns[-1].role != "assistant":
        raise InvalidRequest(
            f"history[{len(turns) - 1}].role",
            "history must end with an assistant turn: the new user message is the prompt",
        )
    return tuple(turns)


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(name, f"must be a finite number, got {value!r}")


def _int(name: str, value: Any, *, low: int | None, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, f"must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidRequest(name, f"must be {bound}, got {value}")


def param_options() -> list[tuple[str, dict[str, Any]]]:
    """One command-line option per generation parameter, from its declaration: ``("--top-p", {type, dest,
    help, ...})``, for argparse's ``add_argument`` and IPython's magic arguments alike (the CLI, ``%%ask``)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name, spec in PARAMS.items():
        flag = "--" + name.replace("_", "-")
        if spec.kind == "strings":
            out.append(
                (flag, {"action": "append", "default": None, "dest": name, "help": "may be given several times"})
            )
        else:
            words = ", ".join(w for w in (spec.bound(), spec.hint) if w)
            kind = int if spec.kind == "int" else float
            out.append((flag, {"type": kind, "default": None, "dest": name, "help": words or None}))
    return out


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Iterable):
        raise InvalidRequest(name, f"must be a list of strings, got {type(value).__name__}")
    out = tuple(value)
    if len(out) > MAX_STOP_STRINGS:
        raise InvalidRequest(name, f"at most {MAX_STOP_STRINGS} stop strings, got {len(out)}")
    for s in out:
        if not isinstance(s, str) or not s:
            raise InvalidRequest(name, f"each stop string must be a non-empty string, got {s!r}")
        if len(s) > MAX_STOP_CHARS:
            raise InvalidRequest(name, f"each stop string is at most {MAX_STOP_CHARS} characters, got {len(s)}")
    return out


def as_request(request: InferRequest | str, kwargs: dict[str, Any]) -> InferRequest:
    """A request given as a prompt and keywords, or whole (then without keywords)."""
    if isinstance(request, str):
        return InferRequest.build(request, **kwargs)
    if kwargs:
        raise TypeError("pass keyword arguments only with a prompt string, not with an InferRequest")
    return request
