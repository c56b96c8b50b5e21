"""The cells' answers by what decides them, and the frozen searches: what ``evaluate`` asks, keeps and reuses.

``Answers`` gives a cell its answer from the store, from this run's cell with the same ``Keys`` key, or
generated (``ask``); ``Searches`` makes one search per sample for every cell of it (frozen retrieval), waiting
out a rate limit; ``patiently`` waits out an error a retry may cure (a full queue, a rate limit, a model still
loading: ``toolkit.retry``) as the error says.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from toolkit.errors import SearchFailure, ToolkitError
from toolkit.evals.dataset import Sample
from toolkit.evals.results import EvalRun
from toolkit.evals.runs import RunStore
from toolkit.grounding import Grounding
from toolkit.params import PARAMS, InferRequest, Limits, resolve, split_model
from toolkit.results import Done
from toolkit.retry import RetryPolicy
from toolkit.search import SearchOutcome, search_query

T = TypeVar("T")
ANSWERED = ("stop", "length", "repetition")  # finished answers, kept in the cache (not cancelled or timed out)
SEARCHED = ("ok", "no_results")  # searches that ran: what their cells see is the search's answer
PATIENCE_S = 600  # how long a cell refused with an error a retry may cure keeps trying
# a cell waits what the error names, however long, within its patience (an error naming a longer wait is final)
PATIENCE = RetryPolicy(patience_s=PATIENCE_S, max_wait_s=PATIENCE_S)
SEARCH_RETRY_S = 5  # the wait for a rate-limited search that names none (a provider's; one that came over the wire)


@dataclass(frozen=True)
class Answer:
    """What the checks look at, from a result or from the store."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float | None
    total_s: float
    tokens_per_s: float | None
    grounding: Grounding | None
    sources: tuple[dict[str, Any], ...]
    record: dict[str, Any]

    @property
    def timings(self) -> Any:
        return self  # total_s, as a result's timings have it

    @classmethod
    def of(cls, result: Any) -> Answer:
        return cls(
            result.text,
            result.finish_reason,
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.timings.first_token_s,
            result.timings.total_s,
            result.tokens_per_s,
            result.grounding,
            tuple({"index": s.index, "title": s.title, "url": s.url, "snippet": s.snippet} for s in result.sources),
            result.run_record.to_dict(),
        )

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "grounding"}
        d["grounding"] = self.grounding.to_dict() if self.grounding is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Answer:
        g = data.get("grounding")
        grounding = Grounding.from_dict(g) if g is not None else None
        return cls(**{**data, "grounding": grounding, "sources": tuple(data.get("sources") or ())})


class Searches:
    """Frozen retrieval: one search per sample, made by the first of its cells that needs it (on the pool,
    so that searching overlaps other cells' generation) and reused by every other; a resumed run keeps its
    own snapshots. ``research``: none kept, each cell searches on its own."""

    def __init__(
        self, service: Any, run: EvalRun, runs: RunStore | None, research: bool, stop: threading.Event | None
    ) -> None:
        self.service, self.run, self.runs, self.research, self.stop = service, run, runs, research, stop
        self._kept: dict[str, SearchOutcome] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        if runs is not None and not research:
            for sample_id, snapshot in runs.searches(run.id).items():
                self._kept[sample_id] = outcome = SearchOutcome.from_dict(snapshot, where="search")
                run.searches[sample_id] = outcome.content_hash()

    def _search(self, query: str) -> SearchOutcome:
        """The search; a rate limit (this service's own, or its server's) is waited out as the error says
        (``SEARCH_RETRY_S`` when it names no wait), and so is a call refused with an error a retry may cure, by
        ``patiently``'s policy: a refused search is not what the run asked. The last outcome when it gives up."""
        last: dict[str, Any] = {}  # the last refusal, and its outcome

        def once() -> SearchOutcome:
            outcome = self.service.search(query)
            if outcome.status != "rate_limited" or outcome.failure is None:
                return outcome
            refused = SearchFailure(outcome.failure.kind, outcome.failure.message)
            refused.retry_after_s = outcome.failure.retry_after_s or SEARCH_RETRY_S
            last.update(refused=refused, outcome=outcome)
            raise refused

        try:
            return patiently(once, self.stop)
        except SearchFailure as exc:
            if exc is not last.get("refused"):
                raise
            outcome: SearchOutcome = last["outcome"]
            return outcome

    def get(self, sample: Sample) -> SearchOutcome | None:
        if self.research:
            return None
        with self._lock:
            lock = self._locks.setdefault(sample.id, threading.Lock())
        with lock:  # the other cells of this sample wait for its one search
            if sample.id not in self._kept:
                query = search_query(sample.input)
                outcome = self._search(query)
                # one snapshot for every cell of this run; kept in the store only if the search ran (a failed
                # one is searched again when the run is resumed, as its error cells are asked again)
                if self.runs is not None and outcome.status in SEARCHED:
                    self.runs.save_search(self.run.id, sample.id, outcome.to_dict())
                self.run.searches[sample.id] = outcome.content_hash()
                self._kept[sample.id] = outcome
            return self._kept[sample.id]


class Answers:
    """Answers by what decides them (``Keys``): from the store, or from this run's cell with the same key (a
    second one waits for the first: two variants that ask alike get one answer, not two that batching may
    tell apart), or generated. Only finished answers are kept (not cancelled or timed-out ones)."""

    def __init__(self, runs: RunStore | None) -> None:
        self.runs = runs
        self._mine: dict[str, Answer] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: str | None, ask: Callable[[], Answer]) -> tuple[Answer, bool]:
        """The answer, and whether it was kept from before (the store, or another cell)."""
        if key is None:
            return ask(), False
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._mine:
                return self._mine[key], True
            stored = self.runs.store.cached(key) if self.runs is not None else None
            if stored is not None:
                self._mine[key] = Answer.from_dict(stored)
                return self._mine[key], True
            answer = ask()
            if answer.finish_reason in ANSWERED:
                self._mine[key] = answer
                if self.runs is not None:
                    self.runs.store.cache(key, answer.to_dict())
            return answer, False


class Keys:
    """The cache key of a cell: what decides its answer (the model and its weights, the adapter and its
    weights, the parameters the model's defaults fill, the messages, the search results)."""

    def __init__(self, service: Any, models: Mapping[str, Any]) -> None:
        self.service, self.models = service, models
        self._adapters: dict[str, dict[str, str | None]] = {}
        self._lock = threading.Lock()

    def _adapter_hash(self, model: str, adapter: str) -> str | None:
        with self._lock:
            if model not in self._adapters:
                self._adapters[model] = {a.name: a.adapter_hash for a in self.service.adapters(model)}
            return self._adapters[model].get(adapter)

    def of(self, request: InferRequest, search: SearchOutcome | None) -> str | None:
        model_name, adapter = request.model, request.adapter
        if model_name is None:
            info = next((m for m in self.models.values() if m.default), None)
        else:  # a model's id, or "<model>:<adapter>"; an alias: routing decides, not the key
            found = split_model(model_name, self.models)
            info = self.models[found[0]] if found is not None else None
            adapter = adapter or (found[1] if found is not None else None)
        if info is None:
            return None
        content = {
            "model": [info.id, info.content_hash, info.served_model],
            "adapter": [adapter, self._adapter_hash(info.id, adapter) if adapter else None],
            "params": self._params(request, info),
            "messages": [request.system_prompt, [[t.role, t.content] for t in request.history], request.prompt],
            "web_search": request.web_search,
            "search": search.content_hash() if search is not None else None,
            "timeout_s": request.timeout_s,  # a shorter time can end it otherwise
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()

    def _params(self, request: InferRequest, info: Any) -> dict[str, Any]:
        """The parameters the service runs the request with (``toolkit.params.resolve``, against the model's
        defaults and this service's limits): a parameter given at its default and one left out are one key. A
        service that does not say its limits (a remote one) leaves ``max_new_tokens`` unclamped here."""
        limits = getattr(self.service, "limits", None)
        if not isinstance(limits, Limits):
            limits = Limits(max_new_tokens=2**63 - 1)
        resolved = resolve(request.params, info.defaults, limits).to_dict()
        # as the engine reads them: a float parameter given as 1 is 1.0
        return {k: float(v) if PARAMS[k].kind == "float" and v is not None else v for k, v in resolved.items()}


def patiently(call: Callable[[], T], stop: threading.Event | None) -> T:
    """``call()``; an error a retry may cure (a full queue or a rate limit: someone else's load, or this run's
    own; a model still loading) is waited out as the error says, not failed (``toolkit.retry``): for
    ``PATIENCE_S`` at most, and not once ``stop`` is set."""
    return PATIENCE.call(call, stop=stop)


def ask(service: Any, request: InferRequest, search: SearchOutcome | None, stop: threading.Event | None) -> Answer:
    def once() -> Answer:
        for event in service.stream(request, search=search):
            if isinstance(event, Done):
                return Answer.of(event.result)
        raise ToolkitError("the stream ended without a result")

    return patiently(once, stop)
