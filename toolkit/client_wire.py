"""What ``RemoteService`` sends and reads: its GraphQL documents (their selections derived from the result
dataclasses), a request's variables, results and errors from the wire, and the graphql-transport-ws
``Subscription`` (the benches speak it too)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from toolkit.conversation.records import ConversationArg, ConversationInfo
from toolkit.errors import InvalidRequest, ServiceUnavailable, ToolkitError
from toolkit.params import PARAMS, InferRequest
from toolkit.results import (
    AdapterInfo,
    Difference,
    Done,
    Health,
    InferResult,
    ModelInfo,
    SearchFinished,
    SearchStarted,
    Source,
    StreamEvent,
    Token,
)
from toolkit.search import SearchOutcome
from toolkit.wire import camel, from_wire, selection

RESULT_FIELDS = selection(InferResult) + " timings { tokensPerSecond }"
ARGS = """$prompt: String!, $webSearch: Boolean, $history: [TurnInput!], $systemPrompt: String,
  $params: GenerationInput, $model: String, $adapter: String, $requestId: ID, $search: JSON,
  $conversationId: ID, $keep: Boolean, $timeoutSeconds: Float"""
PASS = """prompt: $prompt, webSearch: $webSearch, history: $history, systemPrompt: $systemPrompt,
  params: $params, model: $model, adapter: $adapter, requestId: $requestId, search: $search,
  conversationId: $conversationId, keep: $keep, timeoutSeconds: $timeoutSeconds"""
INFER = f"mutation Infer({ARGS}) {{ infer({PASS}) {{ {RESULT_FIELDS} }} }}"
# TOKEN events select the delta only: the answer so far is put together here, not sent again with
# every token (a 1,000-token answer would otherwise cost about 500,000 characters on the wire)
STREAM = f"""subscription InferStream({ARGS}) {{ inferStream({PASS}) {{
  type requestId query searchStatus searchMessage delta
  sources {{ {selection(Source)} }}
  result {{ {RESULT_FIELDS} }}
}} }}"""
HEALTH = f"{{ health {{ {selection(Health)} }} }}"
MODELS = f"{{ models {{ {selection(ModelInfo)} }} }}"
SEARCH = "query Search($query: String!) { search(query: $query) }"
CANCEL = "mutation Cancel($id: ID!) { cancel(requestId: $id) }"
CONVERSATIONS = f"""query Conversations($query: String, $first: Int, $before: ID) {{
  conversations(query: $query, first: $first, before: $before) {{ {selection(ConversationInfo)} }} }}"""
CONVERSATION = f"query Conversation($id: ID!) {{ conversation(id: $id) {{ {selection(ConversationInfo)} }} }}"
RENAME = f"""mutation Rename($id: ID!, $title: String!) {{ renameConversation(id: $id, title: $title) {{
  {selection(ConversationInfo)} }} }}"""
DELETE = "mutation Delete($id: ID!) { deleteConversation(id: $id) }"
REPLAY = f"""mutation Replay($record: JSON!, $force: Boolean) {{ replay(runRecord: $record, force: $force) {{
  identical differences {{ {selection(Difference)} }} result {{ {RESULT_FIELDS} }} }} }}"""
ADAPTER_FIELDS = selection(AdapterInfo)
ADAPTERS = f"query Adapters($model: String) {{ adapters(model: $model) {{ {ADAPTER_FIELDS} }} }}"
LOAD_ADAPTER = f"""mutation LoadAdapter($name: String!, $path: String, $model: String) {{
  loadAdapter(name: $name, path: $path, model: $model) {{ {ADAPTER_FIELDS} }} }}"""
UNLOAD_ADAPTER = f"""mutation UnloadAdapter($name: String!, $model: String) {{
  unloadAdapter(name: $name, model: $model) {{ {ADAPTER_FIELDS} }} }}"""
PARAM_NAMES = {name: camel(name) for name in PARAMS}  # GraphQL's GenerationInput, from the declaration


# ----- mapping -------------------------------------------------------------------------


def variables(
    request: InferRequest, search: SearchOutcome | None = None, conversation: ConversationArg = None
) -> dict[str, Any]:
    """The GraphQL variables of a request. Without ``conversation`` the server keeps none (``keep: false``), as
    in process."""
    params = {PARAM_NAMES[k]: v for k, v in request.params.to_dict().items() if v is not None and v != []}
    return {
        "conversationId": conversation if isinstance(conversation, str) else None,
        "keep": conversation is not None and conversation is not False,
        "prompt": request.prompt,
        "webSearch": request.web_search,
        "history": [{"role": t.role.upper(), "content": t.content} for t in request.history],
        "systemPrompt": request.system_prompt,
        "params": params,
        "model": request.model,
        "adapter": request.adapter,
        "requestId": request.request_id,
        "search": search.to_dict() if search is not None else None,
        "timeoutSeconds": request.timeout_s,
    }


def result_from(data: dict[str, Any]) -> InferResult:
    return from_wire(InferResult, data)


SESSION_HEADER = "X-Toolkit-Session"  # the browser session a front end serves (its own rate limit on the server)
PROTOCOL = "graphql-transport-ws"


class Subscription:
    """One GraphQL subscription over graphql-transport-ws, its transport aside: the messages to send, and
    what each message received means. ``RemoteService``'s sync and async streams and the benchmarks drive
    it over their own sockets."""

    def __init__(self, query: str, variables: dict[str, Any], api_key: str | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.query, self.variables, self.api_key = query, variables, api_key
        self.text = ""  # the answer so far, from the deltas
        self.done = False

    def init(self) -> str:
        payload = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return json.dumps({"type": "connection_init", "payload": payload})

    def acknowledged(self, raw: str | bytes) -> None:
        ack = json.loads(raw)
        if ack.get("type") != "connection_ack":
            raise ServiceUnavailable(f"the server did not acknowledge the connection: {ack}")

    def subscribe(self) -> str:
        payload = {"query": self.query, "variables": self.variables}
        return json.dumps({"id": self.id, "type": "subscribe", "payload": payload})

    def receive(self, raw: str | bytes, reply: Callable[[str], object]) -> StreamEvent | None:
        """The stream event a message carries (None for protocol traffic; ``reply`` answers pings); raises
        the error an error message carries; ``done`` once the subscription completes."""
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "ping":
            reply(json.dumps({"type": "pong"}))
            return None
        if message.get("id") != self.id:
            return None
        if kind == "complete":
            self.done = True
            return None
        if kind == "error":
            raise error_from((message.get("payload") or [{}])[0])
        if kind != "next":
            return None
        payload = message.get("payload") or {}
        if payload.get("errors"):
            raise error_from(payload["errors"][0])
        e = payload["data"]["inferStream"]
        if e["type"] == "SEARCH_STARTED":
            return SearchStarted(e["requestId"], e["query"], "")
        if e["type"] == "SEARCH_FINISHED":
            sources = tuple(from_wire(Source, s) for s in e["sources"] or ())
            return SearchFinished(e["requestId"], e["searchStatus"].lower(), sources, e["searchMessage"], False, 0.0)
        if e["type"] == "TOKEN":
            self.text += e["delta"]
            return Token(e["requestId"], e["delta"], self.text)
        return Done(result_from(e["result"]))

    @staticmethod
    def unreachable(url: str, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable(f"cannot open a WebSocket to {url} ({exc}); is the server running?")

    @staticmethod
    def closed(exc: Exception) -> ServiceUnavailable:
        code = getattr(getattr(exc, "rcvd", None), "code", None)
        return ServiceUnavailable(f"the WebSocket closed ({code or exc}); {_close_hint(code)}")


def error_from(err: dict[str, Any]) -> ToolkitError:
    """The ToolkitError a GraphQL error stands for (``ToolkitError.from_wire``: by its code, status and fields)."""
    ext = err.get("extensions") or {}
    code, message = str(ext.get("code", "INTERNAL")), str(err.get("message", "unknown error"))
    error = ToolkitError.from_wire(code, message, ext)
    if isinstance(error, InvalidRequest):  # its message starts with the field it names, as in process
        error.field = str(ext.get("field") or "query")
        if not message.startswith(error.field + ": "):
            error.message = f"{error.field}: {message}"
            error.args = (error.message,)
    return error


def _close_hint(code: int | None) -> str:
    return {
        4401: "the connection was not initialised",
        4403: "the API key was refused",
        4406: "the server wants the graphql-transport-ws subprotocol",
        4408: "the connection was not initialised in time",
        4429: "too many initialisation requests",
    }.get(code or 0, "retry")
