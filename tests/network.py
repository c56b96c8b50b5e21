"""Whether this machine reaches the internet: tests of the real web search hold either way (here it does not)."""

from __future__ import annotations

import functools
import socket


@functools.cache
def online(host: str = "duckduckgo.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
