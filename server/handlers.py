"""Tornado handlers: GraphQL over HTTP, graphql-transport-ws, and the offline GraphiQL page.

Handlers get their collaborators through ``initialize()``; nothing is global.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import tornado.web
import tornado.websocket
from graphql import GraphQLError, OperationType

from server.gateway import Caller, Gateway, RequestError, error, refused
from server.resolvers import Context
from server.security import ApiKeys, FailedKeys
from toolkit.client_wire import SESSION_HEADER
from toolkit.errors import RateLimited, ToolkitError

log = logging.getLogger("server")

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
PROTOCOL = "graphql-transport-ws"


def negotiate(accept: str | None) -> str | None:
    """The response media type for an Accept header, or None when we can offer none of them."""
    if not accept or not accept.strip():
        return JSON  # legacy clients send nothing: the draft says application/json
    best: tuple[float, int, str] | None = None
    for position, item in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in item.split(";")]
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        offer = {GRAPHQL_RESPONSE: GRAPHQL_RESPONSE, JSON: JSON, "application/*": GRAPHQL_RESPONSE, "*/*": JSON}.get(
            media.lower()
        )
        if offer and q > 0:
            rank = (q, -position, offer)
            if best is None or rank[:2] > best[:2]:
                best = rank
    return best[2] if best else None


# A body over MAX_BODY_BYTES is read and thrown away up to this bound, then answered 413, so that
# a client still sending it reads the answer instead of a reset connection. Beyond it: 413 at once.
DISCARD_BODY_BYTES = 16 << 20


@tornado.web.stream_request_body
class BoundedBody(tornado.web.RequestHandler):
    """A handler whose request body is read up to MAX_BODY_BYTES, with CORS; a body over the limit is
    read and thrown away (up to DISCARD_BODY_BYTES), then answered 413 by ``_refused_body``.

    Subclasses answer errors in their own shape: ``_refuse(status, message, code)``.
    """

    def initialize(self, gateway: Gateway, failed_keys: FailedKeys) -> None:
        self.gateway = gateway
        self.failed_keys = failed_keys
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False

    def prepare(self) -> None:
        self._cors()
        if self.request.method == "POST" and not self._origin_allowed():
            origin = self.request.headers.get("Origin")
            message = f"requests from the web page at {origin} are not allowed (add it to CORS_ORIGINS)"
            self._refuse(403, message, "FORBIDDEN_ORIGIN")
            return
        limit = self.gateway.settings.max_body_bytes
        discard = max(DISCARD_BODY_BYTES, limit + 1)
        length = self.request.headers.get("Content-Length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > discard:
            self._refuse_too_large()  # not worth reading: the connection closes after the answer
            return
        self._too_large = declared is not None and declared > limit
        # Tornado's own cap (a bare 400 and a reset) lies well beyond the discard bound: a chunked body
        # that runs past the bound is answered 413 from data_received, and the rest is thrown away
        self.request.connection.set_max_body_size(4 * discard)  # type: ignore[union-attr]

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return  # answered already: read and thrown away
        self._size += len(chunk)
        if self._size > max(DISCARD_BODY_BYTES, self.gateway.settings.max_body_bytes + 1):
            self._refuse_too_large()  # not worth reading on: answered now, the connection closes after
            return
        if self._too_large:
            return  # read and thrown away, answered when the body ends
        if self._size > self.gateway.settings.max_body_bytes:
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    @property
    def body_bytes(self) -> bytes:
        return b"".join(self._chunks)

    def _origin_allowed(self) -> bool:
        """No ``Origin`` (not a browser), this server's own page, or one of CORS_ORIGINS: the rule for
        GraphQL and the OpenAI endpoint alike, and for the WebSocket's handshake."""
        return origin_allowed(self.request, self.gateway.settings.cors_origins)

    ALLOW: tuple[str, ...] = ("POST",)  # the methods served, for a 405's Allow header

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (a method not served, a malformed request) in this endpoint's error shape."""
        reason = self._reason or "request refused"
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.ALLOW))
            reason = f"{self.request.method} is not served here; use {' or '.join(self.ALLOW)}"
        self._refuse(status_code, reason, "METHOD_NOT_ALLOWED" if status_code == 405 else "BAD_REQUEST")

    def _cors(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and origin in self.gateway.settings.cors_origins:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization, Accept")
            self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")

    def options(self, *args: Any) -> None:
        self.set_status(204)
        self.finish()

    def _refuse(self, status: int, message: str, code: str, **extensions: Any) -> None:
        raise NotImplementedError

    def _refuse_too_large(self) -> None:
        limit = self.gateway.settings.max_body_bytes
        message = f"the body is over the limit of {limit} bytes (MAX_BODY_BYTES)"
        self._refuse(413, message, "PAYLOAD_TOO_LARGE", limit=limit)

    def _refused_body(self) -> bool:
        """Answer 413 for a body that was over the limit (and has been read); True if answered."""
        if self._finished:
            return True
        if self._too_large:
            self._refuse_too_large()
            return True
        return False


def origin_allowed(request: Any, allowed: tuple[str, ...]) -> bool:
    """The ``Origin`` may be this server's own: its ``Host`` was checked before routing (``AllowedHosts``),
    so a page on a rebinding name never gets this far."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin in allowed or urlparse(origin).netloc == request.headers.get("Host", "")


def too_many_wrong_keys(wait_s: int) -> RateLimited:
    """The refusal of a client address that sent too many wrong API keys (``FailedKeys``): RATE_LIMITED, 429,
    with the seconds to wait."""
    exc = RateLimited(wait_s)
    exc.message = f"too many wrong API keys from this address; retry in {wait_s} s"
    return exc


class GraphQLHandler(BoundedBody):
    """``/graphql``: POST (any operation) and GET (queries only), per the GraphQL-over-HTTP draft."""

    ALLOW = ("GET", "POST")

    def initialize(self, gateway: Gateway, failed_keys: FailedKeys) -> None:
        super().initialize(gateway, failed_keys)
        self.context: Context | None = None

    def _refuse(self, status: int, message: str, code: str, **extensions: Any) -> None:
        self._fail(status, [error(message, code, **extensions)])

    def _fail(self, status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
        media = negotiate(self.request.headers.get("Accept")) or JSON
        self.set_status(status)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.set_header("Content-Type", f"{media}; charset=utf-8")
        self.finish(json.dumps({"errors": errors}))

    async def get(self) -> None:
        if self._refused_body():
            return
        args = {
            k: self.get_query_argument(k)
            for k in ("query", "variables", "operationName", "extensions")
            if self.get_query_argument(k, None) is not None
        }
        try:
            variables = json.loads(args["variables"]) if "variables" in args else None
        except RecursionError:
            self._fail(400, [error("'variables' nest too deeply", "BAD_REQUEST")])
            return
        except ValueError:
            self._fail(400, [error("'variables' is not valid JSON", "BAD_REQUEST")])
            return
        await self._handle(args.get("query"), variables, args.get("operationName"), method="GET")

    async def post(self) -> None:
        if self._refused_body():
            return
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != JSON:
            self._fail(415, [error("send the request as Content-Type: application/json", "UNSUPPORTED_MEDIA_TYPE")])
            return
        try:
            body = json.loads(self.body_bytes or b"null")
        except RecursionError:
            self._fail(400, [error("the body nests too deeply", "BAD_REQUEST")])
            return
        except ValueError:
            self._fail(400, [error("the body is not valid JSON", "BAD_REQUEST")])
            return
        if isinstance(body, list):
            self._fail(
                400,
                [
                    error(
                        "batched requests (a JSON array) are not supported: send one operation per request",
                        "BAD_REQUEST",
                    )
                ],
            )
            return
        if not isinstance(body, dict):
            self._fail(400, [error("the body must be a JSON object with a 'query'", "BAD_REQUEST")])
            return
        await self._handle(body.get("query"), body.get("variables"), body.get("operationName"), method="POST")

    async def _handle(self, query: Any, variables: Any, operation_name: Any, *, method: str) -> None:
        gateway = self.gateway
        media = negotiate(self.request.headers.get("Accept"))
        if media is None:
            self._fail(
                406,
                [
                    error(
                        f"cannot answer in the accepted media types; accept {GRAPHQL_RESPONSE} or {JSON}",
                        "NOT_ACCEPTABLE",
                    )
                ],
            )
            return
        presented = ApiKeys.from_authorization(self.request.headers.get("Authorization"))
        address = self.request.remote_ip or ""
        wait = self.failed_keys.wait(address)  # None unless this address sent too many wrong keys
        # such an address is taken for one without a key (its key is not looked at): health still answers
        session = self.request.headers.get(SESSION_HEADER)
        caller = gateway.caller(presented if wait is None else None, address, session)
        try:
            prepared = await gateway.admit(query, variables, operation_name, caller, presented)
            if method == "GET" and prepared.kind != OperationType.QUERY:
                self.set_header("Allow", "POST")
                raise RequestError(
                    405, [error(f"a {prepared.kind.value} needs POST; GET runs queries only", "METHOD_NOT_ALLOWED")]
                )
            if prepared.kind == OperationType.SUBSCRIPTION:
                raise RequestError(
                    400,
                    [error("subscriptions run over the WebSocket at /graphql (graphql-transport-ws)", "BAD_REQUEST")],
                )
        except RequestError as exc:
            if self._finished:
                return
            if exc.status == 401 and wait is not None:
                exc = refused(too_many_wrong_keys(wait))  # the key was not even looked at
            elif exc.status == 401 and presented is not None:
                self.failed_keys.failed(address)
            status = exc.status
            if status == 400 and media == JSON and _is_graphql_error(exc):
                status = 200  # application/json: a well-formed request gets 200 even with GraphQL errors
            self._fail(status, exc.errors, exc.headers)
            return
        if self._finished:
            return
        self.context = Context(
            service=gateway.service, client=self.request.remote_ip or "", admin=caller.admin, owner=caller.identity
        )
        body = await gateway.execute(prepared, self.context)
        self.context.on_close.clear()
        status = 200
        errors = body.get("errors", [])
        retry = [e.get("extensions", {}).get("retryAfter") for e in errors]
        if body.get("data") is None and retry and None not in retry:  # nothing ran, and all of it may later
            status = 503
            self.set_header("Retry-After", str(max(retry)))
        elif body.get("data") is None and errors and media == GRAPHQL_RESPONSE and all("path" not in e for e in errors):
            status = 400  # a request error (variables that do not coerce): nothing was executed
        self.set_status(status)
        self.set_header("Content-Type", f"{media}; charset=utf-8")
        self.finish(json.dumps(body))

    def on_connection_close(self) -> None:
        """The client went away: cancel the generation it was waiting for."""
        if self.context is not None:
            for cleanup in self.context.on_close:
                cleanup()
            self.context.on_close.clear()


def _is_graphql_error(exc: RequestError) -> bool:
    codes = {e.get("extensions", {}).get("code") for e in exc.errors}
    return bool(codes & {"GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED", "BAD_USER_INPUT"})


class GraphQLWebSocket(tornado.websocket.WebSocketHandler):
    """``/graphql`` over WebSocket: the graphql-transport-ws protocol (graphql-ws PROTOCOL.md)."""

    def initialize(self, gateway: Gateway, failed_keys: FailedKeys) -> None:
        self.gateway = gateway
        self.failed_keys = failed_keys
        self.acknowledged = False
        self.init_received = False
        self.caller: Caller | None = None  # set by connection_init
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self.contexts: dict[str, Context] = {}
        self._init_timer: asyncio.TimerHandle | None = None

    def check_origin(self, origin: str) -> bool:
        return origin_allowed(self.request, self.gateway.settings.cors_origins)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """The handshake; refused with 429 for an address that sent too many wrong keys (every operation over
        the socket needs one when keys are on)."""
        wait = self.failed_keys.wait(self.request.remote_ip or "")
        if wait is not None:
            refusal = refused(too_many_wrong_keys(wait))
            self.set_status(refusal.status)
            for name, value in refusal.headers.items():
                self.set_header(name, value)
            self.set_header("Content-Type", f"{JSON}; charset=utf-8")
            self.finish(json.dumps({"errors": refusal.errors}))
            return
        await super().get(*args, **kwargs)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return PROTOCOL if PROTOCOL in subprotocols else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        if self.selected_subprotocol != PROTOCOL:
            self.close(4406, "Subprotocol not acceptable: use graphql-transport-ws")
            return
        loop = asyncio.get_running_loop()
        self._init_timer = loop.call_later(self.gateway.settings.ws_init_timeout_s, self._init_timeout)

    def _init_timeout(self) -> None:
        if not self.acknowledged:
            self.close(4408, "Connection initialisation timeout")

    def _send(self, message: dict[str, Any]) -> Any:
        try:
            return self.write_message(json.dumps(message))
        except tornado.websocket.WebSocketClosedError:
            return None

    def on_message(self, message: str | bytes) -> None:
        # Returns at once: each subscription runs in its own task, so the next frame can be read.
        try:
            msg = json.loads(message)
        except RecursionError:
            self.close(4400, "Invalid message: nested too deeply")
            return
        except ValueError:
            self.close(4400, "Invalid message: not JSON")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            self.close(4400, "Invalid message: no type")
            return
        kind = msg["type"]
        if kind == "connection_init":
            self._connection_init(msg.get("payload"))
        elif kind == "ping":
            self._send({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "subscribe":
            self._subscribe(msg)
        elif kind == "complete":
            task = self.subscriptions.pop(str(msg.get("id")), None)
            if task is not None:
                task.cancel()
        else:
            self.close(4400, f"Invalid message type {kind!r}")

    def _connection_init(self, payload: Any) -> None:
        if self.init_received:
            self.close(4429, "Too many initialisation requests")
            return
        self.init_received = True
        if payload is not None and not isinstance(payload, dict):
            self.close(4400, "Invalid message: the connection_init payload must be an object")
            return
        presented = _key_from_payload(payload or {}) or self.gateway.keys.from_authorization(
            self.request.headers.get("Authorization")
        )
        address = self.request.remote_ip or ""
        wait = self.failed_keys.wait(address)
        if wait is not None:  # sockets opened before the address was refused: the key is not looked at
            self.close(4429, f"Too many wrong API keys from this address: retry in {wait} s")
            return
        if not self.gateway.keys.check(presented):
            if presented is not None:
                self.failed_keys.failed(address)
            self.close(4403, "Forbidden")
            return
        self.caller = self.gateway.caller(presented, address, self.request.headers.get(SESSION_HEADER))
        self.acknowledged = True
        if self._init_timer:
            self._init_timer.cancel()
        self._send({"type": "connection_ack"})

    def _subscribe(self, msg: dict[str, Any]) -> None:
        if not self.acknowledged:
            self.close(4401, "Unauthorized")
            return
        sub_id, payload = msg.get("id"), msg.get("payload")
        if not isinstance(sub_id, str) or not sub_id or not isinstance(payload, dict):
            self.close(4400, "Invalid message: subscribe needs an id and a payload")
            return
        if sub_id in self.subscriptions:
            self.close(4409, f"Subscriber for {sub_id} already exists")
            return
        self.subscriptions[sub_id] = asyncio.create_task(self._run(sub_id, payload))

    async def _run(self, sub_id: str, payload: dict[str, Any]) -> None:
        gateway = self.gateway
        caller = self.caller
        assert caller is not None  # subscribe is refused before connection_ack
        context = Context(
            service=gateway.service, client=self.request.remote_ip or "", admin=caller.admin, owner=caller.identity
        )
        stream = None
        try:
            try:
                query, variables = payload.get("query"), payload.get("variables")
                prepared = await gateway.admit(query, variables, payload.get("operationName"), caller)
            except RequestError as exc:
                self._send({"id": sub_id, "type": "error", "payload": exc.errors})
                return
            if prepared.kind == OperationType.SUBSCRIPTION:
                outcome = await gateway.subscribe(prepared, context)
                if isinstance(outcome, dict):
                    await self._next(sub_id, outcome)
                else:
                    stream = outcome
                    async for item in stream:
                        await self._next(sub_id, item)
            else:
                await self._next(sub_id, await gateway.execute(prepared, context))
            context.on_close.clear()  # finished: nothing left to cancel (the id may be reused)
            self._send({"id": sub_id, "type": "complete"})
        except asyncio.CancelledError:
            pass  # the client completed it, or went away: the generation is cancelled below
        except ToolkitError as exc:  # raised while streaming (overloaded, prompt too long, model error)
            body = {"data": None, "errors": [gateway.format_error(GraphQLError(exc.message, original_error=exc))]}
            await self._next(sub_id, body)
            self._send({"id": sub_id, "type": "complete"})
        except Exception:
            log.exception("subscription %s failed", sub_id)
            self._send(
                {"id": sub_id, "type": "error", "payload": [error("internal error; it has been logged", "INTERNAL")]}
            )
        finally:
            if stream is not None:
                await stream.aclose()  # type: ignore[attr-defined]
            for cleanup in context.on_close:
                cleanup()
            if self.subscriptions.get(sub_id) is asyncio.current_task():
                del self.subscriptions[sub_id]

    async def _next(self, sub_id: str, body: dict[str, Any]) -> None:
        future = self._send({"id": sub_id, "type": "next", "payload": body})
        if future is not None:
            await future  # backpressure: a slow client slows its own stream, not the server

    def on_close(self) -> None:
        if self._init_timer:
            self._init_timer.cancel()
        for task in self.subscriptions.values():
            task.cancel()
        self.subscriptions.clear()


def _key_from_payload(payload: dict[str, Any]) -> str | None:
    """The key in a connection_init payload: GraphiQL sends its headers editor's content as the payload."""
    for name in ("Authorization", "authorization"):
        if isinstance(payload.get(name), str):
            return ApiKeys.from_authorization(payload[name])
    headers = payload.get("headers")
    if isinstance(headers, dict):
        for name in ("Authorization", "authorization"):
            if isinstance(headers.get(name), str):
                return ApiKeys.from_authorization(headers[name])
    for name in ("apiKey", "api_key"):
        if isinstance(payload.get(name), str):
            return str(payload[name])
    return None


class GraphiQLHandler(tornado.web.RequestHandler):
    """The GraphiQL page; its scripts come from npm (``make install``), served from disk: no CDN."""

    def initialize(self, page: Path, assets_ready: bool) -> None:
        self.page = page
        self.assets_ready = assets_ready

    def get(self) -> None:
        if not self.assets_ready:
            self.set_status(503)
            self.finish("GraphiQL's files are not installed: run make install (it runs npm ci in server/)")
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self'; "
            # GraphiQL's CSS embeds its fonts as data: URLs
            "connect-src 'self' ws: wss:; img-src 'self' data:; font-src 'self' data:",
        )
        self.finish(self.page.read_bytes())
