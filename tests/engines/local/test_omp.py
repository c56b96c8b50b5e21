"""OpenMP worker pools are handed back by threads that stop computing (toolkit/engines/local/omp.py).

A pool's workers are OS threads of this process, so they are counted in /proc/self/task: a thread that ran a
parallel kernel adds one for each thread of torch's but its own; one that hands its pool back takes them away again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from polling import wait_for

from toolkit.engines.local import omp
from toolkit.engines.local.engine import Scheduler
from toolkit.params import filled

pytestmark = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2 or not omp._libgomps(), reason="needs torch on libgomp and 2 cores"
)


@pytest.fixture(autouse=True)
def two_threads() -> Iterator[None]:
    """Kernels on 2 threads (a test worker of ``make test`` runs on 1: no pool at all)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def threads() -> set[str]:
    """This process's OS threads, by id."""
    return set(os.listdir("/proc/self/task"))


def gone(ids: set[str], what: str) -> None:
    """Wait until none of ``ids`` is a thread of this process (a pool's workers exit a moment after release)."""
    wait_for(lambda: not ids & threads(), 30.0, what)


def parallel_work() -> set[str]:
    """Run a parallel kernel on this thread; the threads that appeared meanwhile (its pool, if it had none)."""
    before = threads()
    torch.ones(2**22).sin_()  # far over torch's grain size: an OpenMP parallel region
    return threads() - before


@pytest.fixture()
def engine(loaded: Any) -> Iterator[Scheduler]:
    engine = Scheduler(
        loaded.model,
        loaded.tokenizer,
        eos_token_ids=loaded.eos_token_ids,
        context_length=loaded.context_length,
    )
    yield engine
    engine.close(grace_s=0)


def test_a_thread_hands_its_pool_back() -> None:
    omp.release()
    pool = parallel_work()
    assert len(pool) == 1  # this thread's pool: one worker beside it, on 2 threads
    assert omp.release()
    gone(pool, "the released pool's worker stayed")
    assert len(parallel_work()) == 1  # and it gets a new one when it computes again


def test_the_engine_idles_without_a_pool_and_takes_the_submitters(engine: Scheduler, loaded: Any) -> None:
    omp.release()
    before = threads()  # the engine's thread has not computed yet
    ids = list(loaded.tokenizer("Name a colour.", add_special_tokens=False)["input_ids"])
    engine.generate(ids, filled(temperature=0, max_new_tokens=4))
    gone(threads() - before, "the idle engine kept its OpenMP workers")
    pool = parallel_work()  # this thread now has a pool (a notebook's main thread after training, say)
    assert pool
    result = engine.generate(ids, filled(temperature=0, max_new_tokens=4))
    assert result.finish_reason == "length"
    # both pools gone: the submitting thread's at submit, the engine's when it went idle again
    gone(pool | (threads() - before), "a pool stayed: the engine's steps would wait on sleeping workers")
