"""A request on its way through the service: validated, its chat messages built and encoded for
its model (``Prepared``) and, at the end, its result and run record; once accepted, what ``cancel``
needs to stop it (``Live``), among every caller's accepted requests (``LiveRequests``)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from toolkit.engines.base import Encoded, EngineRequest
from toolkit.errors import InvalidRequest
from toolkit.events import Finished
from toolkit.grounding import check as check_grounding
from toolkit.params import GenerationParams, InferRequest
from toolkit.rag import BuiltMessages
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

    def engine_request(self, live: Live) -> EngineRequest:
        r = self.request
        return EngineRequest(live.engine_id, self.messages, self.encoded, self.params, r.adapter, r.timeout_s)

    def cancelled_before_engine(self) -> Finished:
        """The engine's last event for a request cancelled before it reached the engine."""
        seed = self.params.seed if self.params.seed is not None else 0
        return Finished(self.request.request_id, "", "cancelled", self.encoded.tokens, 0, seed, 0.0, None, 0.0)

    def result(self, finished: Finished, versions: dict[str, str]) -> InferResult:
        """The answer and its run record, from the engine's ``Finished``; raises the error it carries."""
        if finished.error is not None:
            raise finished.error
        request, search, entry = self.request, self.search, self.model
        info = entry.engine.info
        sources = tuple(Source(i, r.title, r.url, r.snippet) for i, r in enumerate(self.built.sources, start=1))
        grounding = check_grounding(finished.text, sources) if search is not None and sources else None
        loaded = entry.loaded
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
            replay_of=self.replay_of,
            grounding=grounding.to_dict() if grounding is not None else None,
        )
        return InferResult(
            id=request.request_id,
            text=finished.text,
            finish_reason=finished.finish_reason,
            usage=Usage(finished.prompt_tokens, finished.completion_tokens),
            timings=Timings(finished.queued_s, finished.first_token_s, finished.total_s),
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


@dataclass(eq=False)
class Live:
    """A request from its acceptance to its last event: what ``cancel`` needs to stop it.

    The engine knows it by ``engine_id``, fresh for every request, so two callers' ids never meet there.
    """

    engine_id: str = field(default_factory=lambda: secrets.token_hex(12))
    engine: Any = None  # set once the request is in the engine
    cancelled: bool = False


class LiveRequests:
    """Every accepted request, by (owner, request id), from acceptance to its last event.

    Request ids belong to their owner (the server passes its caller's identity): another owner's id is
    as unknown as one never used.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str], Live] = {}

    def begin(self, request: InferRequest) -> Live:
        """Accept a request: its id must be new for its owner."""
        key = (request.owner, request.request_id)
        with self._lock:
            if key in self._live:
                raise InvalidRequest(
                    "request_id", f"a request with id {request.request_id!r} is already running; use a new id"
                )
            live = self._live[key] = Live()
        return live

    def end(self, request: InferRequest) -> None:
        with self._lock:
            self._live.pop((request.owner, request.request_id), None)

    def submit(self, live: Live, engine: Any, submit: Callable[[], Any]) -> Any:
        """Hand the request to ``engine`` (``submit()``), or None when it was cancelled before it got there.

        Under the lock, so that a ``cancel`` either sees the request in the engine or stops it here.
        """
        with self._lock:
            if live.cancelled:
                return None
            events = submit()
            live.engine = engine
        return events

    def cancel(self, request_id: str, owner: str) -> bool:
        """Cancel a request that is searching, queued or running; False if this owner has no such request."""
        with self._lock:
            live = self._live.get((owner, request_id))
            if live is None:
                return False
            live.cancelled = True
            engine = live.engine
        if engine is not None:
            return bool(engine.cancel(live.engine_id))
        return True  # still searching or tokenizing: it stops before the engine
