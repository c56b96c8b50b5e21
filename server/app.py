"""``make_app(service, settings)``: the Tornado application, with every collaborator passed in;
``make_http_server(app)``: the HTTP server for it, with the header bounds the application answers within."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPServerRequest
from tornado.log import access_log
from tornado.routing import PathMatches, Rule

from server.config import ServerSettings
from server.gateway import Gateway
from server.handlers import GraphiQLHandler, GraphQLHandler, GraphQLWebSocket
from server.openai_api import ChatCompletionsHandler, ModelsHandler, OpenAIError

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
            raise tornado.web.HTTPError(404)
        return str(target)

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if not Path(absolute_path).is_file():
            raise tornado.web.HTTPError(404)
        return absolute_path


class WebSocketUpgrade(PathMatches):
    """Matches the path only for a WebSocket upgrade, so ``/graphql`` serves both transports."""

    def match(self, request: HTTPServerRequest) -> dict[str, Any] | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return None
        return super().match(request)


class URITooLong(tornado.web.RequestHandler):
    """414 in the shape of the endpoint the URL names: OpenAI's under /v1/, GraphQL's elsewhere."""

    def prepare(self) -> None:
        self.set_status(414)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        message = f"the URL is over the limit of {MAX_URL_BYTES} bytes; send the request as a POST body"
        if (self.request.path or "").startswith("/v1/"):
            self.finish(json.dumps(OpenAIError(414, message, code="uri_too_long").body()))
        else:
            self.finish(json.dumps({"errors": [{"message": message, "extensions": {"code": "URI_TOO_LONG"}}]}))


class Application(tornado.web.Application):
    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> tornado.web._HandlerDelegate:
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


def make_app(service: Any, settings: ServerSettings | None = None) -> tornado.web.Application:
    settings = settings or ServerSettings()
    gateway = Gateway(service, settings)
    assets_ready = all(p.is_file() for p in ASSETS.values())
    return Application(
        [
            Rule(WebSocketUpgrade(r"/graphql"), GraphQLWebSocket, {"gateway": gateway}),
            (r"/graphql", GraphQLHandler, {"gateway": gateway}),
            (r"/v1/chat/completions", ChatCompletionsHandler, {"gateway": gateway}),
            (r"/v1/models", ModelsHandler, {"gateway": gateway}),
            (r"/graphiql/?", GraphiQLHandler, {"page": STATIC / "graphiql.html", "assets_ready": assets_ready}),
            (r"/graphiql/assets/(.*)", AssetHandler, {"path": "/"}),
            (r"/", tornado.web.RedirectHandler, {"url": "/graphiql"}),
        ],
        websocket_max_message_size=settings.max_ws_message_bytes,
        websocket_ping_interval=20,
        gateway=gateway,
        log_function=log_request,
    )
