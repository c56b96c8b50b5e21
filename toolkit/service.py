"""``InferenceService``: the one facade that notebooks, the dashboard and the server call.

    service = InferenceService().start()          # loads MODEL_ID (or the bundled default)
    result = service.infer("What is the capital of France?", temperature=0)
    for event in service.stream(InferRequest(prompt="Tell me a story")):
        ...                                        # Token(delta, text) ..., then Done(result)
    service.load_adapter("pirate")                 # ADAPTERS_DIR/pirate, no restart
    service.infer("Hello", adapter="pirate")

The service validates the request (once, here), formats the chat messages,
checks the input budget, hands token ids to the engine and turns engine
events into ``Token``/``Done`` with a full ``InferResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import metadata
from typing import Any, cast

from toolkit import __version__ as TOOLKIT_VERSION
from toolkit.adapters import AdapterRegistry
from toolkit.errors import InvalidRequest, ModelNotReady, PromptTooLong, ToolkitError
from toolkit.events import Finished
from toolkit.params import GenerationParams, InferRequest, Limits
from toolkit.rag import BuiltMessages, build_messages, merge_system_messages
from toolkit.results import (
    AdapterInfo,
    Done,
    Health,
    InferResult,
    ModelInfo,
    RunRecord,
    SearchFinished,
    SearchStarted,
    Source,
    StreamEvent,
    Timings,
    Token,
    Usage,
)
from toolkit.search import Searcher, SearchOutcome, clean_text, make_searcher
from toolkit.settings import Settings


def _versions() -> dict[str, str]:
    out = {"toolkit": TOOLKIT_VERSION, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


@dataclass
class Prepared:
    """A validated request, its chat messages and token ids, ready for the engine."""

    request: InferRequest
    params: GenerationParams
    built: BuiltMessages
    prompt_text: str
    input_ids: list[int]
    search: SearchOutcome | None = None
    adapter_hash: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.built.messages

    def engine_options(self, live: Any) -> dict[str, Any]:
        """The request's arguments for ``Engine.stream``/``astream``."""
        r = self.request
        return {
            "input_ids": self.input_ids,
            "params": self.params,
            "request_id": live.engine_id,
            "timeout_s": r.timeout_s,
            "adapter": r.adapter,
        }


@dataclass(eq=False)
class _Live:
    """A request from its acceptance to its last event: what ``cancel`` needs to stop it.

    The engine knows it by ``engine_id``, fresh for every request, so two callers' ids never meet there.
    """

    engine_id: str = field(default_factory=lambda: secrets.token_hex(12))
    engine: Any = None  # set once the request is in the engine
    cancelled: bool = False


def search_query(prompt: str, limit: int = 300) -> str:
    """The web query for a prompt: one line, at most ``limit`` characters."""
    query = " ".join(clean_text(prompt).split())
    return query if len(query) <= limit else query[:limit].rsplit(" ", 1)[0]


_UNSET: Any = object()
log = logging.getLogger("toolkit.service")


class InferenceService:
    """Load one model, then answer requests: ``infer``, ``stream`` and their async twins."""

    def __init__(self, settings: Settings | None = None, *, loaded: Any = None, searcher: Any = _UNSET) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.limits = Limits(self.settings.max_new_tokens_limit, self.settings.max_input_tokens)
        self._started_at = time.monotonic()
        self._lock = threading.Lock()
        self._status = "loading"
        self._error: str | None = None
        self._loaded: Any = None
        self._engine: Any = None
        self._versions: dict[str, str] = {}
        self._loader: threading.Thread | None = None
        self._searcher: Any = searcher  # a Searcher, None for no search, or _UNSET: from SEARCH_PROVIDER
        self._live: dict[tuple[str, str], _Live] = {}  # (owner, request id) -> the request, until its last event
        self._started = False
        self._registry: AdapterRegistry | None = None  # the LoRA adapters, once the model is loaded
        if loaded is not None:
            self._attach(loaded)

    # ----- lifecycle -------------------------------------------------------------------

    def start(self, *, wait: bool = True, progress: bool = True) -> InferenceService:
        """Load the model (in a background thread). With ``wait``, block and raise a load error.

        The web search is built here (``SEARCH_PROVIDER=local:<folder>`` indexes the folder), so a
        bad search setting fails the start, not the first request that searches.
        """
        if self._searcher is _UNSET:
            searcher = make_searcher(self.settings)
            with self._lock:
                if self._searcher is _UNSET:
                    self._searcher = searcher
        self._started = True
        with self._lock:
            if self._loaded is None and self._loader is None:
                self._status, self._error = "loading", None
                self._loader = threading.Thread(target=self._load, args=(progress,), name="toolkit-loader", daemon=True)
                self._loader.start()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        loader = self._loader  # read once: the loader clears it when it is done
        if loader is not None:
            loader.join(timeout)
        if self._status == "error":
            raise ModelNotReady(f"the model failed to load: {self._error}")
        if self._status != "ready":
            raise ModelNotReady(self._not_ready_message())

    def _load(self, progress: bool) -> None:
        from toolkit.models import load_model

        try:
            self._attach(load_model(self.settings, progress=progress))
        except ToolkitError as exc:
            self._status, self._error = "error", exc.message
        except Exception as exc:  # a load must never kill the process silently
            self._status, self._error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self._loader = None

    def _attach(self, loaded: Any) -> None:
        from toolkit.engine import Engine

        self._engine = Engine(
            loaded.model,
            loaded.tokenizer,
            eos_token_ids=loaded.eos_token_ids,
            context_length=loaded.context_length,
            max_batch_size=self.settings.max_batch_size,
            max_queue=self.settings.max_queue,
            default_timeout_s=self.settings.request_timeout_s,
        )
        self._versions = _versions()
        self._loaded = loaded
        self._registry = AdapterRegistry(self.settings.adapters_dir, self._engine, loaded.content_hash)
        self._registry.load_folder()
        self._status = "ready"

    def close(self, grace_s: float = 10.0) -> None:
        """Finish (or after ``grace_s`` cancel) in-flight requests and stop the engine."""
        if self._engine is not None:
            self._engine.close(grace_s)
        self._status = "stopped"

    def __enter__(self) -> InferenceService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- information -------------------------------------------------------------

    @property
    def loaded(self) -> Any:
        """The ``LoadedModel`` (model, tokenizer, hashes) once ready, else None."""
        return self._loaded

    def health(self) -> Health:
        loaded, engine = self._loaded, self._engine
        return Health(
            status=self._status,
            model=loaded.name if loaded else self.settings.model_label,
            device=loaded.device if loaded else None,
            dtype=loaded.dtype if loaded else None,
            quantization=loaded.quantization if loaded else None,
            queue_depth=engine.queue_depth if engine else 0,
            active=engine.active if engine else 0,
            uptime_s=time.monotonic() - self._started_at,
            version=TOOLKIT_VERSION,
            error=self._error,
        )

    def models(self) -> list[ModelInfo]:
        loaded = self._loaded
        if loaded is None:
            return [ModelInfo(self.settings.model_label, "pending", False, None, None)]
        return [ModelInfo(loaded.name, loaded.source.kind, True, loaded.context_length, loaded.content_hash)]

    # ----- LoRA adapters ------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        """The loaded adapters, by name; requests pick one with ``adapter=``."""
        return self._registry.list() if self._registry is not None else []

    def load_adapter(self, name: str, path: str | None = None) -> AdapterInfo:
        """Load the adapter in ``ADAPTERS_DIR/<path>`` (default: ``<name>``) as ``name``, without a restart.

        The folder must lie inside ADAPTERS_DIR and its card must name this base model.
        """
        self._ready()
        assert self._registry is not None
        return self._registry.load(name, path)

    def unload_adapter(self, name: str, grace_s: float | None = None) -> AdapterInfo:
        """Unload ``name``: new requests for it are refused at once, queued and running ones finish first.

        Requests still running after ``grace_s`` (default: REQUEST_TIMEOUT) are cancelled.
        """
        self._ready()
        assert self._registry is not None
        return self._registry.unload(name, self.settings.request_timeout_s if grace_s is None else grace_s)

    # ----- requests ----------------------------------------------------------------

    def validate(self, request: InferRequest | str, **kwargs: Any) -> tuple[InferRequest, GenerationParams]:
        """Check a request against this deployment (no tokenizing, no search)."""
        if isinstance(request, str):
            request = InferRequest.build(request, **kwargs)
        elif kwargs:
            raise TypeError("pass keyword arguments only with a prompt string, not with an InferRequest")
        loaded = self._ready()
        if request.model is not None and request.model not in self._model_names():
            raise InvalidRequest("model", f"unknown model {request.model!r}; this service serves {loaded.name!r}")
        if request.adapter is not None and self._registry is not None:
            self._registry.get(request.adapter)
        if request.web_search and self.searcher is None:
            raise InvalidRequest("web_search", "web search is off on this service (SEARCH_PROVIDER=none)")
        return request, request.resolved_params(self.limits)

    def _ready(self) -> Any:
        """The loaded model, or ``ModelNotReady``."""
        loaded = self._loaded
        if loaded is None or self._status != "ready":
            if self._status == "error":
                raise ModelNotReady(f"the model failed to load: {self._error}")
            raise ModelNotReady(self._not_ready_message())
        return loaded

    def _not_ready_message(self) -> str:
        if not self._started and self._loaded is None:
            return "the service was not started: call service.start() first (start(wait=False) loads in the background)"
        return "the model is still loading; wait and retry (see health())"

    @property
    def searcher(self) -> Searcher | None:
        """The web search this service uses (from SEARCH_PROVIDER unless one was passed in)."""
        if self._searcher is _UNSET:
            with self._lock:
                if self._searcher is _UNSET:
                    self._searcher = make_searcher(self.settings)
        return cast("Searcher | None", self._searcher)

    @searcher.setter
    def searcher(self, searcher: Searcher | None) -> None:
        """Swap the web search at run time (e.g. a ``LocalDocsBackend`` in a notebook); None turns it off."""
        self._searcher = searcher

    def search(self, query: str) -> SearchOutcome:
        """Run the configured web search (cached, rate limited, bounded by SEARCH_TIMEOUT)."""
        searcher = self.searcher
        if searcher is None:
            raise InvalidRequest("web_search", "web search is off on this service (SEARCH_PROVIDER=none)")
        return searcher.search(query)

    def prepare(self, request: InferRequest | str, *, search: SearchOutcome | None = None, **kwargs: Any) -> Prepared:
        """Validate, build the chat messages (with ``search`` results, if given) and tokenize."""
        request, params = self.validate(request, **kwargs)
        return self._prepare(request, params, search)

    def _prepare(self, request: InferRequest, params: GenerationParams, search: SearchOutcome | None) -> Prepared:
        loaded = self._loaded
        limit = min(self.limits.max_input_tokens, loaded.context_length - 1)
        boundary = secrets.token_hex(8)
        failure = None if search is None or search.ok else search.failure.message  # type: ignore[union-attr]
        built = build_messages(
            request.prompt,
            history=request.history,
            system_prompt=request.system_prompt,
            sources=list(search.results) if search is not None and search.ok else None,
            search_failure=failure,
            today=date.today(),
            boundary=boundary,
            count_tokens=self._count_tokens,
            count_messages=self._count_messages,
            # without search, nothing is trimmed: an over-long conversation is refused below
            budget=limit if search is not None else 1 << 62,
        )
        prompt_text = self._render(built.messages)
        input_ids = list(loaded.tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        if len(input_ids) > limit:
            field = "history" if request.history and search is None else "prompt"
            raise PromptTooLong(field, len(input_ids), limit)
        registry = self._registry
        adapter_hash = registry.get(request.adapter).adapter_hash if request.adapter and registry else None
        return Prepared(request, params, built, prompt_text, input_ids, search, adapter_hash)

    def stream(self, request: InferRequest | str, **kwargs: Any) -> Iterator[StreamEvent]:
        """Search events (with web search on), ``Token`` events as text is generated, then ``Done``.

        Closing the iterator early cancels the request.
        """
        request, params = self.validate(request, **kwargs)
        self._engine.check_room()  # a full queue answers at once, before search and tokenizing
        live = self._begin(request)
        events = None
        try:
            outcome = None
            if request.web_search:
                query = search_query(request.prompt)
                yield SearchStarted(request.request_id, query, self._provider())
                outcome = self.search(query)
                yield self._search_finished(request.request_id, outcome)
            prepared = self._prepare(request, params, outcome)
            translate = self._translator(prepared)
            events = self._submit(live, prepared, lambda: self._engine.stream(**prepared.engine_options(live)))
            if events is None:
                yield translate(self._cancelled_before_engine(prepared))
                return
            for event in events:
                yield translate(event)
        finally:
            if events is not None:
                events.close()  # a generator: cancels the request if it still runs
            self._end(request)

    async def astream(self, request: InferRequest | str, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        request, params = self.validate(request, **kwargs)
        self._engine.check_room()  # a full queue answers at once, before search and tokenizing
        live = self._begin(request)
        events = None
        try:
            outcome = None
            if request.web_search:
                query = search_query(request.prompt)
                yield SearchStarted(request.request_id, query, self._provider())
                outcome = await asyncio.get_running_loop().run_in_executor(None, self.search, query)
                yield self._search_finished(request.request_id, outcome)
            # templating and tokenizing take milliseconds: off the event loop, which must stay responsive
            prepared = await asyncio.get_running_loop().run_in_executor(None, self._prepare, request, params, outcome)
            translate = self._translator(prepared)
            events = self._submit(live, prepared, lambda: self._engine.astream(**prepared.engine_options(live)))
            if events is None:
                yield translate(self._cancelled_before_engine(prepared))
                return
            async for event in events:
                yield translate(event)
        finally:
            if events is not None:
                await events.aclose()
            self._end(request)

    def infer(self, request: InferRequest | str, **kwargs: Any) -> InferResult:
        for event in self.stream(request, **kwargs):
            if isinstance(event, Done):
                return event.result
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    async def ainfer(self, request: InferRequest | str, **kwargs: Any) -> InferResult:
        async for event in self.astream(request, **kwargs):
            if isinstance(event, Done):
                return event.result
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    def cancel(self, request_id: str, owner: str = "") -> bool:
        """Cancel a request that is searching, queued or running; False if there is no such request.

        Request ids belong to their ``owner`` (the server passes its caller's identity): another
        owner's id answers False, exactly as an unknown one does.
        """
        with self._lock:
            live = self._live.get((owner, request_id))
            if live is None:
                return False
            live.cancelled = True
            engine = live.engine
        if engine is not None:
            return bool(engine.cancel(live.engine_id))
        return True  # still searching or tokenizing: it stops before the engine

    def _begin(self, request: InferRequest) -> _Live:
        """Accept a request: its id must be new for its owner."""
        key = (request.owner, request.request_id)
        with self._lock:
            if key in self._live:
                raise InvalidRequest(
                    "request_id", f"a request with id {request.request_id!r} is already running; use a new id"
                )
            live = self._live[key] = _Live()
        return live

    def _end(self, request: InferRequest) -> None:
        with self._lock:
            self._live.pop((request.owner, request.request_id), None)

    def _submit(self, live: _Live, prepared: Prepared, submit: Any) -> Any:
        """Hand the request to the engine, or None when it was cancelled before it got there.

        Under the lock, so that a ``cancel`` either sees the request in the engine or stops it here.
        """
        with self._lock:
            if live.cancelled:
                return None
            events = submit()
            live.engine = self._engine
        return events

    @staticmethod
    def _cancelled_before_engine(prepared: Prepared) -> Any:
        seed = prepared.params.seed if prepared.params.seed is not None else 0
        return Finished(prepared.request.request_id, "", "cancelled", len(prepared.input_ids), 0, seed, 0.0, None, 0.0)

    # ----- helpers -----------------------------------------------------------------

    def _model_names(self) -> set[str]:
        loaded = self._loaded
        names = {loaded.name, loaded.source.location}
        if self.settings.model_id:
            names.add(self.settings.model_id)
        return names

    def _translator(self, prepared: Prepared) -> Any:
        """Engine events -> stream events: ``Token`` with the text so far, the last one ``Done``.

        (The engine's stream ends after its ``Finished``, so ``Done`` is the last event.)
        """
        text = ""

        def translate(event: Any) -> StreamEvent:
            nonlocal text
            if isinstance(event, Finished):
                return Done(self._result(prepared, event))
            text += event.text
            return Token(prepared.request.request_id, event.text, text)

        return translate

    def _provider(self) -> str:
        return self.searcher.provider if self.searcher else "none"

    @staticmethod
    def _search_finished(request_id: str, outcome: SearchOutcome) -> SearchFinished:
        sources = tuple(Source(i, r.title, r.url, r.snippet) for i, r in enumerate(outcome.results, start=1))
        message = outcome.failure.message if outcome.failure else None
        return SearchFinished(request_id, outcome.status, sources, message, outcome.from_cache, outcome.seconds)

    def _count_tokens(self, text: str) -> int:
        return len(self._loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _count_messages(self, messages: list[dict[str, str]]) -> int:
        return self._count_tokens(self._render(messages))

    def _render(self, messages: list[dict[str, str]]) -> str:
        """The messages as the model sees them; one leading system message for templates that insist."""
        tokenizer = self._loaded.tokenizer
        try:
            return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        except Exception:
            merged = merge_system_messages(messages)
            return str(tokenizer.apply_chat_template(merged, add_generation_prompt=True, tokenize=False))

    def _result(self, prepared: Prepared, finished: Any) -> InferResult:
        if finished.error is not None:
            raise finished.error
        loaded, request, search = self._loaded, prepared.request, prepared.search
        record = RunRecord(
            request_id=request.request_id,
            created_at=prepared.created_at,
            model=loaded.name,
            model_source=loaded.source.kind,
            model_hash=loaded.content_hash,
            adapter=request.adapter,
            device=loaded.device,
            dtype=loaded.dtype,
            quantization=loaded.quantization,
            params={**prepared.params.to_dict(), "seed": finished.seed},
            messages=prepared.messages,
            prompt_text=prepared.prompt_text,
            versions=self._versions,
            search=search.to_dict() if search is not None else None,
            dropped_history_turns=prepared.built.dropped_history_turns,
            adapter_hash=prepared.adapter_hash,
        )
        return InferResult(
            id=request.request_id,
            text=finished.text,
            finish_reason=finished.finish_reason,
            usage=Usage(finished.prompt_tokens, finished.completion_tokens),
            timings=Timings(finished.queued_s, finished.first_token_s, finished.total_s),
            model=loaded.name,
            adapter=request.adapter,
            run_record=record,
            sources=tuple(Source(i, r.title, r.url, r.snippet) for i, r in enumerate(prepared.built.sources, start=1)),
            search_status=search.status if search is not None else "off",
            search_message=search.failure.message if search is not None and search.failure else None,
        )
