"""Evaluations over RemoteService against a real server: the same rows as in process; the server's search
as a snapshot (the search query) that infer and inferStream take back, so variants share their sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gqlhttp import code_of, post

from toolkit.client import RemoteService
from toolkit.errors import InvalidRequest
from toolkit.search import LocalDocsBackend, Searcher, SearchOutcome
from toolkit.service import InferenceService

DOCS = Path(__file__).resolve().parents[1] / "data" / "docs"
SAMPLES = [
    {"id": "capital", "input": "What is the capital of France?", "target": "Paris"},
    {
        "id": "zorvath",
        "input": "What is the capital city of the planet Zorvath?",
        "web_search": True,
        "assert": [{"type": "icontains", "value": "Quillborough"}, {"type": "grounded", "value": 0.5}],
    },
]
VARIANTS = [
    {"label": "as written", "temperature": 0, "max_new_tokens": 32},
    {"label": "no search", "web_search": False, "temperature": 0, "max_new_tokens": 32},
]


class Counting(LocalDocsBackend):
    calls = 0

    def search(self, query: str, max_results: int) -> Any:
        Counting.calls += 1
        return super().search(query, max_results)


@pytest.fixture(scope="module")
def grounded(server_service: InferenceService) -> Iterator[InferenceService]:
    service = InferenceService(
        server_service.settings, loaded=server_service.loaded, searcher=Searcher(Counting(DOCS), cache_ttl_s=0)
    )
    yield service
    service.close(grace_s=0)


@pytest.fixture()
def remote(make_server: Any, grounded: InferenceService) -> RemoteService:
    return RemoteService(make_server(grounded, rate_burst=10_000).url)


def test_an_evaluation_over_the_wire_gives_the_in_process_rows(
    remote: RemoteService, grounded: InferenceService, tmp_path: Path
) -> None:
    Counting.calls = 0
    there = remote.evaluate(SAMPLES, VARIANTS, store=tmp_path / "there.db", progress=False)
    assert Counting.calls == 1  # one search on the server, shared by the cells that search
    here = grounded.evaluate(SAMPLES, VARIANTS, store=tmp_path / "here.db", progress=False)
    # the same answers where nothing was searched; a searched prompt is the same too (a keyed fence), but
    # batched otherwise it may part at a near tie, so there the same verdict (and a replay of the record below)
    assert [(r.sample_id, r.variant, r.passed, r.text if r.search is None else None) for r in there.rows] == [
        (r.sample_id, r.variant, r.passed, r.text if r.search is None else None) for r in here.rows
    ]
    assert there.row("zorvath", "as written").passed and not there.row("zorvath", "no search").passed  # type: ignore[union-attr]
    assert there.searches == here.searches  # the same snapshot, whichever side searched
    replay = remote.replay(there.row("zorvath", "as written").record)  # type: ignore[union-attr, arg-type]
    assert replay.identical


def test_the_search_query_and_a_snapshot_passed_back(remote: RemoteService) -> None:
    Counting.calls = 0
    snapshot = remote.search("capital of Zorvath")
    assert isinstance(snapshot, SearchOutcome) and snapshot.ok and "Quillborough" in snapshot.results[0].snippet
    doctored = SearchOutcome(
        snapshot.provider,
        snapshot.query,
        snapshot.at,
        snapshot.seconds,
        (snapshot.results[0].__class__("Zorvath", "docs://zorvath.md", "The capital of Zorvath is Brindlemoor."),),
    )
    result = remote.infer(
        "What is the capital city of the planet Zorvath?",
        web_search=True,
        search=doctored,
        temperature=0,
        max_new_tokens=24,
    )
    assert Counting.calls == 1 and "Brindlemoor" in result.text  # the snapshot it was given, no new search
    assert result.run_record.search["results"][0]["snippet"].endswith("Brindlemoor.")  # type: ignore[index]
    streamed = list(
        remote.stream(
            "What is the capital city of the planet Zorvath?",
            web_search=True,
            search=doctored,
            temperature=0,
            max_new_tokens=24,
        )
    )
    assert Counting.calls == 1 and streamed[-1].result.text == result.text  # type: ignore[union-attr]


def test_a_bad_snapshot_and_a_costly_alias_are_refused(remote: RemoteService) -> None:
    with pytest.raises(InvalidRequest) as caught:
        remote.execute(
            'mutation($s: JSON) { infer(prompt: "hi", webSearch: true, search: $s) { text } }',
            {"s": {"provider": "x", "query": "q", "at": "now", "seconds": 0, "results": [{"title": 1}]}},
        )
    assert caught.value.field.startswith("search.results")
    status, _, payload = post(remote.url, {"query": '{ a: search(query: "x") b: search(query: "y") }'})
    assert status == 400 and code_of(payload) == "BAD_USER_INPUT" and "search" in payload["errors"][0]["message"]
    with pytest.raises(InvalidRequest) as caught:
        remote.search("")
    assert caught.value.field == "query"
