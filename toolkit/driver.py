"""The step driver: one request's steps, run in the caller's thread (``drive``) or on an event loop
(``adrive``).

The facade writes a request once, as a generator of steps (``Steps``): the events to pass on, a ``Call``
for blocking work (a search, building and encoding the messages) and a ``Run`` for the engine's part. The
two drivers run the same steps: ``drive`` calls the work where it stands; ``adrive`` sends it to a worker
thread so the loop stays responsive, and a caller who leaves cancels work that has not started. The
engine's events become ``Token``s (the text so far) and a last ``Done`` carrying the ``InferResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from toolkit.events import Event, Finished
from toolkit.live import Live, LiveRequests
from toolkit.params import InferRequest
from toolkit.prepared import Prepared
from toolkit.results import Done, InferResult, StreamEvent, Token


class Call:
    """A step's blocking work: run in the caller's thread by ``drive``, on a worker thread by ``adrive``
    (of ``pool``; None: the loop's default)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, pool: ThreadPoolExecutor | None = None) -> None:
        self.fn, self.args, self.pool = fn, args, pool


@dataclass(frozen=True)
class Run:
    """A step's engine part: the request's ``Token``s and ``Done``, from ``engine.stream`` or ``engine.astream``."""

    live: Live
    prepared: Prepared


Steps = Generator[StreamEvent | Call | Run, Any, None]
PREPARE_WORKERS = 4  # threads that build requests' messages
# a request whose prompt, system prompt and history hold more characters than this is prepared behind the engine
LONG_REQUEST_CHARS = 20_000
# a finished request's result (and its run record), from the engine's Finished
Finish = Callable[[Prepared, Finished], InferResult]


def preparation_pool(workers: int = PREPARE_WORKERS, *, behind: bool = True) -> ThreadPoolExecutor:
    """Threads for building requests' messages (templating, counting, tokenizing: milliseconds, up to a tenth
    of a second for a 10,000-turn history), apart from the loop's shared pool, so a few long requests cannot
    hold up what everything else waits on (a store read, a search); a request queued here whose caller leaves
    never runs. ``behind``: at the lowest priority, for long requests (``LONG_REQUEST_CHARS``); the short ones'
    milliseconds run at the process's own, so that sixteen chat messages arriving together while the engine
    decodes are not starved into joining it one by one."""
    if not behind:
        return ThreadPoolExecutor(workers, thread_name_prefix="toolkit-prepare")
    return ThreadPoolExecutor(workers, thread_name_prefix="toolkit-prepare-long", initializer=_behind_the_engine)


class PreparationPools:
    """The two preparation pools: long requests' behind the engine, short ones' at the process's priority."""

    def __init__(self) -> None:
        self.short, self.long = preparation_pool(behind=False), preparation_pool(behind=True)

    def of(self, request: InferRequest) -> ThreadPoolExecutor:
        """The pool that prepares ``request``."""
        return self.long if request_chars(request) > LONG_REQUEST_CHARS else self.short

    def shutdown(self) -> None:
        for pool in (self.short, self.long):
            pool.shutdown(wait=False, cancel_futures=True)


def request_chars(request: InferRequest) -> int:
    """How much text a request's messages are built from: its prompt, system prompt and history."""
    return len(request.prompt) + len(request.system_prompt or "") + sum(len(t.content) for t in request.history)


# Preparation yields the CPU to the engine: a decode step runs on every core (torch's threads), and a core
# taken by a thread fitting a 10,000-turn history made one 35 ms step take 0.6 s. At the lowest priority
# (Linux gives threads their own nice value) preparation runs on what the engine leaves: beside six such
# requests another caller's answer was delayed by 0.2 s, not 1.0 s (bench/history.py).
PREPARE_NICE = 19


def _behind_the_engine() -> None:
    """A preparation thread's initializer: the lowest scheduling priority, where the system has one per thread."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: it runs as the rest of the process
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREPARE_NICE)


def translator(prepared: Prepared, finish: Finish) -> Callable[[Event], StreamEvent]:
    """Engine events -> stream events: ``Token`` with the text so far, the last one ``Done``.

    (The engine's stream ends after its ``Finished``, so ``Done`` is the last event.)
    """
    text = ""

    def translate(event: Event) -> StreamEvent:
        nonlocal text
        if isinstance(event, Finished):
            return Done(finish(prepared, event))
        text += event.text
        return Token(prepared.request.request_id, event.text, text)

    return translate


@dataclass(frozen=True)
class Driver:
    """Runs steps. ``live``: the accepted requests (a cancelled one never reaches its engine); ``finish``:
    the result of a finished request; ``slow_finish``: finishing generates (a grounding judge), so on a
    loop it runs on a worker thread."""

    live: LiveRequests
    finish: Finish
    slow_finish: Callable[[], bool] = lambda: False

    def drive(self, steps: Steps) -> Iterator[StreamEvent]:
        value: Any = None
        try:
            while True:
                try:
                    step = steps.send(value)
                except StopIteration:
                    return
                value = None
                if isinstance(step, Call):
                    value = step.fn(*step.args)
                elif isinstance(step, Run):
                    yield from self.run(step.live, step.prepared)
                else:
                    yield step
        finally:
            steps.close()

    async def adrive(self, steps: Steps) -> AsyncGenerator[StreamEvent, None]:
        loop = asyncio.get_running_loop()
        value: Any = None
        try:
            while True:
                try:
                    step = steps.send(value)
                except StopIteration:
                    return
                value = None
                if isinstance(step, Call):  # milliseconds to seconds: off the event loop, which must stay responsive
                    work = loop.run_in_executor(step.pool, step.fn, *step.args)
                    try:
                        value = await work
                    except BaseException:
                        work.cancel()  # the caller left: work not yet started never runs
                        raise
                elif isinstance(step, Run):
                    run = self.arun(step.live, step.prepared)
                    try:
                        async for event in run:
                            yield event
                    finally:
                        await run.aclose()  # cancels the request if it still runs
                else:
                    yield step
        finally:
            steps.close()

    def run(self, live: Live, prepared: Prepared) -> Iterator[StreamEvent]:
        """The engine's events for an accepted, prepared request, as ``Token``s and the last ``Done``.
        Closing it early cancels the request in the engine."""
        translate = translator(prepared, self.finish)
        engine = prepared.model.engine
        events = self.live.submit(live, engine, lambda: engine.stream(prepared.engine_request(live.engine_id)))
        if events is None:  # cancelled before it reached the engine
            yield translate(prepared.cancelled_before_engine())
            return
        try:
            for event in events:
                yield translate(event)
        finally:
            events.close()  # a generator: cancels the request if it still runs

    async def arun(self, live: Live, prepared: Prepared) -> AsyncGenerator[StreamEvent, None]:
        translate = translator(prepared, self.finish)
        engine = prepared.model.engine
        events = self.live.submit(live, engine, lambda: engine.astream(prepared.engine_request(live.engine_id)))
        if events is None:
            yield translate(prepared.cancelled_before_engine())
            return
        try:
            async for event in events:
                if isinstance(event, Finished) and self.slow_finish():  # the judge generates: off the loop
                    yield await asyncio.get_running_loop().run_in_executor(None, translate, event)
                else:
                    yield translate(event)
        finally:
            await events.aclose()
