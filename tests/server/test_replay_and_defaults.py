"""Over GraphQL and RemoteService: a run record replays, and a request without parameters gets the
model's defaults."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from toolkit.results import RunRecord
from toolkit.service import InferenceService

SHORT = {"max_new_tokens": 32}


def test_replay_over_graphql_and_remote_service(server: Any) -> None:
    from toolkit.client import RemoteService

    remote = RemoteService(server.url)
    first = remote.infer("Name a colour.", temperature=0.9, **SHORT)
    assert isinstance(first.run_record, RunRecord) and first.run_record.answer == first.text
    replay = remote.replay(first.run_record)
    assert replay.identical and replay.result is not None and replay.result.text == first.text
    changed = remote.replay(replace(first.run_record, model_hash="sha256:x"))
    assert changed.result is None and changed.differences[0].field == "model_hash"


def test_defaults_reach_a_request_that_leaves_parameters_out(server_service: InferenceService, server: Any) -> None:
    from toolkit.client import RemoteService

    defaults = {m.id: m.defaults for m in server_service.models()}[server_service.registry.default.name]
    assert defaults["temperature"] == 0.0  # the bundled model's recipe (bench/quality.py)
    result = RemoteService(server.url).infer("What is the capital of France?")  # no params at all
    assert result.run_record.params["temperature"] == 0.0 and result.run_record.params["max_new_tokens"] == 256
    assert "Paris" in result.text
    explicit = server_service.infer("Hi", temperature=0.5, max_new_tokens=4)
    assert explicit.run_record.params["temperature"] == 0.5  # a given parameter wins
