"""``make_app(service, settings)``: the Tornado application, with every collaborator passed in;
``make_http_server(app)``: the HTTP server for it, with the header bounds the application answers within.

Every request's ``Host`` is checked first (``AllowedHosts``: the guard against DNS rebinding), on every
route and on the WebSocket's handshake alike."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPServerRequest
from tornado.log import access_log
from tornado.routing import PathMatches, Rule

from server.config import ServerSettings
from server.gateway import Gateway
from server.handlers import GraphiQLHandler, GraphQLHandler
from server.openai_api import ChatCompletionsHandler, ModelHandler, ModelsHandler, UnknownPath
from server.openai_protocol import error_body
from server.security import AllowedHosts, FailedKeys
from server.ws import GraphQLWebSocket
from toolkit.errors import Forbidden
from toolkit.settings import Settings

STATIC = Path(__file__).with_name("static")
MAX_URL_BYTES = 64 * 1024  # a longer URL gets 414
MAX_HEADER_BYTES = 1 << 20  # request line and headers read before answering; beyond it the connection closes
NODE_MODULES = Path(__file__).with_name("node_modules")
ASSETS = {  # URL name -> file installed by npm (server/package.json) or written by us
    "graphiql.min.js": NODE_MODULES / "graphiql" / "graphiql.min.js",
    "graphiql.min.css": NODE_MODULES / "graphiql" / "graphiql.min.css",
    "react.production.min.js": NODE_MODULES / "react" / "umd" / "react.production.min.js",
    "react-dom.production.min.js": NODE_MODULES / "react-dom" / "umd" / "react-dom.production.min.js",
    "init.js": STATIC / "init.js",
}


class AssetHandler(tornado.web.StaticFileHandler):
    """Serves only the files named in ``ASSETS``."""

    def initialize(self, path: str, default_filename: str | None = None, allowed_symlink_directory: Any = None) -> None:
        super().initialize(path="/")

    @classmethod
    def get_absolute_path(cls, root: str, path: str) -> str:
        target = ASSETS.get(path)
        if target is None:
            raise tornado.web.HTTPError(HTTPStatus.NOT_FOUND)
        return str(target)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if not Path(absolute_path).is_file():
            raise tornado.web.HTTPError(HTTPStatus.NOT_FOUND)
        return absolute_path


class WebSocketUpgrade(PathMatches):
    """Matches the path only for a WebSocket upgrade, so ``/graphql`` serves both transports."""

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None
        return super().match(request)


@tornado.web.stream_request_body  # answered on the headers: a body is never read
class Refusal(tornado.web.RequestHandler):
    """A request refused before routing, in the shape of the endpoint the URL names: OpenAI's under /v1/,
    GraphQL's elsewhere (a WebSocket handshake included)."""

    STATUS: int = HTTPStatus.BAD_REQUEST
    CODE = "BAD_REQUEST"

    def message(self) -> str:
        raise NotImplementedError

    def prepare(self) -> None:
        self.set_status(self.STATUS)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        message = self.message()
        path = self.request.path or ""
        if path == "/v1" or path.startswith("/v1/"):
            self.finish(json.dumps(error_body(self.STATUS, message, self.CODE.lower())))
        else:
            self.finish(json.dumps({"errors": [{"message": message, "extensions": {"code": self.CODE}}]}))

    def data_received(self, chunk: bytes) -> None:
        pass  # answered already


class URITooLong(Refusal):
    """414: the URL is over MAX_URL_BYTES."""

    STATUS = HTTPStatus.REQUEST_URI_TOO_LONG
    CODE = "URI_TOO_LONG"

    def message(self) -> str:
        return f"the URL is over the limit of {MAX_URL_BYTES} bytes; send the request as a POST body"


class ForbiddenHost(Refusal):
    """403: the request's ``Host`` is not a name this server answers to (``AllowedHosts``)."""

    STATUS = Forbidden.status
    CODE = "FORBIDDEN_HOST"

    def message(self) -> str:
        return AllowedHosts.refusal(self.request.headers.get("Host", ""))


class Application(tornado.web.Application):
    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> tornado.web._HandlerDelegate:
        hosts: AllowedHosts = self.settings["allowed_hosts"]
        if not hosts.allows(request.headers.get("Host")):
            return self.get_handler_delegate(request, ForbiddenHost)
        if len(request.uri or "") > MAX_URL_BYTES:
            return self.get_handler_delegate(request, URITooLong)
        return super().find_handler(request, **kwargs)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log: refusals and failures as warnings and errors; answered requests at DEBUG only (a
    dashboard tab polls health every few seconds: at INFO those lines drown what matters)."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    if access_log.isEnabledFor(level):
        request = handler.request
        millis = 1000.0 * request.request_time()
        access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, request.uri, request.remote_ip, millis)


def make_http_server(app: tornado.web.Application) -> HTTPServer:
    """Reads up to MAX_HEADER_BYTES of request line and headers, so that an over-long URL gets its 414."""
    return HTTPServer(app, max_header_size=MAX_HEADER_BYTES)


def make_app(
    service: Any, settings: ServerSettings | None = None, allowed_hosts: Iterable[str] | None = None
) -> tornado.web.Application:
    """``allowed_hosts``: ALLOWED_HOSTS; by default the service's (``Settings.allowed_hosts``)."""
    settings = settings or ServerSettings()
    if allowed_hosts is None:
        service_settings = getattr(service, "settings", None)
        allowed_hosts = service_settings.allowed_hosts if isinstance(service_settings, Settings) else ()
    gateway = Gateway(service, settings)
    api = {"gateway": gateway, "failed_keys": FailedKeys()}  # wrong keys count alike on every endpoint
    assets_ready = all(p.is_file() for p in ASSETS.values())
    return Application(
        [
            Rule(WebSocketUpgrade(r"/graphql"), GraphQLWebSocket, api),
            (r"/graphql", GraphQLHandler, api),
            (r"/v1/chat/completions", ChatCompletionsHandler, api),
            (r"/v1/models", ModelsHandler, api),
            (r"/v1/models/(.+)", ModelHandler, api),
            (r"/v1(/.*)?", UnknownPath, api),  # anything else under /v1: a 404 in OpenAI's shape
            (r"/graphiql/?", GraphiQLHandler, {"page": STATIC / "graphiql.html", "assets_ready": assets_ready}),
            (r"/graphiql/assets/(.*)", AssetHandler, {"path": "/"}),
            (r"/", tornado.web.RedirectHandler, {"url": "/graphiql"}),
        ],
        websocket_max_message_size=settings.max_ws_message_bytes,
        websocket_ping_interval=20,
        gateway=gateway,
        allowed_hosts=AllowedHosts(allowed_hosts, bound=settings.host),
        log_function=log_request,
    )
