"""The Evaluate tab's view with an in-process service on the real bundled model: a file of the folder,
two variants, the matrix, a cell's answer and its replay, the diff; an upload with a bad line; Stop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dashboard.evaluate import EvaluateView, dataset_files
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "tests" / "data" / "docs"
QUESTIONS = (
    '{"id": "zorvath", "input": "What is the capital city of the planet Zorvath?", "target": "Quillborough"}\n'
    '{"id": "france", "input": "What is the capital of France?", "target": "Paris"}\n'
)


@pytest.fixture()
def view(service: InferenceService, tmp_path: Path) -> EvaluateView:
    before = service.searcher
    service.searcher = Searcher(LocalDocsBackend(DOCS))
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "capitals.jsonl").write_text(QUESTIONS)
    (tmp_path / "sets" / "notes.txt").write_text("not a dataset")
    name = service.registry.default.name
    view = EvaluateView(service, folder=tmp_path / "sets")
    view.start_from([(name, name)], name, "", False, 0.0)  # variant 2: web search on
    view.max_new_tokens.value = 32
    yield view
    service.searcher = before


def test_the_folder_lists_dataset_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("- input: x\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "b.jsonl").write_text("{}\n")
    (tmp_path / "c.md").write_text("# no")
    assert dataset_files(tmp_path) == [tmp_path / "a.yaml"]


def test_a_run_shows_summary_chart_matrix_cell_replay_and_diff(view: EvaluateView) -> None:
    view.file.value = view.file.options[1][1]
    view.start()
    view.wait()
    run = view.run
    assert run is not None and run.status == "done" and view.progress.value == 4
    assert "done: 4 / 4" in view.status.value
    zorvath = run.row("zorvath", run.labels[1])
    assert zorvath is not None and zorvath.passed and not run.row("zorvath", run.labels[0]).passed  # type: ignore[union-attr]
    assert "pass_rate" in view.summary.value and bytes(view.chart.value).startswith(b"\x89PNG")
    cells = [c for c in view.matrix.children if "tk-eval-cell" in c._dom_classes]
    assert [c.description for c in cells] == ["✗", "✓", "✓", "✓"]
    cells[1].click()  # zorvath, with web search: the answer, its sources and checks
    assert (
        "Quillborough" in view.detail.value and "tk-sources" in view.detail.value and "✓ icontains" in view.detail.value
    )
    view.replay_button.click()
    assert "identical" in view.replayed.value.lower()
    # the diff starts on the two variants of this run, not one against itself
    assert (view.against.value, view.b.value) == (("", run.labels[0]), run.labels[1])
    assert "1 fixed, 0 broken" in view.diff.value
    # the report to download: the whole run as one HTML file, its diff the one chosen
    import base64
    import re

    link = re.search(
        r'download="(evaluation-[^"]+\.html)" href="data:text/html;charset=utf-8;base64,([^"]+)"', view.report.value
    )
    assert link is not None and link.group(1) == f"evaluation-{run.id}.html"
    page = base64.b64decode(link.group(2)).decode()
    assert "Quillborough" in page and "1 fixed, 0 broken" in page and "<svg" in page


def test_an_uploaded_file_with_a_bad_line_names_it(view: EvaluateView) -> None:
    bad = b'{"input": "ok", "target": "k"}\n{"input": "x", "assert": [{"type": "sounds-like"}]}\n'
    view.upload.value = (
        {
            "name": "mine.jsonl",
            "type": "",
            "size": len(bad),
            "content": memoryview(bad),
            "last_modified": datetime.now(UTC),
        },
    )
    view.start()
    assert "mine.jsonl, line 2, assert[0].type" in view.status.value and not view.busy


def test_stop_keeps_what_finished(view: EvaluateView) -> None:
    view.file.value = view.file.options[1][1]
    view.max_new_tokens.value = 200
    view.all[0].temperature.value = 0.0
    stopped = threading.Event()

    def stop_after_first(change: dict[str, int]) -> None:
        if change["new"] >= 1 and not stopped.is_set():
            stopped.set()
            view.stop_button.click()

    view.progress.observe(stop_after_first, names="value")
    view.start()
    view.wait()
    assert view.run is not None and view.run.status == "interrupted" and 1 <= len(view.run.rows) < 4
    assert "stopped" in view.status.value
