"""The OpenAI chat-completions API on the same server and port: ``/v1/chat/completions``, ``/v1/models`` and
``/v1/models/{model}``,
calling the same ``InferenceService`` as GraphQL (no second path to the model), so the ``openai``
clients, LangChain, LlamaIndex, Open WebUI and editor plugins use the toolkit's models, adapters
and web-search RAG, and one toolkit server can be the remote engine of another.

- ``model`` routes like GraphQL's; an adapter is ``<model>:<adapter>`` as ``/v1/models`` lists it.
- ``messages``: leading system (or developer) messages are the system prompt, then user and
  assistant turns alternating, the last one the user's prompt.
- ``temperature``, ``top_p``, ``max_tokens``/``max_completion_tokens``, ``seed``, ``stop``,
  ``presence_penalty``, ``frequency_penalty``; ``top_k``, ``repetition_penalty`` as extra fields (as
  vLLM takes them); ``web_search: true`` as an extra field, whose ``sources`` come back in an extra
  field of the response (and of the last stream chunk), beside ``run_record_id``.
- Fields that would change the meaning and are not served (``n`` > 1, ``tools``, ``response_format``,
  ``logprobs``, ...) are a 400 naming the field, never ignored.
- Errors in OpenAI's shape with the statuses its client maps to its exceptions: 400 (``param``), 401,
  404 (an unknown model, ``model_not_found``; a path not served, ``unknown_url``), 413, 429
  (``Retry-After``), 503 (overloaded, engine unavailable, loading: with ``Retry-After`` wherever the
  error says a retry may succeed).
- The same API keys (``Authorization: Bearer``), rate-limit buckets, body limit and CORS as GraphQL;
  a closed connection cancels the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

from tornado.iostream import StreamClosedError

from server.gateway import Caller
from server.handlers import BoundedBody, too_many_wrong_keys
from server.security import ApiKeys
from toolkit.client_wire import SESSION_HEADER
from toolkit.errors import ClientGone, InvalidRequest, ToolkitError, Unauthenticated
from toolkit.params import PARAMS as GENERATION
from toolkit.params import GenerationParams, InferRequest, Turn, openai_name, openai_names
from toolkit.results import Done, InferResult, Token
from toolkit.version import __version__ as TOOLKIT_VERSION
from toolkit.wire import to_wire

FINISH = {"stop": "stop", "length": "length", "timeout": "length", "cancelled": "stop", "repetition": "stop"}
PARAMS = openai_names()  # OpenAI field -> GenerationParams field, from the declaration (toolkit.params)
# the request's other fields: what it asks, and fields that change nothing about the answer
FIELDS = frozenset(
    {"model", "messages", "stream", "stream_options", "request_id", "web_search", "conversation_id"}
    | {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier", "prompt_cache_key"}
)
UNSUPPORTED = {  # fields that change what an answer is, with the value that changes nothing
    "tools": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: not v,
    "function_call": lambda v: v in (None, "none"),
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "logprobs": lambda v: not v,
    "top_logprobs": lambda v: not v,
    "logit_bias": lambda v: not v,
    "n": lambda v: v in (None, 1),
    "audio": lambda v: v is None,
    "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
}
TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    405: "invalid_request_error",
    415: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "requests",
    503: "server_error",
    504: "server_error",
    500: "server_error",
}


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }


def param_name(field: str, used: Mapping[str, str] | None = None) -> str:
    """The OpenAI request field a toolkit error's field stands for (``used``: parameter -> the field the
    request named it by, e.g. ``max_completion_tokens``)."""
    if field.startswith("params."):
        name = field.removeprefix("params.")
        return (used or {}).get(name) or (openai_name(name) if name in GENERATION else None) or name
    if field in ("prompt", "system_prompt") or field.startswith("history"):
        return "messages"
    if field == "adapter":
        return "model"
    return field


def from_toolkit(exc: ToolkitError, used: Mapping[str, str] | None = None) -> OpenAIError:
    """A toolkit error in OpenAI's shape: the status, code and retry its class declares (``toolkit.errors``)."""
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="openai"'
    param = param_name(exc.field, used) if isinstance(exc, InvalidRequest) else None
    return OpenAIError(exc.status, exc.message, param=param, code=exc.wire_code, headers=headers)


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise OpenAIError(400, f"{where}: only text content parts are served", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise OpenAIError(400, f"{where}: content must be a string or a list of text parts", param="messages")


def to_request(body: Any, owner: str) -> tuple[InferRequest, dict[str, str]]:
    """The ``InferRequest`` a chat-completions body stands for, and the fields that set its parameters.

    A field that changes the answer is served or refused, never ignored: unknown fields are a 400."""
    if not isinstance(body, Mapping):
        raise OpenAIError(400, "the body must be a JSON object", param=None)
    for name in body:
        if name not in FIELDS and name not in PARAMS and name not in UNSUPPORTED:
            known = ", ".join(sorted(FIELDS | set(PARAMS)))
            raise OpenAIError(
                400, f"'{name}' is not a field this server knows; it takes {known}", param=name, code="unknown_field"
            )
    for name, harmless in UNSUPPORTED.items():
        if name in body and not harmless(body[name]):
            raise OpenAIError(
                400, f"'{name}' is not supported by this server; leave it out", param=name, code="unsupported_parameter"
            )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty list", param="messages")
    system: list[str] = []
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise OpenAIError(400, f"messages[{i}] must be an object", param="messages")
        role = message.get("role")
        content = _text(message.get("content"), f"messages[{i}]")
        if role in ("system", "developer"):
            if turns:
                raise OpenAIError(400, f"messages[{i}]: system messages come before the conversation", param="messages")
            system.append(content)
        elif role in ("user", "assistant"):
            turns.append(Turn(role, content))
        else:
            raise OpenAIError(
                400, f"messages[{i}]: role {role!r} is not served (system, user, assistant)", param="messages"
            )
    if not turns or turns[-1].role != "user":
        raise OpenAIError(400, "the last message must be the user's", param="messages")
    conversation = body.get("conversation_id")
    if conversation is not None:
        if not isinstance(conversation, str) or not conversation:
            raise OpenAIError(400, "'conversation_id' must be a conversation's id", param="conversation_id")
        if len(turns) > 1:
            message = "with 'conversation_id', send only the new user message: the server has the conversation's turns"
            raise OpenAIError(400, message, param="messages")
    params: dict[str, Any] = {}
    used: dict[str, str] = {}  # parameter -> the field that set it, for errors
    for key in sorted(body, key=lambda k: k != "max_completion_tokens"):  # it wins over max_tokens
        name = PARAMS.get(key)
        if name is not None and body[key] is not None and name not in params:
            params[name], used[name] = body[key], key
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise OpenAIError(400, f"'stream' must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise OpenAIError(400, "'stream_options' must be an object", param="stream_options")
    extra: dict[str, Any] = {}
    if body.get("request_id") is not None:
        extra["request_id"] = body["request_id"]
    try:
        request = InferRequest(
            prompt=turns[-1].content,
            history=tuple(turns[:-1]),
            system_prompt="\n\n".join(system) or None,
            web_search=body.get("web_search", False),
            model=body.get("model"),  # "<model>:<adapter>" too: the service's routing resolves it
            params=GenerationParams(**params),
            owner=owner,
            **extra,
        )
    except InvalidRequest as exc:
        raise from_toolkit(exc, used) from None
    except TypeError as exc:  # a parameter of the wrong kind
        raise OpenAIError(400, str(exc), param=None) from None
    return request, used


def extras(result: InferResult) -> dict[str, Any]:
    """What the toolkit adds to OpenAI's shapes: the run record's id, the timings, and the sources."""
    out: dict[str, Any] = {"run_record_id": result.run_record.request_id, "timings": to_wire(result.timings)}
    if result.conversation_id is not None:
        out["conversation_id"] = result.conversation_id
    if result.conversation_error is not None:
        out["conversation_error"] = result.conversation_error
    if result.search_status != "off":
        out["sources"] = to_wire(result.sources)
        out["search_status"] = result.search_status
    return out


class OpenAIHandler(BoundedBody):
    def _refuse(self, status: int, message: str, code: str, **extensions: Any) -> None:
        self._error(OpenAIError(status, message, code=code.lower()))

    def _error(self, exc: OpenAIError) -> None:
        if self._finished:
            return
        self.set_status(exc.status)
        for name, value in exc.headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(exc.body()))

    def _admit(self) -> Caller:
        """Key and rate limit, as for GraphQL: the same keys, the same buckets, the same count of wrong keys
        per client address (an address over it is refused whatever key it sends)."""
        presented = ApiKeys.from_authorization(self.request.headers.get("Authorization"))
        address = self.request.remote_ip or ""
        caller = self.gateway.caller(presented, address, self.request.headers.get(SESSION_HEADER))
        try:
            wait = self.failed_keys.wait(address)
            if wait is not None:
                raise too_many_wrong_keys(wait)
            if not caller.authenticated:
                if presented is not None:
                    self.failed_keys.failed(address)
                raise Unauthenticated(presented is not None)
            self.gateway.check_rate(caller.bucket or caller.identity)
        except ToolkitError as exc:
            raise from_toolkit(exc) from None
        return caller


def model_list(service: Any) -> list[dict[str, Any]]:
    """Every model, and each model's adapters as ``<model>:<adapter>`` with its parent, as ``/v1/models``
    lists them."""
    created = int(time.time())
    data = []
    for model in service.models():
        data.append(
            {
                "id": model.id,
                "object": "model",
                "created": created,
                "owned_by": f"llm-toolkit ({model.engine})",
                "parent": None,
                "max_model_len": model.context_length,
            }
        )
        for adapter in service.adapters(model.id) if model.status == "ready" else []:
            data.append(
                {
                    "id": f"{model.id}:{adapter.name}",
                    "object": "model",
                    "created": created,
                    "owned_by": "llm-toolkit (adapter)",
                    "parent": model.id,
                    "root": adapter.path,
                }
            )
    return data


class ModelsHandler(OpenAIHandler):
    """``GET /v1/models``: every model, and each model's adapters as ``<model>:<adapter>`` with its parent."""

    ALLOW = ("GET",)

    def get(self) -> None:
        try:
            self._admit()
        except OpenAIError as exc:
            self._error(exc)
            return
        self.finish({"object": "list", "data": model_list(self.gateway.service)})


class ModelHandler(OpenAIHandler):
    """``GET /v1/models/{model}`` (``client.models.retrieve``): one entry of the list, by its id; 404
    ``model_not_found`` for any other."""

    ALLOW = ("GET",)

    def get(self, model: str) -> None:
        try:
            self._admit()
            found = next((m for m in model_list(self.gateway.service) if m["id"] == model), None)
            if found is None:
                message = f"the model {model!r} does not exist here; GET /v1/models lists the models served"
                raise OpenAIError(404, message, param="model", code="model_not_found")
        except OpenAIError as exc:
            self._error(exc)
            return
        self.finish(found)


class UnknownPath(OpenAIHandler):
    """Any other path under ``/v1``, with any method: 404 in OpenAI's shape, naming what is served."""

    def prepare(self) -> None:
        self._cors()
        message = (
            f"no endpoint {self.request.method} {self.request.path}; this server serves POST /v1/chat/completions, "
            "GET /v1/models and GET /v1/models/{model}"
        )
        self._error(OpenAIError(404, message, code="unknown_url"))


class ChatCompletionsHandler(OpenAIHandler):
    """``POST /v1/chat/completions``, streamed (SSE) or not."""

    def initialize(self, gateway: Any, failed_keys: Any) -> None:
        super().initialize(gateway, failed_keys)
        self._task: asyncio.Task[None] | None = None

    async def post(self) -> None:
        if self._refused_body():
            return
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            message = "send the request as Content-Type: application/json"
            self._error(OpenAIError(415, message, code="unsupported_media_type"))
            return
        try:
            caller = self._admit()
            try:
                body = json.loads(self.body_bytes or b"null")
            except RecursionError:
                raise OpenAIError(400, "the body nests too deeply") from None
            except ValueError:
                raise OpenAIError(400, "the body is not valid JSON") from None
            request, used = to_request(body, caller.identity)
            streaming = bool(body.get("stream"))
            options = body.get("stream_options") or {}
            usage = bool(isinstance(options, Mapping) and options.get("include_usage"))
            label = str(body.get("model") or "")
        except OpenAIError as exc:
            self._error(exc)
            return
        conversation = body.get("conversation_id")  # checked by to_request: continues a kept one
        if streaming:
            run = self._stream(request, label, usage, used, conversation)
        else:
            run = self._complete(request, label, used, conversation)
        self._task = asyncio.ensure_future(run)
        with contextlib.suppress(asyncio.CancelledError):  # the client went away: the generation was cancelled
            await self._task

    def on_connection_close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _complete(
        self, request: InferRequest, label: str, used: dict[str, str], conversation: str | None = None
    ) -> None:
        try:
            result = await self.gateway.service.ainfer(request, conversation=conversation)
        except ToolkitError as exc:
            self._error(from_toolkit(exc, used))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(
            json.dumps(
                {
                    "id": f"chatcmpl-{request.request_id}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": label or result.model,
                    "system_fingerprint": fingerprint(result),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": result.text},
                            "logprobs": None,
                            "finish_reason": FINISH.get(result.finish_reason, "stop"),
                        }
                    ],
                    "usage": usage_of(result),
                    **extras(result),
                }
            )
        )

    async def _stream(
        self,
        request: InferRequest,
        label: str,
        include_usage: bool,
        used: dict[str, str],
        conversation: str | None = None,
    ) -> None:
        events = self.gateway.service.astream(request, conversation=conversation)
        created = int(time.time())
        base = {
            "id": f"chatcmpl-{request.request_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": label or request.model or "",
        }
        started = False
        try:
            async for event in events:
                if not started and isinstance(event, (Token, Done)):
                    started = True  # the request was accepted: from here on, errors go into the stream
                    self.set_header("Content-Type", "text/event-stream; charset=utf-8")
                    self.set_header("Cache-Control", "no-cache")
                    await self._send(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
                if isinstance(event, Token):
                    await self._send(
                        {
                            **base,
                            "choices": [
                                {"index": 0, "delta": {"content": event.delta}, "logprobs": None, "finish_reason": None}
                            ],
                        }
                    )
                elif isinstance(event, Done):
                    result = event.result
                    final = {
                        "index": 0,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": FINISH.get(result.finish_reason, "stop"),
                    }
                    await self._send(
                        {
                            **base,
                            "model": label or result.model,
                            "system_fingerprint": fingerprint(result),
                            "choices": [final],
                            **extras(result),
                        }
                    )
                    if include_usage:
                        await self._send({**base, "choices": [], "usage": usage_of(result)})
            self.write(b"data: [DONE]\n\n")
            self.finish()
        except ToolkitError as exc:
            error = from_toolkit(exc, used)
            if not started:
                self._error(error)
                return
            await self._send(error.body())  # the openai client raises an APIError on an error event
            self.write(b"data: [DONE]\n\n")
            self.finish()
        except StreamClosedError:
            raise ClientGone("the client closed the connection") from None
        finally:
            await events.aclose()  # cancels the generation if it still runs

    async def _send(self, chunk: dict[str, Any]) -> None:
        self.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await self.flush()


def fingerprint(result: InferResult) -> str:
    return result.run_record.engine_version or f"llm-toolkit-{TOOLKIT_VERSION}"


def usage_of(result: InferResult) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }
