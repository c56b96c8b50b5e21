"""The step driver's preparation pool (``toolkit/driver.py``)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

import pytest

from toolkit.driver import LONG_REQUEST_CHARS, PREPARE_NICE, preparation_pool, request_chars
from toolkit.errors import PromptTooLong
from toolkit.params import InferRequest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have a nice value of their own on Linux")
def test_requests_are_prepared_at_the_lowest_priority_and_the_caller_keeps_its_own() -> None:
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = nice()
    pool = preparation_pool(1)
    try:
        assert pool.submit(nice).result(timeout=30) == PREPARE_NICE == 19
    finally:
        pool.shutdown()
    assert nice() == before  # the engine's and the loop's threads are not lowered
    beside = preparation_pool(1, behind=False)  # short requests: at the process's own priority
    try:
        assert beside.submit(nice).result(timeout=30) == before
    finally:
        beside.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads have a nice value of their own on Linux")
def test_only_long_requests_are_prepared_behind_the_engine(service: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    short = InferRequest.build(
        "Hello", history=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}], max_new_tokens=2
    )
    turns = [{"role": ("user", "assistant")[i % 2], "content": "a long turn " * 40} for i in range(100)]
    long = InferRequest.build("Hello", history=turns, max_new_tokens=2)
    assert request_chars(short) < LONG_REQUEST_CHARS < request_chars(long)
    niceness: list[int] = []
    prepare = service._prepare

    def spy(*args: Any) -> Any:
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return prepare(*args)

    monkeypatch.setattr(service, "_prepare", spy)
    asyncio.run(service.ainfer(short))
    with pytest.raises(PromptTooLong):  # counted (the long part of the work) behind the engine, then refused
        asyncio.run(service.ainfer(long))
    assert niceness == [os.getpriority(os.PRIO_PROCESS, 0), PREPARE_NICE]  # sixteen chat messages are not starved
