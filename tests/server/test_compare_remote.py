"""compare over RemoteService: the variants as concurrent streams on the server give the in-process answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService

DOCS = Path(__file__).resolve().parents[1] / "data" / "docs"
QUESTION = "Which creature serves as the mascot of the Kestrel Institute?"
VARIANTS = [{"label": "base"}, {"label": "adapter", "adapter": "quenby"}, {"label": "web", "web_search": True}]


@pytest.fixture()
def searching(served: InferenceService) -> Any:
    before = served.searcher
    served.searcher = Searcher(LocalDocsBackend(DOCS))
    yield served
    served.searcher = before


def test_compare_over_remote_service(make_server: Any, searching: InferenceService) -> None:
    from toolkit.client import RemoteService

    running = make_server(searching, rate_burst=10_000)
    remote = RemoteService(running.url).compare(QUESTION, VARIANTS, temperature=0, max_new_tokens=32)
    local = searching.compare(QUESTION, VARIANTS, temperature=0, max_new_tokens=32)
    there, here = remote.texts(), local.texts()
    # without search, the same answers; with it the same prompt (the fence is keyed by the installation and
    # the request), but another batch can part greedy at a near tie: each side's web answer is its record's replay
    assert {k: there[k] for k in ("base", "adapter")} == {k: here[k] for k in ("base", "adapter")}
    web = remote["web"].result
    assert web is not None and "Quenby" in web.text and searching.replay(web.run_record).identical
    assert len(remote.to_dataframe()) == 3
