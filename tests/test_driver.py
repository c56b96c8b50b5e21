"""The step driver's preparation pool (``toolkit/driver.py``)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from toolkit.driver import PREPARE_NICE, preparation_pool


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
