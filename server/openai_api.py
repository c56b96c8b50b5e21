"""The OpenAI chat-completions API on the same server and port: ``/v1/chat/completions``, ``/v1/models`` and
``/v1/models/{model}``,
calling the same ``InferenceService`` as GraphQL (no second path to the model), so the ``openai``
clients, LangChain, LlamaIndex, Open WebUI and editor plugins use the toolkit's models, adapters
and web-search RAG, and one toolkit server can be the remote engine of another.

What a request and a response hold, and the error body, are ``server.openai_protocol``; these are the
Tornado handlers.

- Errors in OpenAI's shape with the status each toolkit error's class declares, which OpenAI's client maps to
  its exceptions: 400 (``param``), 401, 404 (an unknown model, ``model_not_found``), 429 (``Retry-After``),
  503 (overloaded, engine unavailable, loading: with ``Retry-After`` wherever the error says a retry may
  succeed); HTTP's own as HTTP names them: 404 for a path not served (``unknown_url``), 405, 413, 415.
- The same API keys (``Authorization: Bearer``), rate-limit buckets, body limit and CORS as GraphQL;
  a closed connection cancels the generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from tornado.iostream import StreamClosedError

from server.gateway import Caller
from server.handlers import JSON, BoundedBody, too_many_wrong_keys
from server.openai_protocol import (
    FINISH,
    error_body,
    extras,
    fingerprint,
    model_list,
    parameters,
    to_request,
    toolkit_error_body,
    usage_of,
)
from server.security import ApiKeys
from toolkit.client_wire import SESSION_HEADER
from toolkit.errors import ClientGone, ToolkitError, Unauthenticated, UnknownModel
from toolkit.params import InferRequest
from toolkit.results import Done, Token


class OpenAIHandler(BoundedBody):
    def _refuse(self, status: int, message: str, code: str, **extensions: Any) -> None:
        """HTTP's own refusals (a method, a media type, a body too large), in OpenAI's shape."""
        self._answer(status, error_body(status, message, code.lower()))

    def _fail(self, exc: ToolkitError, used: Mapping[str, str] | None = None) -> None:
        """A toolkit error: the status, code and retry its class declares."""
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else {}
        if isinstance(exc, Unauthenticated):
            headers["WWW-Authenticate"] = 'Bearer realm="openai"'
        self._answer(exc.status, toolkit_error_body(exc, used), headers)

    def _answer(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
        if self._finished:
            return
        self.set_status(status)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.set_header("Content-Type", JSON)
        self.finish(json.dumps(body))

    def _admit(self) -> Caller:
        """Key and rate limit, as for GraphQL: the same keys, the same buckets, the same count of wrong keys
        per client address (an address over it is refused whatever key it sends)."""
        presented = ApiKeys.from_authorization(self.request.headers.get("Authorization"))
        address = self.request.remote_ip or ""
        caller = self.gateway.caller(presented, address, self.request.headers.get(SESSION_HEADER))
        wait = self.failed_keys.wait(address)
        if wait is not None:
            raise too_many_wrong_keys(wait)
        if not caller.authenticated:
            if presented is not None:
                self.failed_keys.failed(address)
            raise Unauthenticated(presented is not None)
        self.gateway.check_rate(caller.bucket or caller.identity)
        return caller


class ModelsHandler(OpenAIHandler):
    """``GET /v1/models``: every model, and each model's adapters as ``<model>:<adapter>`` with its parent."""

    ALLOW = ("GET",)

    def get(self) -> None:
        try:
            self._admit()
        except ToolkitError as exc:
            self._fail(exc)
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
                raise UnknownModel(f"the model {model!r} does not exist here; GET /v1/models lists the models served")
        except ToolkitError as exc:
            self._fail(exc)
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
        self._refuse(HTTPStatus.NOT_FOUND, message, "unknown_url")


class ChatCompletionsHandler(OpenAIHandler):
    """``POST /v1/chat/completions``, streamed (SSE) or not."""

    def initialize(self, gateway: Any, failed_keys: Any) -> None:
        super().initialize(gateway, failed_keys)
        self._task: asyncio.Task[None] | None = None

    async def post(self) -> None:
        if self._refused_body():
            return
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != JSON:
            message = "send the request as Content-Type: application/json"
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message, "unsupported_media_type")
            return
        try:
            caller = self._admit()
        except ToolkitError as exc:
            self._fail(exc)
            return
        try:
            body = json.loads(self.body_bytes or b"null")
        except RecursionError:
            self._refuse(HTTPStatus.BAD_REQUEST, "the body nests too deeply", "bad_request")
            return
        except ValueError:
            self._refuse(HTTPStatus.BAD_REQUEST, "the body is not valid JSON", "bad_request")
            return
        if not isinstance(body, Mapping):
            self._refuse(HTTPStatus.BAD_REQUEST, "the body must be a JSON object", "bad_request")
            return
        used = parameters(body)
        try:  # a full queue refuses now, before the messages (a long history) are read into a request
            model = body.get("model")
            self.gateway.service.check_room(model if isinstance(model, str) else None)
            request = to_request(body, caller.identity)
        except ToolkitError as exc:
            self._fail(exc, used)
            return
        options = body.get("stream_options") or {}
        usage = bool(options.get("include_usage"))
        label = str(body.get("model") or "")
        conversation = body.get("conversation_id")  # checked by to_request: continues a kept one
        if body.get("stream"):
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
            self._fail(exc, used)
            return
        self.set_header("Content-Type", JSON)
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
            if not started:
                self._fail(exc, used)
                return
            await self._send(toolkit_error_body(exc, used))  # the openai client raises an APIError on an error event
            self.write(b"data: [DONE]\n\n")
            self.finish()
        except StreamClosedError:
            raise ClientGone("the client closed the connection") from None
        finally:
            await events.aclose()  # cancels the generation if it still runs

    async def _send(self, chunk: dict[str, Any]) -> None:
        self.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await self.flush()
