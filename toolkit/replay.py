"""Replay: what a run record needs to run again on this service, or why it cannot match.

The record's model (routed and ready: the service's part), its hash, served model, adapter and its
hash, and the messages as the chat template renders them now are compared with the record; any
that differ are ``Difference``s. When the model or the adapter is not there at all, there is nothing
to run. Otherwise the plan is a ``Prepared`` request with the record's exact messages, parameters
and seed, and its search snapshot instead of a new search. A local model's record names its decode path
(eager or compiled, ``COMPILE_DECODE``): the replay is held to it, and where this engine cannot take it now
(not compiled here, still warming up, an adapter loaded), that is a difference too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolkit.errors import InvalidRequest
from toolkit.params import GenerationParams, InferRequest, Limits
from toolkit.prepared import Prepared, check_fits
from toolkit.rag import BuiltMessages
from toolkit.registry import ServedModel
from toolkit.results import Difference, InferResult, Replay, RunRecord
from toolkit.search import SearchOutcome


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay runs (``prepared``; None when the model or adapter is not there), what differs, and
    the recorded answer to compare the new one with."""

    differences: tuple[Difference, ...]
    prepared: Prepared | None
    answer: str | None

    def finish(self, result: InferResult) -> Replay:
        return Replay(result, self.answer is not None and result.text == self.answer, self.differences)


def plan_params(record: RunRecord) -> GenerationParams:
    """The record's parameters (checked by ``RunRecord.from_dict``), seed included; unknown names are left out."""
    known = set(GenerationParams.names())
    return GenerationParams(**{k: v for k, v in record.params.items() if k in known})


def plan_replay(
    record: RunRecord,
    route: Callable[[str | None], ServedModel],
    limits: Limits,
    input_limit: Callable[[Any], int],
    force: bool,
    owner: str,
) -> ReplayPlan | Replay:
    """What a replay of ``record`` will run, or the ``Replay`` that says why it cannot (without ``force``).
    ``route``: a model's name to the model on this service, ready; ``input_limit``: an engine's input limit.
    A record is input like any other: this deployment's limits and queue hold for it too."""
    try:
        entry = route(record.model)
    except InvalidRequest:  # no such model here
        return Replay(None, False, (Difference("model", record.model, None),))
    params = entry.resolve(limits, plan_params(record))
    limit = input_limit(entry.engine)
    plan = _plan(record, entry, params, owner, limit)
    if plan.prepared is None or (plan.differences and not force):
        return Replay(None, False, plan.differences)
    check_fits(plan.prepared, "run_record.messages", limit)
    entry.engine.check_room()
    return plan


def _plan(record: RunRecord, entry: ServedModel, params: GenerationParams, owner: str, limit: int) -> ReplayPlan:
    """``entry``: the record's model on this service, ready; ``params``: the record's, resolved for it."""
    engine, info = entry.engine, entry.engine.info
    differences: list[Difference] = []
    if record.model_hash and info.content_hash and record.model_hash != info.content_hash:
        differences.append(Difference("model_hash", record.model_hash, info.content_hash))
    if record.served_model and record.engine == info.kind and record.served_model != info.served_model:
        differences.append(Difference("served_model", record.served_model, info.served_model))
    if record.adapter:
        try:
            engine.check_adapter(record.adapter)
        except InvalidRequest:
            differences.append(Difference("adapter", record.adapter, None))
        else:
            now = engine.adapter_hash(record.adapter)
            if record.adapter_hash and now and now != record.adapter_hash:
                differences.append(Difference("adapter_hash", record.adapter_hash, now))
    # a record is untrusted: its text reaches the model as text, never as a control token
    defang = info.control.defang
    messages = [{"role": m["role"], "content": defang(m["content"])} for m in record.messages]
    if not messages:
        raise InvalidRequest("run_record.messages", "is empty: nothing to replay")
    encoded = engine.encode(messages, limit=limit)
    if record.prompt_text is not None and encoded.prompt_text is not None and encoded.prompt_text != record.prompt_text:
        differences.append(Difference("prompt_text", record.prompt_text[-300:], encoded.prompt_text[-300:]))
    decode = None  # the decode path the record names, held to where this engine can take it
    if record.decode in ("eager", "compiled") and (paths := engine.stats().paths):
        if record.decode in paths:
            decode = record.decode
        else:  # COMPILE_DECODE off here, still warming up, or an adapter loaded: the steps would run eager
            differences.append(Difference("decode", record.decode, paths[0]))
    if any(d.now is None for d in differences):  # a model or adapter that is not there: nothing to run
        return ReplayPlan(tuple(differences), None, record.answer)
    search = SearchOutcome.from_dict(record.search) if record.search is not None else None
    request = InferRequest(
        prompt=messages[-1]["content"] or " ",
        model=record.model,
        adapter=record.adapter,
        params=params,
        web_search=search is not None,
        owner=owner,
    )
    built = BuiltMessages(messages, search.results if search else (), record.dropped_history_turns)
    adapter_hash = engine.adapter_hash(record.adapter) if record.adapter else None
    prepared = Prepared(
        request, params, built, encoded, entry, search, adapter_hash, replay_of=record.request_id, decode=decode
    )
    return ReplayPlan(tuple(differences), prepared, record.answer)
