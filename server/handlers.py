"""Tornado handlers: GraphQL over HTTP (and the bounded body, CORS and key checks the OpenAI endpoint shares),
and the offline GraphiQL page. graphql-transport-ws is ``server.ws``.

Handlers get their collaborators through ``initialize()``; nothing is global. Statuses and codes come from
the toolkit's error classes (``toolkit.errors``); HTTP's own (a method, a media type, a body too large) from
``http.HTTPStatus``.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import tornado.web
from graphql import ExecutionResult, OperationType

from server.gateway import Gateway, RequestError, bad_request, error, refused
from server.resolvers import Context
from server.security import ApiKeys, FailedKeys
from toolkit.client_wire import SESSION_HEADER
from toolkit.errors import Forbidden, InvalidRequest, RateLimited, ToolkitError, Unauthenticated

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"


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
            self._refuse(Forbidden.status, message, "FORBIDDEN_ORIGIN")
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
        code = "BAD_REQUEST"
        if status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            self.set_header("Allow", ", ".join(self.ALLOW))
            reason = f"{self.request.method} is not served here; use {' or '.join(self.ALLOW)}"
            code = "METHOD_NOT_ALLOWED"
        self._refuse(status_code, reason, code)

    def _cors(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and origin in self.gateway.settings.cors_origins:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Allow-Headers", "Content-Type, Authorization, Accept")
            self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")

    def options(self, *args: Any) -> None:
        self.set_status(HTTPStatus.NO_CONTENT)
        self.finish()

    def _refuse(self, status: int, message: str, code: str, **extensions: Any) -> None:
        raise NotImplementedError

    def _refuse_too_large(self) -> None:
        limit = self.gateway.settings.max_body_bytes
        message = f"the body is over the limit of {limit} bytes (MAX_BODY_BYTES)"
        self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message, "PAYLOAD_TOO_LARGE", limit=limit)

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

    def _refuse_request(self, exc: RequestError) -> None:
        self._fail(exc.status, exc.errors, exc.headers)

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
            self._refuse_request(bad_request("'variables' nest too deeply"))
            return
        except ValueError:
            self._refuse_request(bad_request("'variables' is not valid JSON"))
            return
        await self._handle(args.get("query"), variables, args.get("operationName"), method="GET")

    async def post(self) -> None:
        if self._refused_body():
            return
        content_type = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != JSON:
            message = "send the request as Content-Type: application/json"
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message, "UNSUPPORTED_MEDIA_TYPE")
            return
        try:
            body = json.loads(self.body_bytes or b"null")
        except RecursionError:
            self._refuse_request(bad_request("the body nests too deeply"))
            return
        except ValueError:
            self._refuse_request(bad_request("the body is not valid JSON"))
            return
        if isinstance(body, list):
            message = "batched requests (a JSON array) are not supported: send one operation per request"
            self._refuse_request(bad_request(message))
            return
        if not isinstance(body, dict):
            self._refuse_request(bad_request("the body must be a JSON object with a 'query'"))
            return
        await self._handle(body.get("query"), body.get("variables"), body.get("operationName"), method="POST")

    async def _handle(self, query: Any, variables: Any, operation_name: Any, *, method: str) -> None:
        gateway = self.gateway
        media = negotiate(self.request.headers.get("Accept"))
        if media is None:
            message = f"cannot answer in the accepted media types; accept {GRAPHQL_RESPONSE} or {JSON}"
            self._refuse(HTTPStatus.NOT_ACCEPTABLE, message, "NOT_ACCEPTABLE")
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
                message = f"a {prepared.kind.value} needs POST; GET runs queries only"
                raise RequestError(
                    HTTPStatus.METHOD_NOT_ALLOWED, [error(message, "METHOD_NOT_ALLOWED")], {"Allow": "POST"}
                )
            if prepared.kind == OperationType.SUBSCRIPTION:
                raise bad_request("subscriptions run over the WebSocket at /graphql (graphql-transport-ws)")
        except RequestError as exc:
            if self._finished:
                return
            if isinstance(exc.cause, Unauthenticated) and wait is not None:
                exc = refused(too_many_wrong_keys(wait))  # the key was not even looked at
            elif isinstance(exc.cause, Unauthenticated) and presented is not None:
                self.failed_keys.failed(address)
            # application/json: a well-formed request gets 200 even when its document is in error
            status = HTTPStatus.OK if exc.in_document and media == JSON else exc.status
            self._fail(status, exc.errors, exc.headers)
            return
        if self._finished:
            return
        self.context = Context(
            service=gateway.service, client=self.request.remote_ip or "", admin=caller.admin, owner=caller.identity
        )
        result = await gateway.run(prepared, self.context)
        self.context.on_close.clear()
        status, headers = executed_status(result, media)
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", f"{media}; charset=utf-8")
        self.finish(json.dumps(gateway.format(result)))

    def on_connection_close(self) -> None:
        """The client went away: cancel the generation it was waiting for."""
        if self.context is not None:
            for cleanup in self.context.on_close:
                cleanup()
            self.context.on_close.clear()


def executed_status(result: ExecutionResult, media: str) -> tuple[int, dict[str, str]]:
    """The HTTP status (and headers) of an operation handed to execution: 200, its errors in the body, unless
    nothing ran (``data`` is null) and
    - every error is a toolkit error a retry may cure (loading, busy, over the rate limit): the status its class
      declares, the same as on ``/v1``, with Retry-After the longest wait;
    - the variables did not coerce, so execution never began (no error has a path): a request error, 400
      (``InvalidRequest``'s status) with graphql-response+json, 200 with application/json."""
    errors = result.errors or []
    if result.data is not None or not errors:
        return HTTPStatus.OK, {}
    causes = [e.original_error for e in errors]
    retryable = [c for c in causes if isinstance(c, ToolkitError) and c.retry_after_s is not None]
    if len(retryable) == len(causes):
        longest = max(retryable, key=lambda c: c.retry_after_s or 0)
        return max(c.status for c in retryable), {"Retry-After": str(longest.retry_after_s)}
    if media == GRAPHQL_RESPONSE and all(e.path is None for e in errors):
        return InvalidRequest.status, {}
    return HTTPStatus.OK, {}


class GraphiQLHandler(tornado.web.RequestHandler):
    """The GraphiQL page; its scripts come from npm (``make install``), served from disk: no CDN."""

    def initialize(self, page: Path, assets_ready: bool) -> None:
        self.page = page
        self.assets_ready = assets_ready

    def get(self) -> None:
        if not self.assets_ready:
            self.set_status(HTTPStatus.SERVICE_UNAVAILABLE)
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
