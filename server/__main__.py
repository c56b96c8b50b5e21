"""``python -m server``: the GraphQL server on the configured model (``make serve``).

It listens at once and answers ``health`` (status LOADING) while the model loads.
SIGTERM or SIGINT: stop accepting, let in-flight requests finish for
SHUTDOWN_GRACE seconds, cancel the rest, then exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from tornado.netutil import bind_sockets

from server.app import make_app, make_http_server
from server.config import ServerSettings
from toolkit.errors import ToolkitError
from toolkit.service import InferenceService
from toolkit.settings import Settings

log = logging.getLogger("server")


async def serve(service: InferenceService, server_settings: ServerSettings) -> None:
    app = make_app(service, server_settings)
    sockets = bind_sockets(server_settings.port, address=server_settings.host)
    port = sockets[0].getsockname()[1]  # the real port when 0 was asked
    http = make_http_server(app)
    http.add_sockets(sockets)
    base = f"http://{server_settings.host}:{port}"
    names = ", ".join(entry.name for entry in service.registry)
    print(f"GraphQL: {base}/graphql   GraphiQL: {base}/graphiql   (loading: {names})", flush=True)
    service.start(wait=False)  # a bad SEARCH_PROVIDER fails here
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: no new connections; in-flight requests get %.0f s", server_settings.shutdown_grace_s)
    http.stop()
    await loop.run_in_executor(None, service.close, server_settings.shutdown_grace_s)
    await asyncio.sleep(0.2)  # let the last results and subscription messages go out
    await http.close_all_connections()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    parser.add_argument("--host", default=None, help="address to bind (SERVER_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (SERVER_PORT, default 8080; 0 = any free port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        server_settings = ServerSettings.from_env(**overrides)
        service = InferenceService(Settings.from_env())  # a bad MODELS_FILE fails here, naming the key
    except ToolkitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(service, server_settings))
    except ToolkitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot listen on {server_settings.host}:{server_settings.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
