"""The OpenAI chat-completions API on the same server and port: ``/v1/chat/completions`` and ``/v1/models``,
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
  404 (unknown model), 413, 429 (``Retry-After``), 503 (overloaded, engine unavailable, loading: with
  ``Retry-After`` wherever the error says a retry may succeed).
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

from server.gateway import Caller, RequestError
from server.handlers import BoundedBody
from server.security import ApiKeys
from toolkit import __version__ as TOOLKIT_VERSION
from toolkit.errors import ClientGone, InvalidRequest, ModelNotReady, ToolkitError
from toolkit.params import GenerationParams, InferRequest, Turn
from toolkit.results import Done, InferResult, Token
from toolkit.wire import to_wire

FINISH = {"stop": "stop", "length": "length", "timeout": "length", "cancelled": "stop", "repetition": "stop"}
PARAMS = {  # OpenAI field -> GenerationParams field
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
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


def param_name(field: str, max_tokens_name: str = "max_tokens") -> str:
    """The OpenAI request field a toolkit error's field stands for."""
    if field == "params.max_new_tokens":
        return max_tokens_name
    if field.startswith("params."):
        return field.removeprefix("params.")
    if field in ("prompt", "system_prompt") or field.startswith("history"):
        return "messages"
    if field == "adapter":
        return "model"
    return field


def from_toolkit(exc: ToolkitError, max_tokens_name: str = "max_tokens") -> OpenAIError:
    if isinstance(exc, InvalidRequest):
        param = param_name(exc.field, max_tokens_name)
        if param == "model" and "unknown" in exc.message:
            return OpenAIError(404, exc.message, param="model", code="model_not_found")
        return OpenAIError(400, exc.message, param=param, code=exc.code.lower())
    if exc.retry_after_s is not None:
        return OpenAIError(503, exc.message, code=exc.code.lower(), headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, ModelNotReady):  # failed to load, or stopped: unavailable, and waiting will not change it
        return OpenAIError(503, exc.message, code=exc.code.lower())
    if exc.code == "TIMEOUT":
        return OpenAIError(504, exc.message, code="timeout")
    return OpenAIError(500, exc.message, code=exc.code.lower())


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


def to_request(body: Any, owner: str, models: list[str]) -> tuple[InferRequest, str]:
    """The ``InferRequest`` a chat-completions body stands for, and the ``max_tokens`` field it used."""
    if not isinstance(body, Mapping):
        raise OpenAIError(400, "the body must be a JSON object", param=None)
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
    params: dict[str, Any] = {}
    for name, field in PARAMS.items():
        if body.get(name) is not None:
            params[field] = body[name]
    max_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if body.get(max_name) is not None:
        params["max_new_tokens"] = body[max_name]
    if isinstance(params.get("stop"), str):
        params["stop"] = (params["stop"],)
    model, adapter = body.get("model"), None
    if isinstance(model, str) and model not in models and ":" in model:
        base, _, name = model.rpartition(":")
        if base in models:
            model, adapter = base, name
    extra: dict[str, Any] = {}
    if isinstance(body.get("request_id"), str) and body["request_id"]:
        extra["request_id"] = body["request_id"]
    try:
        request = InferRequest(
            prompt=turns[-1].content,
            history=tuple(turns[:-1]),
            system_prompt="\n\n".join(system) or None,
            web_search=body.get("web_search", False),
            model=model,
            adapter=adapter,
            params=GenerationParams(**params),
            owner=owner,
            **extra,
        )
    except InvalidRequest as exc:
        raise from_toolkit(exc, max_name) from None
    except TypeError as exc:  # a parameter of the wrong kind
        raise OpenAIError(400, str(exc), param=None) from None
    return request, max_name


def extras(result: InferResult) -> dict[str, Any]:
    """What the toolkit adds to OpenAI's shapes: the run record's id, the timings, and the sources."""
    out: dict[str, Any] = {"run_record_id": result.run_record.request_id, "timings": to_wire(result.timings)}
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
        """Key and rate limit, as for GraphQL: the same keys, the same buckets."""
        presented = ApiKeys.from_authorization(self.request.headers.get("Authorization"))
        caller = self.gateway.caller(presented, self.request.remote_ip or "")
        if not caller.authenticated:
            message = (
                "the API key is not valid" if presented else "a valid API key is required: Authorization: Bearer <key>"
            )
            raise OpenAIError(
                401, message, code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="openai"'}
            )
        try:
            self.gateway.check_rate(caller.identity)
        except RequestError as exc:
            raise OpenAIError(429, exc.errors[0]["message"], code="rate_limit_exceeded", headers=exc.headers) from None
        return caller


class ModelsHandler(OpenAIHandler):
    """``GET /v1/models``: every model, and each model's adapters as ``<model>:<adapter>`` with its parent."""

    def get(self) -> None:
        try:
            self._admit()
        except OpenAIError as exc:
            self._error(exc)
            return
        service = self.gateway.service
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
        self.finish({"object": "list", "data": data})


class ChatCompletionsHandler(OpenAIHandler):
    """``POST /v1/chat/completions``, streamed (SSE) or not."""

    def initialize(self, gateway: Any) -> None:
        super().initialize(gateway)
        self._task: asyncio.Task[None] | None = None

    async def post(self) -> None:
        if self._refused_body():
            return
        try:
            caller = self._admit()
            try:
                body = json.loads(self.body_bytes or b"null")
            except RecursionError:
                raise OpenAIError(400, "the body nests too deeply") from None
            except ValueError:
                raise OpenAIError(400, "the body is not valid JSON") from None
            service = self.gateway.service
            request, max_name = to_request(body, caller.identity, [m.id for m in service.models()])
            streaming = bool(body.get("stream"))
            options = body.get("stream_options") or {}
            usage = bool(isinstance(options, Mapping) and options.get("include_usage"))
            label = str(body.get("model") or "")
        except OpenAIError as exc:
            self._error(exc)
            return
        run = self._stream(request, label, usage, max_name) if streaming else self._complete(request, label, max_name)
        self._task = asyncio.ensure_future(run)
        with contextlib.suppress(asyncio.CancelledError):  # the client went away: the generation was cancelled
            await self._task

    def on_connection_close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _complete(self, request: InferRequest, label: str, max_name: str) -> None:
        try:
            result = await self.gateway.service.ainfer(request)
        except ToolkitError as exc:
            self._error(from_toolkit(exc, max_name))
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

    async def _stream(self, request: InferRequest, label: str, include_usage: bool, max_name: str) -> None:
        events = self.gateway.service.astream(request)
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
            error = from_toolkit(exc, max_name)
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
