"""Accepted requests, from acceptance to their last event: what ``cancel`` needs to stop one (``Live``),
among every caller's (``LiveRequests``), and how many are still being prepared, counted against their model's
queue (``admit``). Request ids belong to their owner."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import InvalidRequest
from toolkit.params import InferRequest


@dataclass(eq=False)
class Live:
    """A request from its acceptance to its last event: what ``cancel`` needs to stop it.

    The engine knows it by ``engine_id``, fresh for every request, so two callers' ids never meet there.
    """

    engine_id: str = field(default_factory=lambda: secrets.token_hex(12))
    engine: Any = None  # set once the request is in the engine
    cancelled: bool = False


class LiveRequests:
    """Every accepted request, by (owner, request id), from acceptance to its last event.

    Request ids belong to their owner (the server passes its caller's identity): another owner's id is
    as unknown as one never used.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str], Live] = {}
        self._preparing: dict[str, int] = {}  # accepted, not yet in the engine: by model name

    def admit(self, model: str, engine: Any) -> None:
        """Count a request against ``model``'s queue from its acceptance (``Overloaded`` when full): one being
        searched for or prepared holds a place as one waiting in the engine does. ``release`` when it has
        reached the engine or ended."""
        with self._lock:
            waiting = self._preparing.get(model, 0)
            engine.check_room(waiting)
            self._preparing[model] = waiting + 1

    def room(self, model: str, engine: Any) -> None:
        """``Overloaded`` now when ``admit`` would refuse a request for ``model``; nothing is counted."""
        with self._lock:
            engine.check_room(self._preparing.get(model, 0))

    def release(self, model: str) -> None:
        with self._lock:
            self._preparing[model] -= 1

    @property
    def preparing(self) -> int:
        """Requests accepted and not yet in an engine (being searched for or prepared)."""
        with self._lock:
            return sum(self._preparing.values())

    def begin(self, request: InferRequest) -> Live:
        """Accept a request: its id must be new for its owner."""
        key = (request.owner, request.request_id)
        with self._lock:
            if key in self._live:
                raise InvalidRequest(
                    "request_id", f"a request with id {request.request_id!r} is already running; use a new id"
                )
            live = self._live[key] = Live()
        return live

    def end(self, request: InferRequest) -> None:
        with self._lock:
            self._live.pop((request.owner, request.request_id), None)

    def submit(self, live: Live, engine: Any, submit: Callable[[], Any]) -> Any:
        """Hand the request to ``engine`` (``submit()``), or None when it was cancelled before it got there.

        Under the lock, so that a ``cancel`` either sees the request in the engine or stops it here.
        """
        with self._lock:
            if live.cancelled:
                return None
            events = submit()
            live.engine = engine
        return events

    def cancel(self, request_id: str, owner: str) -> bool:
        """Cancel a request that is searching, queued or running; False if this owner has no such request."""
        with self._lock:
            live = self._live.get((owner, request_id))
            if live is None:
                return False
            live.cancelled = True
            engine = live.engine
        if engine is not None:
            return bool(engine.cancel(live.engine_id))
        return True  # still searching or tokenizing: it stops before the engine
