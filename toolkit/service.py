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
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import replace as dataclass_replace
from typing import TYPE_CHECKING, Any, cast

from toolkit.compare import Comparison, collect, compare_stream
from toolkit.compare import Plan as ComparePlan
from toolkit.compare import plan as compare_plan
from toolkit.conversation.handle import Conversation
from toolkit.conversation.records import ConversationArg, ConversationInfo
from toolkit.conversation.store import ConversationStore
from toolkit.conversation.thread import akept, keeper, kept, thread_for
from toolkit.driver import Call, Driver, PreparationPools, Run, Steps
from toolkit.engines.base import Engine
from toolkit.errors import (
    EngineUnavailable,
    InvalidRequest,
)
from toolkit.events import Finished
from toolkit.fence import Fence
from toolkit.judge import ModelJudge
from toolkit.live import Live, LiveRequests
from toolkit.modelsfile import ModelConfig
from toolkit.params import GenerationParams, InferRequest, Limits, as_request
from toolkit.prepared import Prepared, prepare, search_finished
from toolkit.registry import ModelRegistry, ServedModel
from toolkit.replay import ReplayPlan, plan_replay
from toolkit.results import (
    AdapterInfo,
    Done,
    Health,
    InferResult,
    ModelInfo,
    Replay,
    RunRecord,
    SearchStarted,
    StreamEvent,
)
from toolkit.runs import RunLog
from toolkit.search import Searcher, SearchOutcome, make_searcher, search_query
from toolkit.settings import Settings
from toolkit.store import Store
from toolkit.version import versions

if TYPE_CHECKING:
    from toolkit.evals.results import EvalRun


_UNSET: Any = object()


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
        self._driver = Driver(self._live, self._result, lambda: bool(self.settings.grounding_judge))
        self._prepare_pools = PreparationPools()  # building requests' messages: beside the loop
        self._started = False
        self._stopped = False
        self._versions = versions()
        self._fences = Fence(self.settings.cache_dir, self.settings.fence_key)  # its key: on the first search
        self.run_log = RunLog(self.settings.run_log) if self.settings.run_log is not None else None
        store = self.settings.store  # opened on first use
        self.kept = (
            ConversationStore(Store(store), self.settings.conversation_retention_days) if store is not None else None
        )
        self.registry = ModelRegistry.serving(self.settings, models, loaded)

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
        self._prepare_pools.shutdown()

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
        return cast(Engine, self._routed(model).engine)

    def health(self) -> Health:
        store = self.kept.store.state if self.kept is not None else "off"
        return self.registry.health(self._live.preparing, store, time.monotonic() - self._started_at)

    def models(self) -> list[ModelInfo]:
        return [entry.model_info() for entry in self.registry]

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
        request = as_request(request, kwargs)
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
        return request, entry.resolve(self.limits, request.params), entry

    def _input_limit(self, engine: Engine) -> int:
        """The most input tokens a request may have on ``engine``: MAX_INPUT_TOKENS, within its context."""
        return min(self.limits.max_input_tokens, engine.info.context_length - 1)

    def _ready(self, entry: ServedModel) -> ServedModel:
        return self.registry.ready(entry, started=self._started, stopping=self._stopped)

    def _routed(self, model: str | None) -> ServedModel:
        """``model`` (None: the default), ready; ``ModelNotReady`` (or ``UnknownModel``) saying why not."""
        return self._ready(self.registry.route(model))

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

    def check_room(self, model: str | None = None) -> None:
        """``Overloaded`` now when a request for ``model`` (None: the default) would be refused for a full queue (a
        front end asks before it reads a large request); an unknown model or one not ready passes."""
        try:
            entry = self.registry.resolve(model)[0]
        except InvalidRequest:
            return
        if entry.serving:
            self._live.room(entry.name, entry.engine)

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
        """``toolkit.prepared.prepare`` within this model's input limit and this installation's fence; ``live``:
        the request, whose cancellation stops the fitting."""
        try:
            cancelled = (lambda: live.cancelled) if live is not None else None
            return prepare(
                entry, request, params, search, self._input_limit(entry.engine), self._fences, fit, cancelled
            )
        except EngineUnavailable as exc:  # counting tokens on a remote server that stopped answering
            self.registry.observe(entry, exc)
            raise

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
        request, thread = thread_for(self.kept, as_request(request, kwargs), conversation)
        request, params, entry = self._validated(request, {})
        fit = thread is not None and thread.continues
        yield from kept(thread, request, self._driver.drive(self._steps(request, params, entry, search, fit)))

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
            request, thread = thread_for(self.kept, as_request(request, kwargs), conversation)
        else:  # reads the store (and opens it on first use): off the loop
            request, thread = await asyncio.to_thread(thread_for, self.kept, as_request(request, kwargs), conversation)
        request, params, entry = self._validated(request, {})
        fit = thread is not None and thread.continues
        async with aclosing(
            akept(thread, request, self._driver.adrive(self._steps(request, params, entry, search, fit)))
        ) as events:
            async for event in events:  # closing this stream closes the steps at once (the request's place frees)
                yield event

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
        self._live.admit(entry.name, entry.engine)  # a full queue answers at once, before search and tokenizing
        accepted = True
        try:
            live = self._live.begin(request)
        except BaseException:
            self._live.release(entry.name)
            raise
        try:
            outcome = None
            if request.web_search:
                query = search.query if search is not None else search_query(request.prompt)
                yield SearchStarted(request.request_id, query, self._provider())
                outcome = search if search is not None else (yield Call(self.search, query))
                yield search_finished(request.request_id, outcome)
            pool = self._prepare_pools.of(request)
            prepared = yield Call(self._prepare, entry, request, params, outcome, fit, live, pool=pool)
            self._live.release(entry.name)
            accepted = False
            yield Run(live, prepared)
        finally:
            if accepted:
                self._live.release(entry.name)
                live.cancelled = True  # left before the engine: a preparation still running stops
            self._live.end(request)

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
        for event in self._driver.drive(self._replay_steps(plan)):
            if isinstance(event, Done):
                return plan.finish(event.result)
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    async def areplay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay:
        """``replay`` for an event loop; cancelling it (a caller gone) cancels the generation."""
        plan = await asyncio.get_running_loop().run_in_executor(None, self._replay_plan, record, force, owner)
        if isinstance(plan, Replay):
            return plan
        async for event in self._driver.adrive(self._replay_steps(plan)):
            if isinstance(event, Done):
                return plan.finish(event.result)
        raise AssertionError("a stream always ends with Done")  # pragma: no cover

    def _replay_plan(self, data: RunRecord | dict[str, Any], force: bool, owner: str) -> ReplayPlan | Replay:
        """What a replay will run, or the ``Replay`` that says why it cannot (without ``force``)."""
        return plan_replay(RunRecord.from_dict(data), self._routed, self.limits, self._input_limit, force, owner)

    def _replay_steps(self, plan: ReplayPlan) -> Steps:
        assert plan.prepared is not None
        live = self._live.begin(plan.prepared.request)
        try:
            yield Run(live, plan.prepared)
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
        if self.kept is None:
            raise InvalidRequest("id", "this service keeps no conversations (TOOLKIT_STORE=off)")
        return self.kept.rename(conversation_id, title, keeper(owner))

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
            self.run_log.keep(result)
        return result


if TYPE_CHECKING:
    from toolkit.protocol import Service

    def _conforms(service: InferenceService) -> Service:  # mypy checks that the facade is a ``Service``
        return service
