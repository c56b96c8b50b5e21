"""``make_app(service, settings)``: the Tornado application, with every collaborator passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.routing import PathMatches, Rule

from server.config import ServerSettings
from server.gateway import Gateway
from server.handlers import GraphiQLHandler, GraphQLHandler, GraphQLWebSocket

STATIC = Path(__file__).with_name("static")
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


def make_app(service: Any, settings: ServerSettings | None = None) -> tornado.web.Application:
    settings = settings or ServerSettings()
    gateway = Gateway(service, settings)
    assets_ready = all(p.is_file() for p in ASSETS.values())
    return tornado.web.Application(
        [
            Rule(WebSocketUpgrade(r"/graphql"), GraphQLWebSocket, {"gateway": gateway}),
            (r"/graphql", GraphQLHandler, {"gateway": gateway}),
            (r"/graphiql/?", GraphiQLHandler, {"page": STATIC / "graphiql.html", "assets_ready": assets_ready}),
            (r"/graphiql/assets/(.*)", AssetHandler, {"path": "/"}),
            (r"/", tornado.web.RedirectHandler, {"url": "/graphiql"}),
        ],
        websocket_max_message_size=settings.max_ws_message_bytes,
        websocket_ping_interval=20,
        gateway=gateway,
    )
