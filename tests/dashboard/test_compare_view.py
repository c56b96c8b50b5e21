"""The Compare tab's view with an in-process service on the real bundled model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dashboard.compare import CompareView, diff_html
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService

DOCS = Path(__file__).resolve().parents[1] / "data" / "docs"


def test_three_columns_answer_as_their_settings_say(adapter_service: InferenceService) -> None:
    before = adapter_service.searcher
    adapter_service.searcher = Searcher(LocalDocsBackend(DOCS))
    try:
        view = CompareView(adapter_service, columns=3, max_new_tokens=32)
        name = adapter_service.registry.default.name
        view.start_from([(name, name)], name, "", False, 0.0)
        view.all[1].adapter.value = "quenby"
        view.all[2].web.value = True
        view.run("Which creature serves as the mascot of the Kestrel Institute?")
        view.wait()
        results = [c.result for c in view.columns]
        assert all(r is not None for r in results)
        assert results[1].adapter == "quenby" and "Quenby" in results[1].text and "Quenby" not in results[0].text
        assert results[2].search_status == "ok" and results[2].grounding is not None
        assert "tk-mark" in view.all[2].output.value and "sentence" in view.all[2].output.value  # marks and summary
        view.diff.value = True  # columns 1 and 2 differ: their differing words are marked
        assert (
            '<mark class="tk-diff">' in view.all[0].output.value
            and '<mark class="tk-diff">' in view.all[1].output.value
        )
        assert "tk-diff" not in view.all[2].output.value
        assert all("tokens/s" in c.output.value for c in view.all[:2])  # the diffed columns keep their stats
        view.diff.value = False
        view.all[0].temperature.value = 0.0
        view.run("Count from one to five hundred, one number per line.")
        import time

        deadline = time.monotonic() + 30
        while not all(c.text for c in view.columns) and time.monotonic() < deadline:
            time.sleep(0.05)
        view.stop()
        view.wait()
        assert all(c.result is not None and c.result.finish_reason == "cancelled" for c in view.columns)
    finally:
        adapter_service.searcher = before


def test_diff_marks_only_the_differing_words_and_escapes() -> None:
    out = diff_html("The bridge opened in 1994 <b>.", "The bridge opened in 1872 <b>.")
    assert out == 'The bridge opened in <mark class="tk-diff">1994</mark> &lt;b&gt;.'


def test_a_bad_column_shows_its_error(service: Any) -> None:
    view = CompareView(service, columns=2, max_new_tokens=8)
    view.all[1].adapter.options = [("(base model)", ""), ("pirate", "pirate")]
    view.all[1].adapter.value = "pirate"
    view.run("Hi")
    view.wait()
    # refused before anything ran (compare checks every variant first): the bad column says why
    assert "unknown adapter" in view.all[1].output.value and "variants[2].adapter" in view.all[1].output.value
    assert view.all[0].result is None and "column 2" in view.all[0].output.value
