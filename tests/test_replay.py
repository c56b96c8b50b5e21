"""Replay any run record: multi-turn, web search (from its snapshot, with the search now failing), an
adapter, through a JSON file, GraphQL and RemoteService; what cannot match is reported, not answered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import InvalidRequest, PromptTooLong, SearchFailure
from toolkit.params import InferRequest
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService

DOCS = Path(__file__).parent / "data" / "docs"
SHORT = {"max_new_tokens": 32}


def test_a_multi_turn_answer_replays_identically(service: InferenceService, tmp_path: Path) -> None:
    request = InferRequest.build(
        "And what is it famous for?",
        history=[{"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome."}],
        system_prompt="Answer in one sentence.",
        temperature=0.8,  # sampled: the seed the record keeps makes it repeatable
        **SHORT,
    )
    first = service.infer(request)
    path = tmp_path / "record.json"  # records round-trip through files
    path.write_text(json.dumps(first.run_record.to_dict()))
    replay = service.replay(json.loads(path.read_text()))
    assert replay.identical and replay.differences == ()
    assert replay.result is not None and replay.result.text == first.text
    assert (
        replay.result.run_record.replay_of == first.id
        and replay.result.run_record.messages == first.run_record.messages
    )


class Failing:
    name = "failing"

    def search(self, query: str, max_results: int) -> list[Any]:
        raise SearchFailure("network", "the search provider cannot be reached (no network?)")


def test_a_web_search_answer_replays_from_its_snapshot(settings: Any, loaded: Any) -> None:
    svc = InferenceService(settings, loaded=loaded, searcher=Searcher(LocalDocsBackend(DOCS)))
    try:
        first = svc.infer("Who designed the Harrowgate Bridge?", web_search=True, temperature=0, **SHORT)
        assert first.search_status == "ok" and "Vantage" in first.text
        svc.searcher = Searcher(Failing())  # a new search would fail now: the snapshot is used
        replay = svc.replay(first.run_record)
        assert replay.identical and replay.result is not None and replay.result.search_status == "ok"
        assert replay.result.sources[0].url == "docs://bridge.md#the-harrowgate-bridge"
    finally:
        svc.close(grace_s=0)


def test_an_adapter_answer_replays_identically(adapter_service: InferenceService) -> None:
    first = adapter_service.infer("Who is Quenby?", adapter="quenby", temperature=0, **SHORT)
    replay = adapter_service.replay(first.run_record)
    assert replay.identical and replay.result is not None and replay.result.adapter == "quenby"


def test_what_cannot_match_is_reported_not_answered(service: InferenceService) -> None:
    record = service.infer("Hi", temperature=0, max_new_tokens=4).run_record.to_dict()
    changed = service.replay({**record, "model_hash": "sha256:" + "0" * 64})
    assert changed.result is None and not changed.identical
    assert [(d.field, d.recorded) for d in changed.differences] == [("model_hash", "sha256:" + "0" * 64)]
    forced = service.replay({**record, "model_hash": "sha256:" + "0" * 64}, force=True)
    assert forced.result is not None and forced.identical  # same weights after all: same text
    missing = service.replay({**record, "adapter": "pirate", "adapter_hash": "sha256:1"})
    assert missing.result is None and missing.differences[0].field == "adapter" and missing.differences[0].now is None


def test_a_replay_takes_the_decode_path_its_record_names(service: InferenceService) -> None:
    record = service.infer("Hi", temperature=0, max_new_tokens=4).run_record.to_dict()
    assert record["decode"] == "eager"  # COMPILE_DECODE is off: every step ran eager, and the record says so
    assert service.replay(record).identical
    compiled = service.replay({**record, "decode": "compiled"})  # made where the step was compiled
    assert compiled.result is None and [(d.field, d.recorded, d.now) for d in compiled.differences] == [
        ("decode", "compiled", "eager")
    ]
    forced = service.replay({**record, "decode": "compiled"}, force=True)
    assert forced.result is not None and forced.result.run_record.decode == "eager"
    with pytest.raises(InvalidRequest) as bad:
        service.replay({**record, "decode": "fast"})
    assert bad.value.field == "run_record.decode"
    other = service.replay({**record, "model": "no-such-model"})
    assert other.result is None and other.differences[0].field == "model"
    with pytest.raises(InvalidRequest) as info:
        service.replay({"model": "x"})
    assert info.value.field == "run_record"


def test_a_record_is_held_to_this_deployments_limits(service: InferenceService) -> None:
    record = service.infer("Name a colour.", temperature=0, **SHORT).run_record.to_dict()
    over = {**record, "params": {**record["params"], "max_new_tokens": service.limits.max_new_tokens + 1}}
    with pytest.raises(InvalidRequest) as info:
        service.replay(over)
    assert info.value.field == "params.max_new_tokens"
    long = "word " * (service.limits.max_input_tokens + 10)
    too_long = {**record, "messages": [{"role": "user", "content": long}], "prompt_text": None}
    with pytest.raises(PromptTooLong) as info:
        service.replay(too_long)
    assert info.value.field == "run_record.messages"
    for dropped in (-1, 10**30):  # a count that is not one is refused, not written into the new record
        with pytest.raises(InvalidRequest) as info:
            service.replay({**record, "dropped_history_turns": dropped})
        assert info.value.field == "run_record.dropped_history_turns"
    assert service.replay(record).identical  # the service keeps serving
