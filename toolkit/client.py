"""``RemoteService``: the ``InferenceService`` interface over the GraphQL endpoint.

    service = RemoteService("http://127.0.0.1:8080/graphql", api_key=None)
    service.infer("What is the capital of France?", temperature=0).text
    for event in service.stream("Tell me a story", web_search=True): ...

``infer``, ``health``, ``models``, ``cancel`` and the adapter calls go over HTTP; ``stream`` over
a WebSocket speaking graphql-transport-ws. Results come back as the same
dataclasses the in-process service returns, and GraphQL errors as the same
``ToolkitError`` subclasses (``InvalidRequest`` with its field, ``Overloaded``, ...).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from toolkit.client_wire import (
    ADAPTERS,
    CANCEL,
    CONVERSATION,
    CONVERSATIONS,
    DELETE,
    HEALTH,
    INFER,
    LOAD_ADAPTER,
    MODELS,
    PROTOCOL,
    RENAME,
    REPLAY,
    SEARCH,
    SESSION_HEADER,
    STREAM,
    UNLOAD_ADAPTER,
    Subscription,
    error_from,
    result_from,
    variables,
)
from toolkit.compare import Comparison, collect, compare_stream, plan
from toolkit.conversation.handle import Conversation
from toolkit.conversation.records import ConversationArg, ConversationInfo
from toolkit.errors import ConfigError, InvalidRequest, ServiceUnavailable, ToolkitError, UnknownModel
from toolkit.params import GenerationParams, InferRequest, as_request, split_model
from toolkit.results import (
    AdapterInfo,
    Done,
    Health,
    InferResult,
    ModelInfo,
    Replay,
    RunRecord,
    StreamEvent,
)
from toolkit.retry import RetryPolicy
from toolkit.search import SearchOutcome
from toolkit.settings import read_env
from toolkit.wire import from_wire

if TYPE_CHECKING:
    from toolkit.evals.results import EvalRun

# WebSockets of streams still open at exit are closed first: once Python finalizes, the thread that
# would finish the close handshake no longer runs, and closing the stream's generator would hang.
_OPEN_STREAMS: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_open_streams() -> None:
    for ws in list(_OPEN_STREAMS):
        ws.close()


DEFAULT_URL = "http://127.0.0.1:8080/graphql"
MAX_RETRIES = 2  # a refused call that a retry may cure is sent again twice, after the wait the server names
MAX_RETRY_WAIT_S = 20  # ... unless that wait is longer: then the caller hears of it at once


@dataclass(frozen=True)
class ClientSettings:
    """Where the GraphQL server is, for the dashboard, the magic and ``RemoteService.from_env()``."""

    graphql_url: str | None = None  # None: no server configured
    api_key: str | None = field(default=None, repr=False)

    ENV: ClassVar[dict[str, str]] = {"graphql_url": "GRAPHQL_URL", "api_key": "GRAPHQL_API_KEY"}

    def __post_init__(self) -> None:
        if self.graphql_url is not None and not self.graphql_url.startswith(("http://", "https://")):
            raise ConfigError("GRAPHQL_URL", f"must start with http:// or https://, got {self.graphql_url!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClientSettings:
        return cls(**read_env(cls, environ, overrides, lambda name, var, raw: raw))


class RemoteService:
    """The same interface as ``InferenceService``, over HTTP and WebSocket."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        max_retries: int = MAX_RETRIES,
        session: str | None = None,
    ) -> None:
        """``max_retries``: how many times a call the server refused with an error a retry may cure (its rate
        limit, a full queue, a model still loading: ``toolkit.retry``) is sent again, after the wait the server
        names (as OpenAI's client does; a refused call did not run); 0: never. ``session``: the
        browser session a front end (the dashboard) serves, sent as ``X-Toolkit-Session``: with a key in the
        server's FRONTEND_API_KEYS, each session has its own rate limit."""
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.url = url
        self.ws_url = "ws" + url[4:]
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.session = session

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RemoteService:
        """``GRAPHQL_URL`` (default the local server on 8080) with ``GRAPHQL_API_KEY``."""
        settings = ClientSettings.from_env(environ)
        return cls(settings.graphql_url or DEFAULT_URL, api_key=settings.api_key)

    # ----- HTTP -----------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/graphql-response+json, application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if self.session:
            headers[SESSION_HEADER] = self.session
        return headers

    def _ws_headers(self) -> dict[str, str]:
        return {SESSION_HEADER: self.session} if self.session else {}

    def execute(
        self, query: str, variables: dict[str, Any] | None = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """POST one operation; return ``data`` or raise the error it carries. A refused call a retry may cure
        is sent again after the wait the server names, ``max_retries`` times at most."""
        for attempt in itertools.count():
            try:
                return self._execute(query, variables, timeout_s)
            except ToolkitError as exc:
                time.sleep(self._retry_wait(exc, attempt))
        raise AssertionError("unreachable")

    def _retry_wait(self, exc: ToolkitError, attempt: int, began: bool = False) -> float:
        """How long to wait before sending a refused call again (``toolkit.retry``: the error says whether a
        retry may help, and when); raises ``exc`` when it is not sent again: a retry will not help, ``max_retries``
        are spent, the wait is over ``MAX_RETRY_WAIT_S``, or the stream had begun (its events were seen)."""
        wait = None if began else RetryPolicy(self.max_retries, max_wait_s=MAX_RETRY_WAIT_S).wait(exc, attempt)
        if wait is None:
            raise exc
        return wait

    def _execute(self, query: str, variables: dict[str, Any] | None, timeout_s: float | None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read())
            except ValueError:
                raise ServiceUnavailable(f"the server at {self.url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceUnavailable(
                f"cannot reach the GraphQL server at {self.url} ({reason}); is it running (make serve)?"
            ) from None
        except ValueError:
            raise ServiceUnavailable(f"the server at {self.url} did not answer with JSON") from None
        if payload.get("errors"):
            raise error_from(payload["errors"][0])
        return dict(payload.get("data") or {})

    def health(self) -> Health:
        return from_wire(Health, self.execute(HEALTH, timeout_s=10)["health"])

    def wait_ready(self, timeout_s: float = 120.0, poll_s: float = 0.2) -> Health:
        """Wait until the server is up and its model loaded; ``ServiceUnavailable`` past the timeout."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            try:
                health = self.health()
                if health.status == "ready":
                    return health
                if health.status == "error":
                    raise ServiceUnavailable(f"the server's model failed to load: {health.error}", failed=True)
                last = health.status
            except ServiceUnavailable as exc:
                if exc.failed:
                    raise
                last = exc.message
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(f"{self.url} was not ready within {timeout_s:g} s ({last})")
            time.sleep(poll_s)

    def models(self) -> list[ModelInfo]:
        return [from_wire(ModelInfo, m) for m in self.execute(MODELS, timeout_s=10)["models"]]

    def infer(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> InferResult:
        request = as_request(request, kwargs)
        return result_from(self.execute(INFER, variables(request, search, conversation))["infer"])

    def check_room(self, model: str | None = None) -> None:
        """Nothing to ask here: the server refuses a request for a full queue itself (``Overloaded``), before it
        reads it."""

    def search(self, query: str) -> SearchOutcome:
        """The server's web search, as the snapshot ``stream(..., search=)`` takes (an evaluation searches
        once per question, and every variant sees the same sources)."""
        return SearchOutcome.from_dict(self.execute(SEARCH, {"query": query})["search"], where="search")

    def validate(self, request: InferRequest | str, **kwargs: Any) -> tuple[InferRequest, GenerationParams]:
        """The checks a request can have here: its fields, and that the server lists its model (by id, or as
        ``<id>:<adapter>``) and adapter. The server checks the rest when it runs."""
        request = as_request(request, kwargs)
        if request.model is None and request.adapter is None:
            return request, request.params
        ids = [m.id for m in self.models()]
        model, adapter = request.model, request.adapter
        if model is not None:
            found = split_model(model, ids)
            if found is None:
                served = ", ".join(repr(i) for i in ids)
                raise UnknownModel(
                    f"unknown model {model!r}; this service serves {served} (an adapter as '<model>:<adapter>')"
                )
            model, adapter = found[0], adapter or found[1]
        if adapter is not None:
            names = [a.name for a in self.adapters(model)]
            if adapter not in names:
                raise InvalidRequest("adapter", f"unknown adapter {adapter!r}; loaded: {', '.join(names) or 'none'}")
        return request, request.params

    def replay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay:
        """Replay a run record on the server (see ``InferenceService.replay``)."""
        data = record.to_dict() if isinstance(record, RunRecord) else record
        return from_wire(Replay, self.execute(REPLAY, {"record": data, "force": force})["replay"])

    async def areplay(self, record: RunRecord | dict[str, Any], *, force: bool = False, owner: str = "") -> Replay:
        """``replay`` from an event loop (the HTTP call runs on a worker thread)."""
        return await asyncio.to_thread(self.replay, record, force=force, owner=owner)

    def compare(self, prompt: str, variants: Any, **common: Any) -> Comparison:
        """The variants as concurrent streams on the server (``toolkit.compare``)."""
        planned = plan(prompt, variants, common)
        return collect(planned, compare_stream(self.stream, self.cancel, planned))

    def compare_stream(self, prompt: str, variants: Any, **common: Any) -> Iterator[tuple[str, Any]]:
        return compare_stream(self.stream, self.cancel, plan(prompt, variants, common))

    def evaluate(self, data: Any, variants: Any, *, repeats: int = 1, **options: Any) -> EvalRun:
        """Every sample of ``data`` (a dataset file, or dicts) as every variant, ``repeats`` times, checked and
        kept in the store (``toolkit.evals.evaluate``)."""
        from toolkit.evals.runner import evaluate

        return evaluate(self, data, variants, repeats=repeats, **options)

    async def aevaluate(self, data: Any, variants: Any, *, repeats: int = 1, **options: Any) -> EvalRun:
        """``evaluate`` from an event loop; cancelling stops it and keeps the finished cells."""
        from toolkit.evals.runner import aevaluate

        return await aevaluate(self, data, variants, repeats=repeats, **options)

    # ----- conversations (kept on the server: its store, this client's key) ----------------

    def conversation(
        self,
        *,
        model: str | None = None,
        adapter: str | None = None,
        system_prompt: str | None = None,
        web_search: bool = False,
        **params: Any,
    ) -> Conversation:
        """A new conversation kept on the server (see ``InferenceService.conversation``)."""
        return Conversation(
            self, model=model, adapter=adapter, system_prompt=system_prompt, web_search=web_search, **params
        )

    def conversations(
        self, query: str | None = None, first: int = 50, before: str | None = None, owner: str = ""
    ) -> list[ConversationInfo]:
        data = self.execute(CONVERSATIONS, {"query": query, "first": first, "before": before}, timeout_s=30)
        return [from_wire(ConversationInfo, c) for c in data["conversations"]]

    def conversation_info(self, conversation_id: str, owner: str = "") -> ConversationInfo | None:
        data = self.execute(CONVERSATION, {"id": conversation_id}, timeout_s=30)["conversation"]
        return from_wire(ConversationInfo, data) if data is not None else None

    def rename_conversation(self, conversation_id: str, title: str, owner: str = "") -> ConversationInfo:
        data = self.execute(RENAME, {"id": conversation_id, "title": title}, timeout_s=30)
        return from_wire(ConversationInfo, data["renameConversation"])

    def delete_conversation(self, conversation_id: str, owner: str = "") -> bool:
        return bool(self.execute(DELETE, {"id": conversation_id}, timeout_s=30)["deleteConversation"])

    def cancel(self, request_id: str, owner: str = "") -> bool:
        """Cancel one of this client's requests. (``owner`` is the server's business: it is this client's key.)"""
        return bool(self.execute(CANCEL, {"id": request_id}, timeout_s=10)["cancel"])

    def adapters(self, model: str | None = None) -> list[AdapterInfo]:
        data = self.execute(ADAPTERS, {"model": model}, timeout_s=10)
        return [from_wire(AdapterInfo, a) for a in data["adapters"]]

    def load_adapter(self, name: str, path: str | None = None, model: str | None = None) -> AdapterInfo:
        data = self.execute(LOAD_ADAPTER, {"name": name, "path": path, "model": model})
        return from_wire(AdapterInfo, data["loadAdapter"])

    def unload_adapter(self, name: str, grace_s: float | None = None, model: str | None = None) -> AdapterInfo:
        """Unload on the server (it drains for its REQUEST_TIMEOUT; ``grace_s`` is not sent)."""
        return from_wire(AdapterInfo, self.execute(UNLOAD_ADAPTER, {"name": name, "model": model})["unloadAdapter"])

    # ----- WebSocket ------------------------------------------------------------------

    def stream(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> Iterator[StreamEvent]:
        """Events as they come; closing the iterator early cancels the generation on the server.
        ``search``: a snapshot (``search()``'s) to ground in instead of a new search; ``conversation``: a kept
        conversation's id to continue, or True to start one (the server keeps it). A stream refused before it
        began is asked again, as ``execute`` does."""
        body = variables(as_request(request, kwargs), search, conversation)
        for attempt in itertools.count():
            events = self._stream(body)
            began = False
            try:
                with contextlib.closing(events):
                    for event in events:
                        began = True
                        yield event
                return
            except ToolkitError as exc:
                time.sleep(self._retry_wait(exc, attempt, began))

    def _stream(self, body: dict[str, Any]) -> Generator[StreamEvent, None, None]:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        sub = Subscription(STREAM, body, self.api_key)
        try:
            ws = connect(
                self.ws_url,
                subprotocols=[PROTOCOL],  # type: ignore[list-item]
                proxy=None,
                open_timeout=10,
                additional_headers=self._ws_headers(),
            )
        except (OSError, WebSocketException) as exc:
            raise sub.unreachable(self.ws_url, exc) from None
        with ws:
            _OPEN_STREAMS.add(ws)
            try:
                ws.send(sub.init())
                sub.acknowledged(ws.recv(timeout=10))
                ws.send(sub.subscribe())
                while not sub.done:
                    event = sub.receive(ws.recv(timeout=self.timeout_s), ws.send)
                    if event is not None:
                        yield event
            except WebSocketException as exc:
                raise sub.closed(exc) from None
            except TimeoutError:
                raise ServiceUnavailable(f"no answer from {self.ws_url} within the timeout") from None

    async def astream(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> AsyncIterator[StreamEvent]:
        body = variables(as_request(request, kwargs), search, conversation)
        for attempt in itertools.count():
            events = self._astream(body)
            began = False
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        began = True
                        yield event
                return
            except ToolkitError as exc:
                await asyncio.sleep(self._retry_wait(exc, attempt, began))

    async def _astream(self, body: dict[str, Any]) -> AsyncGenerator[StreamEvent, None]:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        sub = Subscription(STREAM, body, self.api_key)
        try:
            ws = await connect(
                self.ws_url,
                subprotocols=[PROTOCOL],  # type: ignore[list-item]
                proxy=None,
                open_timeout=10,
                additional_headers=self._ws_headers(),
            )
        except (OSError, WebSocketException) as exc:
            raise sub.unreachable(self.ws_url, exc) from None
        async with ws:
            try:
                await ws.send(sub.init())
                sub.acknowledged(await ws.recv())
                await ws.send(sub.subscribe())
                replies: list[str] = []
                async for raw in ws:
                    event = sub.receive(raw, replies.append)
                    for reply in replies:
                        await ws.send(reply)
                    replies.clear()
                    if event is not None:
                        yield event
                    if sub.done:
                        return
            except WebSocketException as exc:
                raise sub.closed(exc) from None

    async def ainfer(
        self,
        request: InferRequest | str,
        *,
        search: SearchOutcome | None = None,
        conversation: ConversationArg = None,
        **kwargs: Any,
    ) -> InferResult:
        async for event in self.astream(request, search=search, conversation=conversation, **kwargs):
            if isinstance(event, Done):
                return event.result
        raise ServiceUnavailable("the stream ended without a result")


if TYPE_CHECKING:
    from toolkit.protocol import Service

    def _conforms(service: RemoteService) -> Service:  # mypy checks that the client is a ``Service``
        return service
