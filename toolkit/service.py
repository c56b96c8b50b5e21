"""``InferenceService``: the one facade that notebooks, the dashboard and the server call.

    service = InferenceService().start()          # MODEL_ID (or the bundled default), or MODELS_FILE's models
    result = service.infer("What is the capital of France?", temperature=0)
    for event in service.stream(InferRequest(prompt="Tell me a story")):
        ...                                        # Token(delta, text) ..., then Done(result)
    service.infer("Hi", model="smollm2-vllm")      # another model of MODELS_FILE: local or remote
    service.load_adapter("pirate")                 # ADAPTERS_DIR/pirate, no restart
    service.infer("Hello", adapter="pirate")

The service validates the request (once, here), routes it to the engine of the model it names
(``toolkit.registry``), searches, formats the chat messages within the input budget (counting with
that engine), hands them to the engine (``toolkit.engines``) and turns its events into
``Token``/``Done`` with a full ``InferResult`` and its run record.
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
from dataclasses import replace as dataclass_replace
from datetime import date
from importlib import metadata
from typing import Any, cast

from toolkit import __version__ as TOOLKIT_VERSION
from toolkit.compare import Comparison, collect, compare_stream
from toolkit.compare import request_for as compare_request
from toolkit.compare import variants as compare_variants
from toolkit.engines.base import Engine
from toolkit.errors import InvalidRequest, ModelNotReady, PromptTooLong
from toolkit.events import Finished
from toolkit.params import GenerationParams, InferRequest, Limits
from toolkit.prepared import Live, LiveRequests, Prepared, search_finished
from toolkit.rag import build_messages
from toolkit.registry import ModelConfig, ModelRegistry, ServedModel, configured_models
from toolkit.replay import plan_replay
from toolkit.results import (
    AdapterInfo,
    Difference,
    Done,
    Health,
    InferResult,
    ModelHealth,
    ModelInfo,
    Replay,
    RunRecord,
    SearchStarted,
    StreamEvent,
    Token,
)
from toolkit.runs import RunLog
from toolkit.search import Searcher, SearchOutcome, clean_text, make_searcher
from toolkit.settings import Settings


def _versions() -> dict[str, str]:
    out = {"toolkit": TOOLKIT_VERSION, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes", "openai"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def search_query(prompt: str, limit: int = 300) -> str:
    """The web query for a prompt: one line, at most ``limit`` characters."""
    query = " ".join(clean_text(prompt).split())
    return query if len(query) <= limit else query[:limit].rsplit(" ", 1)[0]


_UNSET: Any = object()
log = logging.getLogger("toolkit.service")


class InferenceService:
    """Serve one model or several (``MODELS_FILE``), local or remote: ``infer``, ``stream`` and their async twins."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        loaded: Any = None,
        models: list[ModelConfig] | None = None,
        searcher: Any = _UNSET,
    ) -> None:
        """``models`` overrides the settings' models (the first is the default); ``loaded`` is an already loaded
        local model to serve as the default (alone, without ``models``; else as the first of them)."""
        self.settings = settings if settings is not None else Settings.from_env()
        self.limits = Limits(self.settings.max_new_tokens_limit, self.settings.max_input_tokens)
        self._started_at = time.monotonic()
        self._lock = threading.Lock()
        self._searcher: Any = searcher  # a Searcher, None for no search, or _UNSET: from SEARCH_PROVIDER
        self._live = LiveRequests()
        self._started = False
        self._stopped = False
        self._versions = _versions()
        self.run_log = RunLog(self.settings.run_log) if self.settings.run_log is not None else None
        if models is not None:
            configs = models
        elif loaded is not None:
            aliases = tuple({loaded.source.location, self.settings.model_id or loaded.name} - {loaded.name})
            configs = [ModelConfig(name=loaded.name, source=self.settings.model_id or "bundled", aliases=aliases)]
        else:
            configs = configured_models(self.settings)
        self.registry = ModelRegistry(configs, self.settings)
        if loaded is not None:
            self.registry.attach(self.registry.default, loaded)

    # ----- lifecycle -------------------------------------------------------------------

    def start(self, *, wait: bool = True, progress: bool = True) -> InferenceService:
        """Load the models, each in a background thread. With ``wait``, block until the default model is
        ready and raise its load error.

        The web search is built here (``SEARCH_PROVIDER=local:<folder>`` indexes the folder), so a
        bad search setting fails the start, not the first request that searches.
        """
        if self._searcher is _UNSET:
            searcher = make_searcher(self.settings)
            with self._lock:
                if self._searcher is _UNSET:
                    self._searcher = searcher
        self._started = True
        self.registry.start(progress)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None, model: str | None = None) -> None:
        """Block until ``model`` (default: the default model) is ready; ``ModelNotReady`` if it is not."""
        entry = self.registry.route(model)
        self.registry.wait(entry, timeout)
        self._ready(entry)

    def close(self, grace_s: float = 10.0) -> None:
        """Finish (or after ``grace_s`` cancel) in-flight requests and stop every engine."""
        self._stopped = True
        self.registry.close(grace_s)

    def __enter__(self) -> InferenceService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- information -------------------------------------------------------------

    @property
    def loaded(self) -> Any:
        """The default model's ``LoadedModel`` (model, tokenizer, hashes) once ready, if it is local; else None."""
        return self.registry.default.loaded

    def engine(self, model: str | None = None) -> Engine:
        """The engine serving ``model`` (default: the default model), once it is ready."""
        return cast(Engine, self._ready(self.registry.route(model)).engine)

    def health(self) -> Health:
        default = self.registry.default
        info = default.engine.info if default.engine is not None and default.status == "ready" else None
        queued = active = 0
        for entry in self.registry:
            if entry.engine is not None and entry.status == "ready":
                stats = entry.engine.stats()
                queued, active = queued + stats.queue_depth, active + stats.active
        return Health(
            status=default.status,
            model=default.name,
            device=info.device if info else None,
            dtype=info.dtype if info else None,
            quantization=info.quantization if info else None,
            queue_depth=queued,
            active=active,
            uptime_s=time.monotonic() - self._started_at,
            version=TOOLKIT_VERSION,
            error=default.error,
            models=tuple(ModelHealth(e.name, e.config.engine, e.status, e.error) for e in self.registry),
        )

    def models(self) -> list[ModelInfo]:
        return [self._model_info(entry) for entry in self.registry]

    @staticmethod
    def _model_info(entry: ServedModel) -> ModelInfo:
        info = entry.engine.info if entry.engine is not None and entry.status == "ready" else None
        if entry.config.engine == "openai":
            source = "openai"
        else:
            source = entry.loaded.source.kind if entry.loaded is not None else "pending"
        return ModelInfo(
            id=entry.name,
            source=source,
            loaded=entry.status == "ready",
            context_length=info.context_length if info else None,
            content_hash=info.content_hash if info else None,
            engine=entry.config.engine,
            status=entry.status,
            error=entry.error,
            default=entry.default,
            served_model=info.served_model if info else entry.config.served_model,
            device=info.device if info else None,
            dtype=info.dtype if info else None,
            quantization=info.quantization if info else None,
            defaults=entry.defaults,
        )

    # ----- LoRA adapters ------------------------------------------------------------

    def adapters(self, model: str | None = None) -> list[AdapterInfo]:
        """The adapters ``model`` serves now (default: the default model's); requests pick one with ``adapter=``."""
        entry = self.registry.route(model)
        return entry.engine.adapters() if entry.engine is not None and entry.status == "ready" else []

    def load_adapter(self, name: str, path: str | None = None, model: str | None = None) -> AdapterInfo:
        """Load an adapter for ``model`` without a restart: for a local model, the folder
        ``ADAPTERS_DIR/<path>`` (default: ``<name>``), whose card must name this base model; for a
        remote vLLM model, through its runtime LoRA endpoint (``path`` on the server's disk)."""
        return self.engine(model).load_adapter(name, path)

    def unload_adapter(self, name: str, grace_s: float | None = None, model: str | None = None) -> AdapterInfo:
        """Unload ``name``: new requests for it are refused at once, queued and running ones finish first.

        Requests still running after ``grace_s`` (default: REQUEST_TIMEOUT) are cancelled.
        """
        grace = self.settings.request_timeout_s if grace_s is None else grace_s
        return self.engine(model).unload_adapter(name, grace)

    # ----- requests ----------------------------------------------------------------

    def validate(self, request: InferRequest | str, **kwargs: Any) -> tuple[InferRequest, GenerationParams]:
        """Check a request against this deployment (no tokenizing, no search)."""
        request, params, _ = self._validated(request, kwargs)
        return request, params

    def _validated(
        self, request: InferRequest | str, kwargs: dict[str, Any]
    ) -> tuple[InferRequest, GenerationParams, ServedModel]:
        if isinstance(request, str):
            request = InferRequest.build(request, **kwargs)
        elif kwargs:
            raise TypeError("pass keyword arguments only with a prompt string, not with an InferRequest")
        entry = self._ready(self.registry.route(request.model))
        if request.adapter is not None:
            entry.engine.check_adapter(request.adapter)
        if request.web_search and self.searcher is None:
            raise InvalidRequest("web_search", "web search is off on this service (SEARCH_PROVIDER=none)")
        return request, request.resolved_params(self.limits, entry.defaults), entry

    def _input_limit(self, engine: Engine) -> int:
        """The most input tokens a request may have on ``engine``: MAX_INPUT_TOKENS, within its context."""
        return min(self.limits.max_input_tokens, engine.info.context_length - 1)

    def _ready(self, entry: ServedModel) -> ServedModel:
        """The model, ready; or ``ModelNotReady`` saying why not."""
        if entry.status == "ready" and entry.engine is not None:
            return entry
        which = "the model" if entry.default and len(self.registry.entries) == 1 else f"model {entry.name!r}"
        if entry.status == "error":
            raise ModelNotReady(f"{which} failed to load: {entry.error}", loading=False)
        if entry.status == "stopped":
            raise ModelNotReady(f"{which} is stopped: the service was closed", loading=False)
        if not self._started:
            return self._not_started()
        reason = f" ({entry.error})" if entry.error else ""
        raise ModelNotReady(f"{which} is still loading{reason}; wait and retry (see health())")

    @staticmethod
    def _not_started() -> Any:
        raise ModelNotReady(
            "the service was not started: call service.start() first (start(wait=False) loads in the background)"
        )

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
        """Validate, build the chat messages (with ``search`` results, if given) and encode them for the model."""
        request, params, entry = self._validated(request, kwargs)
        return self._prepare(entry, request, params, search)

    def _prepare(
        self, entry: ServedModel, request: InferRequest, params: GenerationParams, search: SearchOutcome | None
    ) -> Prepared:
        engine = entry.engine
        limit = self._input_limit(engine)
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
            count_tokens=engine.count_tokens,
            count_messages=engine.count_messages,
            # without search, nothing is trimmed: an over-long conversation is refused below
            budget=limit if search is not None else None,
        )
        encoded = engine.encode(built.messages, limit=limit)
        if encoded.tokens > limit:
            field_name = "history" if request.history and search is None else "prompt"
            raise PromptTooLong(field_name, encoded.tokens, limit)
        adapter_hash = engine.adapter_hash(request.adapter) if request.adapter else None
        return Prepared(request, params, built, encoded, entry, search, adapter_hash)

    def stream(
        self, request: InferRequest | str, *, search: SearchOutcome | None = None, **kwargs: Any
    ) -> Iterator[StreamEvent]:
        """Search events (with web search on), ``Token`` events as text is generated, then ``Done``.

        ``search``: a search already made (``compare`` shares one between its variants) instead of a new
        one. Closing the iterator early cancels the request.
        """
        request, params, entry = self._validated(request, kwargs)
        entry.engine.check_room()  # a full queue answers at once, before search and tokenizing
        live = self._live.begin(request)
        try:
            outcome = None
            if request.web_search:
                query = search.query if search is not None else search_query(request.prompt)
                yield SearchStarted(request.request_id, query, self._provider())
                outcome = search if search is not None else self.search(query)
                yield search_finished(request.request_id, outcome)
            yield from self._run(live, self._prepare(entry, request, params, outcome))
        finally:
            self._live.end(request)

    def _run(self, live: Live, prepared: Prepared) -> Iterator[StreamEvent]:
        """The engine's events for an accepted, prepared request, as ``Token``s and the last ``Done``.
        Closing it early cancels the request in the engine."""
        translate = self._translator(prepared)
        entry = prepared.model
        events = self._live.submit(live, entry.engine, lambda: entry.engine.stream(prepared.engine_request(live)))
        if events is None:  # cancelled before it reached the engine
            yield translate(prepared.cancelled_before_engine())
            return
        try:
            for event in events:
                yield translate(event)
        finally:
            events.close()  # a generator: cancels the request if it still runs

    async def astream(
        self, request: InferRequest | str, *, search: SearchOutcome | None = None, **kwargs: Any
    ) -> AsyncIterator[StreamEvent]:
        request, params, entry = self._validated(request, kwargs)
        entry.engine.check_room()  # a full queue answers at once, before search and tokenizing
        live = self._live.begin(request)
        events = None
        try:
            outcome = None
            if request.web_search:
                query = search.query if search is not None else search_query(request.prompt)
                yield SearchStarted(request.request_id, query, self._provider())
                if search is not None:
                    outcome = search
                else:
                    outcome = await asyncio.get_running_loop().run_in_executor(None, self.search, query)
                yield search_finished(request.request_id, outcome)
            # templating and tokenizing take milliseconds: off the event loop, which must stay responsive
            prepared = await asyncio.get_running_loop().run_in_executor(
                None, self._prepare, entry, request, params, outcome
            )
            translate = self._translator(prepared)
            events = self._live.submit(live, entry.engine, lambda: entry.engine.astream(prepared.engine_request(live)))
            if events is None:
                yield translate(prepared.cancelled_before_engine())
                return
            async for event in events:
                yield translate(event)
        finally:
            if events is not None:
                await events.aclose()
            self._live.end(request)

    # ----- compare -----------------------------------------------------------------

    def compare(self, prompt: str, variants: Any, **common: Any) -> Comparison:
        """Run ``prompt`` as each variant (``toolkit.compare``) at once; the side-by-side ``Comparison``."""
        return collect(prompt, variants, self.compare_stream(prompt, variants, **common))

    def compare_stream(self, prompt: str, variants: Any, **common: Any) -> Iterator[tuple[str, Any]]:
        """``(label, event)`` as the variants stream. One web search, made once, for every variant that searches."""
        chosen = compare_variants(variants)
        searching = any(compare_request(prompt, v, common).web_search for v in chosen)
        shared = self.search(search_query(prompt)) if searching else None
        return compare_stream(lambda r: self.stream(r, search=shared), self.cancel, prompt, variants, common)

    # ----- replay ------------------------------------------------------------------

    def replay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay:
        """Run a run record again: the same model, adapter, exact messages (the web search's snapshot,
        never a new search), parameters and seed. Returns the new result and whether its text is the
        recorded answer; when something cannot match (another model hash, a missing adapter, a chat
        template that renders the messages differently), the differences instead of an answer, unless
        ``force``."""
        record = RunRecord.from_dict(record)
        differences: tuple[Difference, ...]
        try:
            routed = self.registry.route(record.model)
        except InvalidRequest:  # no such model here
            differences, prepared = (Difference("model", record.model, None),), None
        else:
            differences, prepared = plan_replay(record, self._ready(routed), owner)
        if prepared is None or (differences and not force):
            return Replay(None, False, differences)
        # a record is input like any other: this deployment's limits and queue hold for it too
        engine, tokens, limit = prepared.model.engine, prepared.encoded.tokens, self._input_limit(prepared.model.engine)
        params = prepared.request.resolved_params(self.limits, prepared.model.defaults)
        if tokens > limit:
            raise PromptTooLong("run_record.messages", tokens, limit)
        engine.check_room()
        prepared = dataclass_replace(prepared, params=params)
        live = self._live.begin(prepared.request)
        try:
            result = next(e.result for e in self._run(live, prepared) if isinstance(e, Done))
        finally:
            self._live.end(prepared.request)
        return Replay(result, record.answer is not None and result.text == record.answer, differences)

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
        return self._live.cancel(request_id, owner)

    # ----- helpers -----------------------------------------------------------------

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

    def _result(self, prepared: Prepared, finished: Finished) -> InferResult:
        result = prepared.result(finished, self._versions)
        if self.run_log is not None:
            try:
                self.run_log.append(result)
            except OSError as exc:  # a full disk must not lose the answer: it is logged as a warning
                log.warning("RUN_LOG %s: could not append %s: %s", self.run_log.path, result.id, exc)
        return result
