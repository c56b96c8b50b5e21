"""A real server on a loopback port, in a thread with its own event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from loopback import serve_in_thread

from server.app import make_app, make_http_server
from server.config import ServerSettings
from toolkit.service import InferenceService
from toolkit.settings import Settings


@dataclass
class RunningServer:
    url: str  # http://127.0.0.1:PORT/graphql
    ws_url: str
    base: str
    service: Any
    loop: asyncio.AbstractEventLoop
    stop: Callable[[], None]


def start_server(service: Any, settings: ServerSettings | None = None) -> RunningServer:
    settings = settings or ServerSettings(port=0)
    served = serve_in_thread(lambda: make_http_server(make_app(service, settings)))
    base = f"http://127.0.0.1:{served.port}"
    return RunningServer(
        f"{base}/graphql", f"ws://127.0.0.1:{served.port}/graphql", base, service, served.loop, served.stop
    )


@pytest.fixture(scope="session")
def server_service(settings: Settings, loaded: Any) -> Iterator[InferenceService]:
    svc = InferenceService(settings, loaded=loaded)
    yield svc
    svc.close(grace_s=0)


@pytest.fixture(scope="session")
def server(server_service: InferenceService) -> Iterator[RunningServer]:
    running = start_server(server_service, ServerSettings(port=0, max_body_bytes=64 * 1024, rate_burst=10_000))
    yield running
    running.stop()


@pytest.fixture()
def make_server() -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(service: Any, **settings: Any) -> RunningServer:
        running = start_server(service, ServerSettings(port=0, **settings))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()
