"""A Tornado HTTP server on a loopback port, in a thread with its own event loop: the toolkit's
server in the server tests, and the fake OpenAI-compatible server at the network boundary."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets


@dataclass
class Loopback:
    port: int
    loop: asyncio.AbstractEventLoop
    stop: Callable[[], None]


def serve_in_thread(make: Callable[[], HTTPServer], port: int = 0) -> Loopback:
    """Builds the server inside the thread's loop (Tornado binds it to the current loop) and serves it
    (``port``: a given one, e.g. to bring a stopped server back where its clients look for it)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        sockets = bind_sockets(port, "127.0.0.1")
        server = make()
        server.add_sockets(sockets)
        box["server"], box["port"] = server, sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the loopback server did not start within 10 s")

    def stop() -> None:
        async def shutdown() -> None:
            box["server"].stop()
            await box["server"].close_all_connections()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    return Loopback(box["port"], loop, stop)
