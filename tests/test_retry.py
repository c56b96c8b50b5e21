"""One retry policy (toolkit.retry): the error itself says whether a retry may help and when (its retry_after_s);
the policy says how much retrying a caller affords. Real error objects; waits are recorded, never slept."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

import toolkit.client
from toolkit.client import MAX_RETRY_WAIT_S, RemoteService
from toolkit.errors import (
    EngineClosed,
    EngineUnavailable,
    InvalidRequest,
    ModelNotReady,
    Overloaded,
    PromptTooLong,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    StoreUnavailable,
    ToolkitError,
)
from toolkit.results import Token
from toolkit.retry import NOW_S, RetryPolicy, retry_after


def test_the_error_says_whether_a_retry_may_help() -> None:
    retryable = {
        RateLimited(7): 7.0,
        Overloaded(64, 64): 1.0,
        EngineUnavailable("m", "its server is down"): 1.0,
        EngineClosed(): 1.0,
        ModelNotReady("still loading"): 1.0,
        StoreUnavailable("busy"): 1.0,
        StoreUnavailable("full"): 30.0,
        RateLimited(0): NOW_S,  # "now" is not at once: that would only spin
    }
    for error, wait in retryable.items():
        assert retry_after(error) == wait, error
    final = [
        ModelNotReady("it failed to load", loading=False),
        StoreUnavailable("corrupt"),
        InvalidRequest("temperature", "must be >= 0"),
        PromptTooLong("prompt", 5000, 4096),
        RequestTimeout("out of time"),
        ServiceUnavailable("cannot reach the server"),
        ToolkitError("anything else"),
        ValueError("not a toolkit error"),
    ]
    for error in final:
        assert retry_after(error) is None, error
        assert RetryPolicy().wait(error, 0) is None


def test_attempts_patience_and_the_longest_wait() -> None:
    limited = RateLimited(3)
    policy = RetryPolicy(attempts=2, max_wait_s=20)
    assert [policy.wait(limited, attempt) for attempt in range(4)] == [3.0, 3.0, None, None]
    assert RetryPolicy(attempts=0).wait(limited, 0) is None
    assert policy.wait(RateLimited(21), 0) is None  # longer than the caller affords: it hears of it at once
    assert policy.wait(StoreUnavailable("full"), 0) is None
    patient = RetryPolicy(patience_s=60, max_wait_s=60)
    assert patient.wait(limited, 50, started_at=100.0, now=159.0) == 3.0  # no count bound
    assert patient.wait(limited, 0, started_at=100.0, now=160.0) is None  # patience spent
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=-1)


def failing(*errors: BaseException, then: Any = "answer") -> tuple[Any, list[int]]:
    """A call that raises ``errors`` one by one, then returns ``then``; and how many times it was made."""
    made: list[int] = []
    queue = iter(errors)

    def call() -> Any:
        made.append(1)
        error = next(queue, None)
        if error is not None:
            raise error
        return then

    return call, made


def test_a_call_is_made_again_after_the_waits_the_errors_name() -> None:
    waits: list[float] = []
    call, made = failing(Overloaded(3, 3), RateLimited(4), ModelNotReady("loading"))
    assert RetryPolicy(attempts=3).call(call, sleep=waits.append) == "answer"
    assert waits == [1.0, 4.0, 1.0] and len(made) == 4


def test_a_final_error_or_spent_attempts_raise_the_last_error() -> None:
    waits: list[float] = []
    call, made = failing(InvalidRequest("top_p", "must be <= 1"))
    with pytest.raises(InvalidRequest):
        RetryPolicy(attempts=5).call(call, sleep=waits.append)
    assert waits == [] and len(made) == 1
    last = RateLimited(2)
    call, made = failing(Overloaded(1, 1), Overloaded(1, 1), last)
    with pytest.raises(RateLimited) as caught:
        RetryPolicy(attempts=2).call(call, sleep=waits.append)
    assert caught.value is last and waits == [1.0, 1.0] and len(made) == 3


def test_patience_counts_from_the_first_try() -> None:
    ticks = iter([0.0, 10.0, 70.0])  # the first try; its refusal; the second's
    waits: list[float] = []
    call, made = failing(Overloaded(1, 1), Overloaded(1, 1))
    with pytest.raises(Overloaded):
        RetryPolicy(patience_s=60).call(call, sleep=waits.append, clock=lambda: next(ticks))
    assert waits == [1.0] and len(made) == 2


class Recorded(threading.Event):
    """A stop whose wait is recorded and returns at once; ``stop_after`` waits, it is set."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.waits: list[float | None] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if self.stop_after is not None and len(self.waits) >= self.stop_after:
            self.set()
        return self.is_set()


def test_stop_ends_the_waiting() -> None:
    stop = Recorded()
    call, made = failing(Overloaded(1, 1), RateLimited(5))
    assert RetryPolicy().call(call, stop=stop) == "answer"  # the waits are on the stop event
    assert stop.waits == [1.0, 5.0] and len(made) == 3
    stop = Recorded(stop_after=1)  # set during the first wait: no further try
    call, made = failing(Overloaded(1, 1), Overloaded(1, 1))
    with pytest.raises(Overloaded):
        RetryPolicy().call(call, stop=stop)
    assert stop.waits == [1.0] and len(made) == 1
    stop = Recorded()
    stop.set()  # already set: the error at once
    call, made = failing(Overloaded(1, 1))
    with pytest.raises(Overloaded):
        RetryPolicy().call(call, stop=stop)
    assert stop.waits == [] and len(made) == 1


@pytest.fixture()
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr(toolkit.client.time, "sleep", waits.append)
    return waits


def test_the_client_sends_again_what_the_server_says_a_retry_may_cure(slept: list[float]) -> None:
    """max_retries is the knob; a full queue is sent again as a rate limit is (as OpenAI's client does);
    a wait over MAX_RETRY_WAIT_S, or an error no retry cures, reaches the caller at once."""
    client = RemoteService("http://127.0.0.1:9/graphql")  # never reached: _execute is the test's
    call, made = failing(Overloaded(2, 2), RateLimited(2), then={"ok": True})
    client._execute = lambda *args: call()  # type: ignore[method-assign]
    assert client.execute("{ ok }") == {"ok": True} and slept == [1.0, 2.0] and len(made) == 3
    for errors, waits in (
        ((Overloaded(1, 1),) * 3, [1.0, 1.0]),  # max_retries (2) spent
        ((RateLimited(MAX_RETRY_WAIT_S + 1),), []),
        ((EngineUnavailable("m", "down"), InvalidRequest("x", "bad")), [1.0]),
        ((ModelNotReady("failed", loading=False),), []),
    ):
        slept.clear()
        call, made = failing(*errors)
        with pytest.raises(ToolkitError) as caught:
            client.execute("{ ok }")
        assert caught.value is errors[-1] and slept == waits
    hasty = RemoteService("http://127.0.0.1:9/graphql", max_retries=0)
    hasty._execute = lambda *args: call()  # type: ignore[method-assign]
    call, made = failing(Overloaded(1, 1))
    with pytest.raises(Overloaded):
        hasty.execute("{ ok }")


def test_a_stream_is_asked_again_only_before_it_began(slept: list[float]) -> None:
    client = RemoteService("http://127.0.0.1:9/graphql")
    tries: list[int] = []

    def refused_then_streams(body: Any) -> Iterator[Any]:
        tries.append(1)
        if len(tries) == 1:
            raise Overloaded(1, 1)  # before its first event
        yield Token("r1", "Hi", "Hi")
        raise RateLimited(1)  # after it began: the caller has seen an event

    client._stream = refused_then_streams  # type: ignore[assignment,method-assign]
    events = []
    with pytest.raises(RateLimited):
        for event in client.stream("Hi"):
            events.append(event)
    assert len(tries) == 2 and slept == [1.0] and len(events) == 1
