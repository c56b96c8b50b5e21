"""What decides a cell's answer (its cache key: the parameters as the service resolves them), and waiting out a
refusal a retry may cure (a full queue, a rate limit, a rate-limited search) without sleeping here."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from toolkit.errors import InvalidRequest, Overloaded, SearchFailure
from toolkit.evals.answers import Keys, Searches, patiently
from toolkit.evals.results import EvalRun
from toolkit.params import InferRequest, Limits, model_defaults
from toolkit.results import ModelInfo
from toolkit.search import SearchOutcome, SearchResult

MODEL = ModelInfo(
    "tiny",
    "local",
    True,
    2048,
    "hash-1",
    default=True,
    defaults={**model_defaults({}, {}, fallback=True), "max_new_tokens": 4096},  # over this deployment's limit
)


def keys(service: Any = None) -> Keys:
    return Keys(service or SimpleNamespace(limits=Limits(max_new_tokens=1024)), {MODEL.id: MODEL})


def key(keys: Keys, **params: Any) -> str | None:
    return keys.of(InferRequest.build("What is the capital of France?", **params), None)


def test_a_parameter_at_its_default_and_one_left_out_are_one_key() -> None:
    local = keys()
    omitted = key(local)
    assert omitted is not None
    assert key(local, temperature=0.7) == omitted  # the model's default, given explicitly
    assert key(local, top_p=1) == omitted  # 1 is 1.0, as the engine reads it
    assert key(local, max_new_tokens=1024) == omitted  # the default clamped to the limit is what runs
    assert key(local, model="tiny", temperature=0.7) == omitted  # the default model, by name
    for other in ({"temperature": 0.2}, {"max_new_tokens": 512}, {"top_k": 40}, {"seed": 1}, {"stop": ["\n"]}):
        assert key(local, **other) != omitted, other
    # a service that does not say its limits (a remote one): the model's default, unclamped
    remote = keys(SimpleNamespace())
    assert key(remote, temperature=0.7, max_new_tokens=4096) == key(remote) != key(remote, max_new_tokens=1024)
    assert key(local, model="elsewhere") is None  # a model it does not know: not cached


class Instant(threading.Event):
    """A stop whose waits are recorded and return at once (set only by the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def test_patiently_waits_out_a_full_queue_until_stop() -> None:
    stop = Instant()
    calls: list[int] = []

    def busy() -> str:
        calls.append(1)
        if len(calls) == 2:
            stop.set()  # the run is stopped while this cell waits: its refusal is the answer
        raise Overloaded(8, 8)

    with pytest.raises(Overloaded):
        patiently(busy, stop)
    assert len(calls) == 2 and stop.waits == [1.0]  # the wait Overloaded names, on the stop event
    with pytest.raises(InvalidRequest):  # no retry cures it: at once
        patiently(lambda: (_ for _ in ()).throw(InvalidRequest("x", "bad")), None)


def outcome(failure: SearchFailure | None = None) -> SearchOutcome:
    results = () if failure else (SearchResult("Paris", "https://example.org", "Paris is the capital"),)
    return SearchOutcome("fake", "capital of france", "2026-01-01T00:00:00Z", 0.1, results, failure)


def test_a_rate_limited_search_is_waited_out_as_it_says() -> None:
    limited = SearchFailure("rate_limited", "over this service's limit; retry in 7 s")
    limited.retry_after_s = 7
    provider = SearchFailure("rate_limited", "the search provider is rate limiting us")  # names no wait
    answers = iter([outcome(limited), outcome(provider), outcome()])
    service = SimpleNamespace(search=lambda query: next(answers))
    stop = Instant()
    run = EvalRun("r", "n", "d", "h", [], 1)
    searches = Searches(service, run, None, False, stop)
    found = searches._search("capital of france")
    assert found.status == "ok" and stop.waits == [7.0, 5.0]
    # a failure no wait cures is the outcome at once
    network = outcome(SearchFailure("network", "no network"))
    searches = Searches(SimpleNamespace(search=lambda query: network), run, None, False, stop := Instant())
    assert searches._search("q") is network and stop.waits == []
