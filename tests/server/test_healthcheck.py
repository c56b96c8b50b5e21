"""``python -m server.healthcheck``: what the container health check runs."""

from __future__ import annotations

import socket
from typing import Any

from server.healthcheck import main


def test_ready_server_is_healthy(server: Any) -> None:
    assert main([server.url]) == 0


def test_no_server_is_unhealthy() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main([f"http://127.0.0.1:{port}/graphql"]) == 1
