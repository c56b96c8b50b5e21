"""What the engine emits, and the iterators over it.

The scheduler calls a per-request sink with ``Delta`` events and one ``Finished``;
``Streams`` turns ``submit(ids, params, sink)`` into iterators (sync and async)
whose early close cancels the request. No torch here: the service imports these.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import ToolkitError


@dataclass(frozen=True)
class Delta:
    """New text for one request; never empty."""

    request_id: str
    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of a request. ``error`` is set when ``finish_reason == "error"``."""

    request_id: str
    text: str
    finish_reason: str  # stop | length | cancelled | timeout | error
    prompt_tokens: int
    completion_tokens: int
    seed: int
    queued_s: float
    first_token_s: float | None
    total_s: float
    error: ToolkitError | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # what the engine adds to the run record
    prompt_tokens_estimated: bool = False  # counted from bytes: the model's server did not count them


Event = Delta | Finished
Sink = Callable[[Event], None]


class Streams:
    """Iterator faces over ``submit``/``cancel``; the engine provides those two.

    ``stream`` and ``astream`` submit at once (so ``Overloaded`` and bad input raise at the call,
    and a cancel that arrives right after finds the request), then return the iterator.
    Iterate it to the end, or close it: closing early cancels the request.
    """

    submit: Callable[..., Any]  # (*request, sink=..., **options) -> a job with .request_id and .done
    cancel: Callable[[str], bool]

    def stream(self, *args: Any, **kwargs: Any) -> Iterator[Event]:
        """Events of one request; closing the iterator early cancels the request."""
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        job = self.submit(*args, sink=events.put, **kwargs)
        return self._drain(job, events)

    def _drain(self, job: Any, events: queue.SimpleQueue[Event]) -> Iterator[Event]:
        try:
            while True:
                event = events.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if not job.done:
                self.cancel(job.request_id)

    def generate(self, *args: Any, **kwargs: Any) -> Finished:
        for event in self.stream(*args, **kwargs):
            if isinstance(event, Finished):
                return event
        raise AssertionError("a stream always ends with Finished")  # pragma: no cover

    def astream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Event]:
        """Async version of ``stream``, for the server's event loop (call it from a coroutine)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def sink(event: Event) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = self.submit(*args, sink=sink, **kwargs)
        return self._adrain(job, events)

    async def _adrain(self, job: Any, events: asyncio.Queue[Event]) -> AsyncIterator[Event]:
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if not job.done:
                self.cancel(job.request_id)

    async def agenerate(self, *args: Any, **kwargs: Any) -> Finished:
        async for event in self.astream(*args, **kwargs):
            if isinstance(event, Finished):
                return event
        raise AssertionError("a stream always ends with Finished")  # pragma: no cover
