"""A request on its way through the service: validated, its chat messages built and encoded for
its model (``Prepared``) and, at the end, its result and run record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime

from toolkit.engines.base import Encoded, EngineRequest
from toolkit.errors import PromptTooLong
from toolkit.events import Finished
from toolkit.fence import Fence
from toolkit.grounding import Judge
from toolkit.grounding import check as check_grounding
from toolkit.params import GenerationParams, InferRequest
from toolkit.rag import BuiltMessages, build_messages
from toolkit.registry import ServedModel
from toolkit.results import InferResult, RunRecord, SearchFinished, Source, Timings, Usage
from toolkit.search import SearchOutcome


@dataclass
class Prepared:
    """A validated request, its chat messages and their encoding for its model, ready for the engine."""

    request: InferRequest
    params: GenerationParams
    built: BuiltMessages
    encoded: Encoded
    model: ServedModel
    search: SearchOutcome | None = None
    adapter_hash: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    replay_of: str | None = None
    decode: str | None = None  # the decode path the engine must take (a replay's record's); None: its choice

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.built.messages

    @property
    def prompt_text(self) -> str | None:
        """The messages rendered by the chat template (local models; a remote server renders its own)."""
        return self.encoded.prompt_text

    @property
    def input_ids(self) -> list[int]:
        return list(self.encoded.input_ids or ())

    def engine_request(self, engine_id: str) -> EngineRequest:
        r = self.request
        return EngineRequest(engine_id, self.messages, self.encoded, self.params, r.adapter, r.timeout_s, self.decode)

    def cancelled_before_engine(self) -> Finished:
        """The engine's last event for a request cancelled before it reached the engine."""
        seed = self.params.seed if self.params.seed is not None else 0
        return Finished(self.request.request_id, "", "cancelled", self.encoded.tokens, 0, seed, 0.0, None, 0.0)

    def result(self, finished: Finished, versions: dict[str, str], judge: Judge | None = None) -> InferResult:
        """The answer and its run record, from the engine's ``Finished``; raises the error it carries.
        ``judge``: decides the grounding claims the rules are unsure of (``toolkit.grounding``)."""
        if finished.error is not None:
            raise finished.error
        request, search, entry = self.request, self.search, self.model
        info = entry.engine.info
        sources = tuple(Source(i, r.title, r.url, r.snippet) for i, r in enumerate(self.built.sources, start=1))
        grounding = None
        if search is not None and sources:
            name = getattr(judge, "name", "judge")
            grounding = check_grounding(finished.text, sources, judge=judge, judge_name=name, question=request.prompt)
        loaded = entry.loaded
        usage = Usage(finished.prompt_tokens, finished.completion_tokens, finished.prompt_tokens_estimated)
        timings = Timings(finished.queued_s, finished.first_token_s, finished.total_s)
        record = RunRecord(
            request_id=request.request_id,
            created_at=self.created_at,
            model=entry.name,
            model_source=loaded.source.kind if loaded is not None else info.kind,
            model_hash=info.content_hash,
            adapter=request.adapter,
            device=info.device,
            dtype=info.dtype,
            quantization=info.quantization,
            params={**self.params.to_dict(), "seed": finished.seed},
            messages=self.messages,
            prompt_text=self.prompt_text,
            versions=versions,
            search=search.to_dict() if search is not None else None,
            dropped_history_turns=self.built.dropped_history_turns,
            adapter_hash=self.adapter_hash,
            engine=info.kind,
            served_model=info.served_model,
            engine_version=finished.extra.get("system_fingerprint") or info.version,
            sent=finished.extra.get("sent"),
            answer=finished.text,
            finish_reason=finished.finish_reason,
            raw_answer=finished.extra.get("raw_text"),
            replay_of=self.replay_of,
            grounding=grounding.to_dict() if grounding is not None else None,
            owner=request.owner or None,
            usage=asdict(usage),
            timings=asdict(timings),
            decode=finished.extra.get("decode"),
        )
        return InferResult(
            id=request.request_id,
            text=finished.text,
            finish_reason=finished.finish_reason,
            usage=usage,
            timings=timings,
            model=entry.name,
            adapter=request.adapter,
            run_record=record,
            sources=sources,
            search_status=search.status if search is not None else "off",
            search_message=search.failure.message if search is not None and search.failure else None,
            grounding=grounding,
        )


def search_finished(request_id: str, outcome: SearchOutcome) -> SearchFinished:
    """The stream event that reports a finished web search and its sources."""
    sources = tuple(Source(i, r.title, r.url, r.snippet) for i, r in enumerate(outcome.results, start=1))
    message = outcome.failure.message if outcome.failure else None
    return SearchFinished(request_id, outcome.status, sources, message, outcome.from_cache, outcome.seconds)


def prepare(
    entry: ServedModel,
    request: InferRequest,
    params: GenerationParams,
    search: SearchOutcome | None,
    limit: int,
    fences: Fence,
    fit: bool = False,
    cancelled: Callable[[], bool] | None = None,
) -> Prepared:
    """A validated request's chat messages built (with ``search``'s results, fenced) and encoded for its model,
    within ``limit`` input tokens. With search, or with ``fit`` (a kept conversation's history, which the caller
    cannot trim), older history turns are dropped to fit; without, an over-long history is refused
    (``PromptTooLong``). ``cancelled``: the caller has left, and the fitting stops."""
    engine = entry.engine
    failure = None if search is None or search.ok else search.failure.message  # type: ignore[union-attr]
    sources = list(search.results) if search is not None and search.ok else None
    today = date.today()
    fence = [
        request.prompt,
        request.system_prompt,
        [[t.role, t.content] for t in request.history],
        [[s.title, s.url, s.snippet] for s in sources or ()],
        today.isoformat(),
    ]  # the same request renders the same prompt, and no document can guess its fence (toolkit.fence)
    built = build_messages(
        request.prompt,
        history=request.history,
        system_prompt=request.system_prompt,
        sources=sources,
        search_failure=failure,
        today=today,
        boundary=fences.around(fence),
        count_tokens=engine.count_tokens,
        count_messages=lambda messages: engine.count_messages(messages, limit=limit),
        budget=limit if search is not None or fit else None,
        control=engine.info.control,
        cancelled=cancelled,
    )
    encoded = engine.encode(built.messages, limit=limit)
    adapter_hash = engine.adapter_hash(request.adapter) if request.adapter else None
    prepared = Prepared(request, params, built, encoded, entry, search, adapter_hash)
    check_fits(prepared, "history" if request.history and search is None and not fit else "prompt", limit)
    return prepared


def check_fits(prepared: Prepared, field_name: str, limit: int) -> None:
    """``PromptTooLong`` on ``field_name`` when the encoded messages are over ``limit`` input tokens."""
    if prepared.encoded.tokens > limit:
        raise PromptTooLong(field_name, prepared.encoded.tokens, limit)
