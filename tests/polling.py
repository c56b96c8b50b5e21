"""Waiting in tests without a fixed sleep: poll a condition until it holds or a deadline passes (a slow host
only takes longer; a deadline that passes is a failure)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], seconds: float = 60.0, what: str = "timed out waiting") -> None:
    """Poll ``condition`` every 5 ms until it is true; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)
