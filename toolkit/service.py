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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from datetime import date
from importlib import metadata
from typing import TYPE_CHECKING, Any, cast

from toolkit.compare import Comparison, collect, compare_stream
from toolkit.compare import Plan as ComparePlan
from toolkit.compare import plan as compare_plan
from toolkit.conversation.handle import Conversation
from toolkit.conversation.records import ConversationArg, ConversationInfo
from toolkit.conversation.store import ConversationStore
from toolkit.conversation.thread import Thread, akept, keeper, kept
from toolkit.engines.base import Engine
from toolkit.errors import (
    ConfigError,
    EngineClosed,
    EngineUnavailable,
    InvalidRequest,
    ModelNotReady,
    PromptTooLong,
)
from toolkit.events import Finished
from toolkit.fence import boundary, installation_key
from toolkit.judge import ModelJudge
from toolkit.live import Live, LiveRequests
from toolkit.params import PARAMS, GenerationParams, InferRequest, Limits, resolve
from toolkit.prepared import Prepared, search_finished
from toolkit.rag import build_messages
from toolkit.registry import ModelConfig, ModelRegistry, ServedModel, configured_models
from toolkit.replay import ReplayPlan, plan_params, plan_replay
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
from toolkit.search import Searcher, SearchOutcome, make_searcher, search_query
from toolkit.settings import Settings
from toolkit.store import Store
from toolkit.version import __version__ as TOOLKIT_VERSION

if TYPE_CHECKING:
    from toolkit.evals.results import EvalRun


def _versions() -> dict[str, str]:
    out = {"toolkit": TOOLKIT_VERSION, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes", "openai"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


_UNSET: Any = object()
log = logging.getLogger("toolkit.service")
PREPARE_WORKERS = 4


class _Call:
    """A step's blocking work: run in the caller's thread by ``_drive``, on a worker thread by ``_adrive``
    (of ``pool``; None: the loop's default)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, pool: ThreadPoolExecutor | None = None) -> None:
        self.fn, self.args, self.pool = fn, args, pool


@dataclass(frozen=True)
class _Run:
    """A step's engine part: the request's ``Token``s and ``Done``, from ``engine.stream`` or ``engine.astream``."""

    live: Live
    prepared: Prepared


Steps = Generator[StreamEvent | _Call | _Run, Any, None]


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
        # Building a request's messages (templating, counting, tokenizing: milliseconds, up to a second for a
        # long history) runs here, not on the loop's shared pool: a few long requests cannot hold up the
        # threads that everything else (a store read, a search) waits on. A request queued here that its
        # caller leaves never runs.
        self._prepare_pool = ThreadPoolExecutor(PREPARE_WORKERS, thread_name_prefix="toolkit-prepare")
        self._preparing: dict[str, int] = {}  # accepted, not yet in the engine: by model name
        self._started = False
        self._stopped = False
        self._versions = _versions()
        self._fence_key: bytes | None = None  # toolkit.fence: read (or made) on the first search
        self.run_log = RunLog(self.settings.run_log) if self.settings.run_log is not None else None
        store = self.settings.store  # opened on first use
        self.kept = (
            ConversationStore(Store(store), self.settings.conversation_retention_days) if store is not None else None
        )
        if models is not None:
            configs = models
        elif loaded is not None:
            aliases = tuple({loaded.source.location, self.settings.model_id or loaded.name} - {loaded.name})
            configs = [ModelConfig(name=loaded.name, source=self.settings.model_id or "bundled", aliases=aliases)]
        else:
            configs = configured_models(self.settings)
        self.registry = ModelRegistry(configs, self.settings)
        if self.settings.grounding_judge is not None:
            try:
                self.registry.route(self.settings.grounding_judge)
            except InvalidRequest:
                served = ", ".join(repr(e.name) for e in self.registry)
                raise ConfigError(
                    "GROUNDING_JUDGE",
                    f"{self.settings.grounding_judge!r} is not a model this service serves ({served})",
                ) from None
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
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

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
        info = default.engine.info if default.serving else None
        queued = active = 0
        for entry in self.registry:
            if entry.serving:
                stats = entry.engine.stats()
                queued, active = queued + stats.queue_depth, active + stats.active
        with self._lock:
            preparing = sum(self._preparing.values())
        return Health(
            status=default.status,
            model=default.name,
            device=info.device if info else None,
            dtype=info.dtype if info else None,
            quantization=info.quantization if info else None,
            queue_depth=queued,
            active=active,
            preparing=preparing,
            store=self.kept.store.state if self.kept is not None else "off",
            uptime_s=time.monotonic() - self._started_at,
            version=TOOLKIT_VERSION,
            error=default.error,
            models=tuple(ModelHealth(e.name, e.config.engine, e.status, e.error, e.since) for e in self.registry),
        )

    def models(self) -> list[ModelInfo]:
        return [self._model_info(entry) for entry in self.registry]

    @staticmethod
    def _model_info(entry: ServedModel) -> ModelInfo:
        info = entry.engine.info if entry.serving else None
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
            server_defaults=entry.server_defaults,
            since=entry.since,
            batch_size=info.batch_size if info else None,
            linear=info.linear if info else None,
        )

    # ----- LoRA adapters ------------------------------------------------------------

    def adapters(self, model: str | None = None) -> list[AdapterInfo]:
        """The adapters ``model`` serves now (default: the default model's); requests pick one with ``adapter=``."""
        entry = self.registry.route(model)
        return entry.engine.adapters() if entry.serving else []

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
        routed, adapter = self.registry.resolve(request.model)
        if adapter is not None:  # "<model>:<adapter>": routing names the adapter
            if request.adapter is not None and request.adapter != adapter:
                raise InvalidRequest(
                    "adapter",
                    f"model {request.model!r} names adapter {adapter!r}, and adapter names {request.adapter!r}",
                )
            request = dataclass_replace(request, model=routed.name, adapter=adapter)
        entry = self._ready(routed)
        if request.adapter is not None:
            entry.engine.check_adapter(request.adapter)
        if request.web_search and self.searcher is None:
            raise InvalidRequest("web_search", "web search is off on this service (SEARCH_PROVIDER=none)")
        if request.timeout_s is not None and request.timeout_s > self.settings.request_timeout_s:
            request = dataclass_replace(request, timeout_s=self.settings.request_timeout_s)  # at most REQUEST_TIMEOUT
        return request, self._resolve(entry, request.params), entry

    def _resolve(self, entry: ServedModel, params: GenerationParams, where: str = "params") -> GenerationParams:
        """The parameters the engine runs with, filled once (``toolkit.params.resolve``); a parameter that the
        model's engine cannot take is refused, naming it."""
        resolved = resolve(params, entry.defaults, self.limits, where=where)
        if entry.config.engine != "local":
            for name, spec in PARAMS.items():
                value = getattr(resolved, name)
                if not spec.remote and value is not None and value != spec.neutral:
                    why = f"model {entry.name!r} is served by an OpenAI-compatible server, which cannot take it"
                    raise InvalidRequest(f"{where}.{name}", why + "; leave it out")
        return resolved

    def _input_limit(self, engine: Engine) -> int:
        """The most input tokens a request may have on ``engine``: MAX_INPUT_TOKENS, within its context."""
        return min(self.limits.max_input_tokens, engine.info.context_length - 1)

    def _ready(self, entry: ServedModel) -> ServedModel:
        """The model, ready (or a remote one whose server stopped answering: a request may find it back);
        or ``ModelNotReady`` saying why not."""
        if entry.serving:
            return entry
        which = "the model" if entry.default and len(self.registry.entries) == 1 else f"model {entry.name!r}"
        if entry.status == "error":
            raise ModelNotReady(f"{which} failed to load: {entry.error}", loading=False)
        if entry.status == "stopped" or self._stopped:  # going away: another replica, or a restart, will answer
            raise EngineClosed(f"{which} is stopped: the service is shutting down; retry against a running one")
        if not self._started:
            return self._not_started()
        reason = f" ({entry.error})" if entry.error else ""
        raise ModelNotReady(f"{which} is still loading{reason}; wait and retry (its health says when it is ready)")

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
        self,
        entry: ServedModel,
        request: InferRequest,
        params: GenerationParams,
        search: SearchOutcome | None,
        fit: bool = False,
        live: Live | None = None,
    ) -> Prepared:
        """``fit``: trim the history to the limit even without search (a kept conversation's, which the caller
        cannot trim); ``live``: the request, whose cancellation stops the fitting."""
        try:
            engine = entry.engine
            limit = self._input_limit(engine)
            failure = None if search is None or search.ok else search.failure.message  # type: ignore[union-attr]
            sources = list(search.results) if search is not None and search.ok else None
            today = date.today()
            built = build_messages(
                request.prompt,
                history=request.history,
                system_prompt=request.system_prompt,
                sources=sources,
                search_failure=failure,
                today=today,
                boundary=self._fence(request, sources, today),
                count_tokens=engine.count_tokens,
                count_messages=lambda messages: engine.count_messages(messages, limit=limit),
                # without search, a history the caller sent is not trimmed: an over-long one is refused below
                budget=limit if search is not None or fit else None,
                control=engine.info.control,
                cancelled=(lambda: live.cancelled) if live is not None else None,
            )
            encoded = engine.encode(built.messages, limit=limit)
            adapter_hash = engine.adapter_hash(request.adapter) if request.adapter else None
            prepared = Prepared(request, params, built, encoded, entry, search, adapter_hash)
            self._check_fits(prepared, "history" if request.history and search is None and not fit else "prompt")
            return prepared
        except EngineUnavailable as exc:  # counting tokens on a remote server that stopped answering
            self.registry.observe(entry, exc)
            raise

    def _fence(self, request: InferRequest, sources: list[Any] | None, today: date) -> str:
        """The boundary around the search block: keyed by this installation's secret over what the prompt holds
        (``toolkit.fence``), so the same request renders the same prompt and no document can guess it."""
        if self._fence_key is None:
            with self._lock:
                if self._fence_key is None:
                    try:
                        self._fence_key = installation_key(self.settings.cache_dir, self.settings.fence_key)
                    except OSError as exc:  # a read-only cache: still secret, the same within this process
                        log.warning(
                            "the fence key cannot be kept in %s (%s): one for this process",
                            self.settings.cache_dir,
                            exc,
                        )
                        self._fence_key = secrets.token_bytes(32)
        content = [
            request.prompt,
            request.system_prompt,
            [[t.role, t.content] for t in request.history],
            [[s.title, s.url, s.snippet] for s in sources or ()],
            today.isoformat(),
        ]
        return boundary(self._fence_key, content)

    def _check_fits(self, prepared: Prepared, field_name: str) -> None:
        """``PromptTooLong`` on ``field_name`` when the encoded messages are over the model's input limit."""
        limit = self._input_limit(prepared.model.engine)
        if prepared.encoded.tokens > limit:
            raise PromptTooLong(field_name, prepared.encoded.tokens, limit)

    def stream(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """Search events (with web search on), ``Token`` events as text is generated, then ``Done``.

        ``search``: a search already made (``compare`` shares one between its variants) instead of a new
        one. ``conversation``: a kept conversation's id to continue (the store supplies the history), or
        True to start one (``toolkit.conversation``); the turn is saved before ``Done``. Closing the
        iterator early cancels the request (and keeps a conversation's turn as cancelled).
        """
        request, thread = self._threaded(request, kwargs, conversation)
        request, params, entry = self._validated(request, {})
        fit = thread is not None and thread.continues
        yield from kept(thread, request, self._drive(self._steps(request, params, entry, search, fit)))

    async def astream(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> AsyncIterator[StreamEvent]:
        """``stream`` for an event loop: searching, templating and tokenizing run on a worker thread."""
        if conversation is None or conversation is False:
            request, thread = self._threaded(request, kwargs, conversation)
        else:  # reads the store (and opens it on first use): off the loop
            request, thread = await asyncio.to_thread(self._threaded, request, kwargs, conversation)
        request, params, entry = self._validated(request, {})
        fit = thread is not None and thread.continues
        async with aclosing(
            akept(thread, request, self._adrive(self._steps(request, params, entry, search, fit)))
        ) as events:
            async for event in events:  # closing this stream closes the steps at once (the request's place frees)
                yield event

    def _threaded(
        self, request: InferRequest | str, kwargs: dict[str, Any], conversation: ConversationArg
    ) -> tuple[InferRequest, Thread | None]:
        """The request, with its conversation's history when it continues one, and the ``Thread`` that will save
        its turn (None: not kept)."""
        if isinstance(request, str):
            request = InferRequest.build(request, **kwargs)
        elif kwargs:
            raise TypeError("pass keyword arguments only with a prompt string, not with an InferRequest")
        if conversation is None or conversation is False:
            return request, None
        if conversation is not True and not isinstance(conversation, str):
            raise InvalidRequest("conversation_id", f"must be a conversation's id, got {conversation!r}")
        if self.kept is None:
            if conversation is True:  # nowhere to keep it: answered, not kept
                return request, None
            raise InvalidRequest("conversation_id", "this service keeps no conversations (TOOLKIT_STORE=off)")
        thread = Thread(self.kept, keeper(request.owner), None if conversation is True else conversation)
        return thread.apply(request), thread

    def _steps(
        self,
        request: InferRequest,
        params: GenerationParams,
        entry: ServedModel,
        search: SearchOutcome | None,
        fit: bool = False,
    ) -> Steps:
        """One request, as steps that ``_drive`` (in the caller's thread) and ``_adrive`` (on an event loop)
        both run: the events to pass on, ``_Call`` for blocking work, ``_Run`` for the engine's part.
        ``fit``: the history is the store's (a kept conversation), so it is fitted to the input limit."""
        self._accept(entry)  # a full queue answers at once, before search and tokenizing
        accepted = True
        try:
            live = self._live.begin(request)
        except BaseException:
            self._release(entry)
            raise
        try:
            outcome = None
            if request.web_search:
                query = search.query if search is not None else search_query(request.prompt)
                yield SearchStarted(request.request_id, query, self._provider())
                outcome = search if search is not None else (yield _Call(self.search, query))
                yield search_finished(request.request_id, outcome)
            prepared = yield _Call(self._prepare, entry, request, params, outcome, fit, live, pool=self._prepare_pool)
            self._release(entry)
            accepted = False
            yield _Run(live, prepared)
        finally:
            if accepted:
                self._release(entry)
                live.cancelled = True  # left before the engine: a preparation still running stops
            self._live.end(request)

    def _accept(self, entry: ServedModel) -> None:
        """Count a request against its model's queue from its acceptance (``Overloaded`` when full): one
        being searched for or prepared holds a place as one waiting in the engine does."""
        with self._lock:
            waiting = self._preparing.get(entry.name, 0)
            entry.engine.check_room(waiting)
            self._preparing[entry.name] = waiting + 1

    def _release(self, entry: ServedModel) -> None:
        with self._lock:
            self._preparing[entry.name] -= 1

    def _drive(self, steps: Steps) -> Iterator[StreamEvent]:
        value: Any = None
        try:
            while True:
                try:
                    step = steps.send(value)
                except StopIteration:
                    return
                value = None
                if isinstance(step, _Call):
                    value = step.fn(*step.args)
                elif isinstance(step, _Run):
                    yield from self._run(step.live, step.prepared)
                else:
                    yield step
        finally:
            steps.close()

    async def _adrive(self, steps: Steps) -> AsyncGenerator[StreamEvent, None]:
        loop = asyncio.get_running_loop()
        value: Any = None
        try:
            while True:
                try:
                    step = steps.send(value)
                except StopIteration:
                    return
                value = None
                if isinstance(step, _Call):  # milliseconds to seconds: off the event loop, which must stay responsive
                    work = loop.run_in_executor(step.pool, step.fn, *step.args)
                    try:
                        value = await work
                    except BaseException:
                        work.cancel()  # the caller left: work not yet started never runs
                        raise
                elif isinstance(step, _Run):
                    run = self._arun(step.live, step.prepared)
                    try:
                        async for event in run:
                            yield event
                    finally:
                        await run.aclose()  # cancels the request if it still runs
                else:
                    yield step
        finally:
            steps.close()

    def _run(self, live: Live, prepared: Prepared) -> Iterator[StreamEvent]:
        """The engine's events for an accepted, prepared request, as ``Token``s and the last ``Done``.
        Closing it early cancels the request in the engine."""
        translate = self._translator(prepared)
        engine = prepared.model.engine
        events = self._live.submit(live, engine, lambda: engine.stream(prepared.engine_request(live.engine_id)))
        if events is None:  # cancelled before it reached the engine
            yield translate(prepared.cancelled_before_engine())
            return
        try:
            for event in events:
                yield translate(event)
        finally:
            events.close()  # a generator: cancels the request if it still runs

    async def _arun(self, live: Live, prepared: Prepared) -> AsyncGenerator[StreamEvent, None]:
        translate = self._translator(prepared)
        engine = prepared.model.engine
        events = self._live.submit(live, engine, lambda: engine.astream(prepared.engine_request(live.engine_id)))
        if events is None:
            yield translate(prepared.cancelled_before_engine())
            return
        try:
            async for event in events:
                if isinstance(event, Finished) and self.settings.grounding_judge:  # the judge generates: off the loop
                    yield await asyncio.get_running_loop().run_in_executor(None, translate, event)
                else:
                    yield translate(event)
        finally:
            await events.aclose()

    # ----- compare -----------------------------------------------------------------

    def compare(self, prompt: str, variants: Any, **common: Any) -> Comparison:
        """Run ``prompt`` as each variant (``toolkit.compare``) at once; the side-by-side ``Comparison``."""
        planned = compare_plan(prompt, variants, common, check=self.validate)
        return collect(planned, self._compare_stream(planned))

    def compare_stream(self, prompt: str, variants: Any, **common: Any) -> Iterator[tuple[str, Any]]:
        """``(label, event)`` as the variants stream. Every variant is checked first (a bad one is refused
        before any search or generation); one web search, made once, for every variant that searches."""
        return self._compare_stream(compare_plan(prompt, variants, common, check=self.validate))

    def _compare_stream(self, planned: ComparePlan) -> Iterator[tuple[str, Any]]:
        shared = self.search(search_query(planned.prompt)) if planned.searching else None
        return compare_stream(lambda r: self.stream(r, search=shared), self.cancel, planned)

    # ----- replay ------------------------------------------------------------------

    def replay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay:
        """Run a run record again: the same model, adapter, exact messages (the web search's snapshot,
        never a new search), parameters and seed. Returns the new result and whether its text is the
        recorded answer; when something cannot match (another model hash, a missing adapter, a chat
        template that renders the messages differently), the differences instead of an answer, unless
        ``force``."""
        plan = self._replay_plan(record, force, owner)
        if isinstance(plan, Replay):
            return plan
        for event in self._drive(self._replay_steps(plan)):
            if isinstance(event, Done):
                return plan.finish(event.result)
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    async def areplay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay:
        """``replay`` for an event loop; cancelling it (a caller gone) cancels the generation."""
        plan = await asyncio.get_running_loop().run_in_executor(None, self._replay_plan, record, force, owner)
        if isinstance(plan, Replay):
            return plan
        async for event in self._adrive(self._replay_steps(plan)):
            if isinstance(event, Done):
                return plan.finish(event.result)
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    def _replay_plan(self, data: RunRecord | dict[str, Any], force: bool, owner: str) -> ReplayPlan | Replay:
        """What a replay will run, or the ``Replay`` that says why it cannot (without ``force``)."""
        record = RunRecord.from_dict(data)
        try:
            entry = self._ready(self.registry.route(record.model))
        except InvalidRequest:  # no such model here
            return Replay(None, False, (Difference("model", record.model, None),))
        # a record is input like any other: this deployment's limits and queue hold for it too
        params = self._resolve(entry, plan_params(record))
        plan = plan_replay(record, entry, params, owner, limit=self._input_limit(entry.engine))
        if plan.prepared is None or (plan.differences and not force):
            return Replay(None, False, plan.differences)
        self._check_fits(plan.prepared, "run_record.messages")
        entry.engine.check_room()
        return plan

    def _replay_steps(self, plan: ReplayPlan) -> Steps:
        assert plan.prepared is not None
        live = self._live.begin(plan.prepared.request)
        try:
            yield _Run(live, plan.prepared)
        finally:
            self._live.end(plan.prepared.request)

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

    def evaluate(self, data: Any, variants: Any, *, repeats: int = 1, **options: Any) -> EvalRun:
        """Every sample of ``data`` (a dataset file, or dicts) as every variant, ``repeats`` times, checked and
        kept in the store (``toolkit.evals.evaluate``)."""
        from toolkit.evals.runner import evaluate

        return evaluate(self, data, variants, repeats=repeats, **options)

    async def aevaluate(self, data: Any, variants: Any, *, repeats: int = 1, **options: Any) -> EvalRun:
        """``evaluate`` from an event loop; cancelling stops it and keeps the finished cells."""
        from toolkit.evals.runner import aevaluate

        return await aevaluate(self, data, variants, repeats=repeats, **options)

    # ----- conversations -------------------------------------------------------------

    def conversation(
        self,
        *,
        model: str | None = None,
        adapter: str | None = None,
        system_prompt: str | None = None,
        web_search: bool = False,
        **params: Any,
    ) -> Conversation:
        """A new conversation (``toolkit.conversation``): ``ask``/``stream`` add turns, kept in the store as they
        go. ``params`` (generation parameters) hold for every turn."""
        return Conversation(
            self, model=model, adapter=adapter, system_prompt=system_prompt, web_search=web_search, **params
        )

    def _kept(self, field: str = "conversation_id") -> ConversationStore:
        if self.kept is None:
            raise InvalidRequest(field, "this service keeps no conversations (TOOLKIT_STORE=off)")
        return self.kept

    def conversations(
        self, query: str | None = None, first: int = 50, before: str | None = None, owner: str = ""
    ) -> list[ConversationInfo]:
        """Kept conversations, newest first; ``query``: those whose prompts or answers hold its words;
        ``before``: the page after that id. (None kept: an empty list.)"""
        return self.kept.list(keeper(owner), query=query, first=first, before=before) if self.kept else []

    def conversation_info(self, conversation_id: str, owner: str = "") -> ConversationInfo | None:
        """A kept conversation with its turns; None for an unknown id (or, on a server, another key's)."""
        return self.kept.get(conversation_id, keeper(owner)) if self.kept else None

    def rename_conversation(self, conversation_id: str, title: str, owner: str = "") -> ConversationInfo:
        return self._kept("id").rename(conversation_id, title, keeper(owner))

    def delete_conversation(self, conversation_id: str, owner: str = "") -> bool:
        """Delete a kept conversation, its turns and their run records; False for an unknown id."""
        return self.kept.delete(conversation_id, keeper(owner)) if self.kept else False

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

    def _judge(self) -> ModelJudge | None:
        """GROUNDING_JUDGE's model, asked about the grounding claims the rules are unsure of."""
        name = self.settings.grounding_judge
        return ModelJudge(self, name) if name else None

    def _provider(self) -> str:
        return self.searcher.provider if self.searcher else "none"

    def _result(self, prepared: Prepared, finished: Finished) -> InferResult:
        self.registry.observe(prepared.model, finished.error)  # a remote server down, or answering again
        result = prepared.result(finished, self._versions, self._judge())
        if self.run_log is not None:
            try:
                self.run_log.append(result)
            except OSError as exc:  # a full disk must not lose the answer: it is logged as a warning
                log.warning("RUN_LOG %s: could not append %s: %s", self.run_log.path, result.id, exc)
        return result


if TYPE_CHECKING:
    from toolkit.protocol import Service

    def _conforms(service: InferenceService) -> Service:  # mypy checks that the facade is a ``Service``
        return service
