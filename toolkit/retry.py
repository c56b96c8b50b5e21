"""One retry policy: whether a refused call is made again, and after how long, decided by the error itself.

An error says whether a retry may help: its ``retry_after_s`` (every ``ToolkitError`` class declares it: a full
queue, a rate limit, a model still loading, a remote engine down for now, a busy store ...; None: retrying will
not help), the wait the server names in ``Retry-After``. No list of classes decides. A ``RetryPolicy`` says how
much retrying a caller can afford: ``RemoteService`` sends a refused call again ``max_retries`` times, as
OpenAI's client does (a refused call did not run); an evaluation waits a busy service out for minutes.

    policy = RetryPolicy(attempts=2, max_wait_s=20)
    answer = policy.call(lambda: service.infer("Hi"), stop=stop)   # stop: a threading.Event that ends the waiting
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
NOW_S = 1.0  # the wait for an error that says "retry now" (0 s): not at once, which would only spin


def retry_after(error: BaseException) -> float | None:
    """The seconds after which ``error``'s call may succeed if made again (its ``retry_after_s``); None: a retry
    will not help."""
    value = getattr(error, "retry_after_s", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value) or NOW_S


@dataclass(frozen=True)
class RetryPolicy:
    """How much retrying a caller affords. ``attempts``: retries at most (None: as many as ``patience_s``
    allows); ``patience_s``: no retry once this long has passed since the first try (None: no time bound);
    ``max_wait_s``: an error that names a longer wait is given up at once (its caller hears of it now, rather
    than after a wait it did not choose)."""

    attempts: int | None = None
    patience_s: float | None = None
    max_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts is not None and (isinstance(self.attempts, bool) or self.attempts < 0):
            raise ValueError(f"attempts must be None or >= 0, got {self.attempts!r}")
        if self.patience_s is not None and self.patience_s < 0:
            raise ValueError(f"patience_s must be None or >= 0, got {self.patience_s!r}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s!r}")

    def wait(
        self, error: BaseException, attempt: int, started_at: float | None = None, *, now: float | None = None
    ) -> float | None:
        """The seconds to wait before trying again after ``error``, or None to give up (raise it). ``attempt``:
        the retries made so far (0 after the first try failed); ``started_at``: when the first try began
        (``time.monotonic()``), counted only with ``patience_s``; ``now``: the time it is (default: monotonic)."""
        after = retry_after(error)
        if after is None or after > self.max_wait_s:
            return None
        if self.attempts is not None and attempt >= self.attempts:
            return None
        if self.patience_s is None or started_at is None:
            return after
        elapsed = (time.monotonic() if now is None else now) - started_at
        return after if elapsed < self.patience_s else None

    def call(
        self,
        call: Callable[[], T],
        *,
        stop: threading.Event | None = None,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> T:
        """``call()``, made again after each error this policy retries, waiting what the error says; the last
        error is raised when the policy gives up, or once ``stop`` is set (a wait ends as ``stop`` is set).
        ``sleep`` and ``clock``: how to wait and what time it is (tests give their own)."""
        started = clock()
        for attempt in itertools.count():
            try:
                return call()
            except Exception as exc:
                wait = self.wait(exc, attempt, started, now=clock())
                if wait is None or (stop is not None and stop.is_set()):
                    raise
                if sleep is not None:
                    sleep(wait)
                elif stop is not None:
                    stop.wait(wait)
                else:
                    time.sleep(wait)
                if stop is not None and stop.is_set():
                    raise
        raise AssertionError("unreachable")
