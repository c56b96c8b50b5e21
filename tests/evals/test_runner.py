"""evaluate on the real bundled model: a planted change found exactly, with its p-value; one search per
question, shared; unchanged cells answered from the store; Ctrl-C and Stop keep what finished, and a
resumed run does only the rest; bad variants refused before anything runs; any cell replays."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

from toolkit.errors import InvalidRequest
from toolkit.evals import EvalRow, EvalRun, evaluate, load_dataset, open_run, runs
from toolkit.search import LocalDocsBackend, Searcher
from toolkit.service import InferenceService

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "tests" / "data" / "docs"
EXAMPLES = ROOT / "evals" / "examples" / "quality.yaml"
GREEDY = {"temperature": 0, "max_new_tokens": 40}
# the sample decides (the grounded questions search) against the planted change: nothing searches
PLANTED = [{"label": "as written", **GREEDY}, {"label": "no search", "web_search": False, **GREEDY}]


class Counting(LocalDocsBackend):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.queries: list[str] = []

    def search(self, query: str, max_results: int) -> Any:
        self.queries.append(query)
        return super().search(query, max_results)


@pytest.fixture(scope="module")
def searching(service: InferenceService) -> Any:
    before = service.searcher
    backend = Counting(DOCS)
    service.searcher = Searcher(backend, cache_ttl_s=0, per_minute=10_000)  # every search reaches the backend
    yield service, backend
    service.searcher = before


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three closed-book questions and the nine grounded ones of the example set."""
    samples = load_dataset(EXAMPLES).samples
    chosen = [s for s in samples if s.id in ("closed-01", "closed-03", "closed-04") or s.id.startswith("grounded-")]
    import json

    path = tmp_path_factory.mktemp("evals") / "subset.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {"id": s.id, "input": s.input, "web_search": s.web_search, "assert": [c.to_dict() for c in s.checks]}
            )
            + "\n"
            for s in chosen
        )
    )
    return path


@pytest.fixture(scope="module")
def planted(searching: Any, subset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalRun, Path, int]:
    service, backend = searching
    store = tmp_path_factory.mktemp("planted") / "runs.db"
    backend.queries.clear()
    run = evaluate(service, subset, PLANTED, store=store, progress=False)
    return run, store, len(backend.queries)


def grounded_passed(run: EvalRun) -> list[str]:
    """The grounded questions the searching variant got (greedy is not batch-invariant to the last token:
    one near a tie may miss in a given run; the diff must then list exactly the others)."""
    return [r.sample_id for r in run.rows if r.variant == "as written" and r.passed and r.sample_id.startswith("g")]


def test_a_planted_change_is_found_exactly_with_its_p_value(planted: tuple[EvalRun, Path, int]) -> None:
    run, _, searches = planted
    grounded = grounded_passed(run)
    assert searches == 9  # one search per question that searches, not one per cell
    assert run.status == "done" and len(run.rows) == 24 and not any(r.error for r in run.rows)
    assert len(grounded) >= 8  # 9 of 9 in every run but one seen in the whole suite
    diff = run.diff("as written", "no search")
    assert [f.sample_id for f in diff.broken] == grounded and not diff.fixed
    assert diff.p_value == pytest.approx(2 / 2 ** len(grounded)) and diff.significant
    assert list(diff.retrieval_changed) == [f"grounded-{i:02d}" for i in range(1, 10)]  # not only generation
    summary = run.summary().set_index("name")
    assert summary.loc["as written", "passed"] == 3 + len(grounded) and summary.loc["no search", "passed"] == 3
    assert summary.loc["no search", "ci_high"] < summary.loc["as written", "ci_low"]
    for closed in ("closed-01", "closed-03", "closed-04"):  # asked alike by both variants: one answer, shared
        pair = [run.row(closed, "as written"), run.row(closed, "no search")]
        assert pair[0].text == pair[1].text and sorted(r.cached for r in pair) == [False, True]  # type: ignore[union-attr]


def test_every_cell_replays_from_its_record(planted: tuple[EvalRun, Path, int], searching: Any) -> None:
    service, backend = searching
    run = planted[0]
    before = len(backend.queries)
    for row in (run.row("grounded-01", "as written"), run.row("closed-01", "no search")):
        assert row is not None and row.record is not None
        replay = service.replay(row.record)
        assert replay.identical and replay.result.text == row.text
    assert len(backend.queries) == before  # the snapshot, not a new search


def test_the_frame_the_matrix_the_chart_and_the_json(planted: tuple[EvalRun, Path, int]) -> None:
    run = planted[0]
    frame = run.to_dataframe()
    assert len(frame) == 24 and {"sample_id", "variant", "passed", "icontains-any", "text", "record_id"} <= set(frame)
    passed = 3 + len(grounded_passed(run))
    assert frame.groupby("variant")["passed"].sum().to_dict() == {"as written": passed, "no search": 3}
    matrix = run._repr_html_()
    assert matrix.count("<tr>") == 12 + 3 and matrix.count("✓") == passed + 3 and matrix.count("✗") == 21 - passed
    figure = run.chart()
    assert len(figure.axes[0].patches) == 2
    report = run.to_json(run.diff("as written", "no search"))
    assert report["run_id"] == run.id and [v["pass_rate"] for v in report["variants"]] == [
        round(passed / 12, 4),
        0.25,
    ]
    assert len(report["rows"]) == 24 and report["diff"]["p_value"] < 0.05


def test_an_unchanged_run_answers_from_the_store_and_a_changed_cell_generates(
    planted: tuple[EvalRun, Path, int], searching: Any, subset: Path
) -> None:
    service, _ = searching
    first, store, _ = planted
    again = evaluate(service, subset, PLANTED, store=store, progress=False)
    assert all(r.cached for r in again.rows) and again.id != first.id
    assert [r.text for r in again.rows] == [r.text for r in first.rows]
    changed = [PLANTED[0], {**PLANTED[1], "max_new_tokens": 24}]  # "no search" answers anew
    third = evaluate(service, subset, changed, store=store, progress=False)
    assert {r.variant for r in third.rows if not r.cached} == {"no search"}
    assert all(r.cached for r in third.rows if r.variant == "as written")
    assert [r["id"] for r in runs(store).to_dict("records")][:3] == [third.id, again.id, first.id]
    reopened = open_run(first.id, store)
    assert [(r.sample_id, r.variant, r.passed, r.text) for r in reopened.rows] == [
        (r.sample_id, r.variant, r.passed, r.text) for r in first.rows
    ]
    assert reopened.searches == first.searches and reopened.diff("as written", "no search") == first.diff(
        "as written", "no search"
    )
    assert first.diff("as written", "as written", again).pairs == 12  # two runs, paired


def test_a_grounded_run_twice_without_the_cache_gives_the_same_greedy_answers(searching: Any, subset: Path) -> None:
    """Each run searches on its own and nothing comes from a store: the same sources make the same prompt (the
    fence around them is keyed, not random), so the same greedy answers, cell by cell."""
    service, backend = searching
    variants = [{"label": "grounded", "temperature": 0, "max_new_tokens": 32}]
    grounded = load_dataset(subset).chosen(pattern="grounded-0[1-5]")
    before = len(backend.queries)
    first = evaluate(service, grounded, variants, store=False, progress=False, concurrency=1)
    second = evaluate(service, grounded, variants, store=False, progress=False, concurrency=1)
    assert len(backend.queries) - before == 2 * 5 and not any(r.cached for r in first.rows + second.rows)
    assert [r.text for r in second.rows] == [r.text for r in first.rows]
    assert [r.record["prompt_text"] for r in second.rows] == [r.record["prompt_text"] for r in first.rows]  # type: ignore[index]


def test_a_failed_search_is_an_error_cell_not_a_failure_of_the_model(service: InferenceService) -> None:
    """ddgs cannot reach the internet here: the grounded cells have no verdict (the model was never asked
    without the sources the variant promised), the closed-book one answers; and research=True says the same."""
    from toolkit.search import DDGSBackend

    before = service.searcher
    service.searcher = Searcher(DDGSBackend(timeout_s=5), cache_ttl_s=0, per_minute=10_000)
    samples = [
        {"id": "searched", "input": "Who designed the Harrowgate Bridge?", "target": "Vantage", "web_search": True},
        {"id": "closed", "input": "What is the capital of France?", "target": "Paris"},
    ]
    try:
        for research in (False, True):
            run = evaluate(service, samples, [{"label": "v", **GREEDY}], store=False, progress=False, research=research)
            searched, closed = run.row("searched", "v"), run.row("closed", "v")
            assert searched is not None and not searched.scored and searched.error_code == "SEARCH_NETWORK", searched
            assert closed is not None and closed.scored and closed.passed
            summary = run.variant_summary("v")
            assert (summary["n"], summary["errors"], summary["pass_rate"]) == (1, 1, 1.0)
    finally:
        service.searcher = before


def test_ctrl_c_keeps_the_finished_cells_and_resume_does_the_rest(searching: Any, subset: Path, tmp_path: Path) -> None:
    service, _ = searching
    store = tmp_path / "runs.db"
    variants = [{"label": "short", "temperature": 0, "max_new_tokens": 12}]
    finished: list[EvalRow] = []

    def interrupt(row: EvalRow) -> None:
        finished.append(row)
        if len(finished) == 3:
            raise KeyboardInterrupt  # as a kernel interrupt lands in the main thread

    run = evaluate(service, subset, variants, store=store, progress=False, concurrency=2, on_row=interrupt)
    assert run.status == "interrupted" and 3 <= len(run.rows) < 12
    assert open_run(run.id, store).status == "interrupted"
    kept = {r.sample_id: r.text for r in run.rows}
    resumed = evaluate(service, subset, variants, store=store, progress=False, resume=run.id)
    assert resumed.id == run.id and resumed.status == "done" and len(resumed.rows) == 12
    assert {r.sample_id: r.text for r in resumed.rows if r.sample_id in kept} == kept
    assert [r.sample_id for r in resumed.rows] == [r.sample_id for r in open_run(run.id, store).rows]
    with pytest.raises(InvalidRequest, match="other questions or variants"):
        evaluate(service, subset, [{**variants[0], "max_new_tokens": 13}], store=store, resume=run.id)


def test_stop_ends_a_run_between_cells(searching: Any, subset: Path) -> None:
    service, _ = searching
    stop = threading.Event()
    run = evaluate(
        service,
        subset,
        [{"label": "v", "temperature": 0, "max_new_tokens": 8}],
        store=False,
        progress=False,
        concurrency=1,
        stop=stop,
        on_row=lambda row: stop.set(),
    )
    assert run.status == "interrupted" and 1 <= len(run.rows) < 12


@pytest.mark.parametrize(
    "variant,field",
    [
        ({"model": "no-such-model"}, "variants[bad].model"),
        ({"adapter": "no-such-adapter"}, "variants[bad].adapter"),
        ({"temperature": -1}, "variants[bad].params.temperature"),
        ({"sentiment": "happy"}, "variants[bad].sentiment"),
    ],
)
def test_a_bad_variant_is_refused_before_any_search(
    searching: Any, subset: Path, variant: dict[str, Any], field: str
) -> None:
    service, backend = searching
    before = len(backend.queries)
    with pytest.raises(InvalidRequest) as caught:
        evaluate(service, subset, [{"label": "fine"}, {"label": "bad", "web_search": True, **variant}], store=False)
    assert caught.value.field == field
    assert len(backend.queries) == before


def test_a_judge_that_is_not_served_is_refused_at_load(service: InferenceService, tmp_path: Path) -> None:
    path = tmp_path / "judged.jsonl"
    path.write_text('{"input": "Hi", "assert": [{"type": "llm-rubric", "value": "kind", "judge": "gpt-9"}]}\n')
    with pytest.raises(InvalidRequest, match=r"judged.jsonl, line 1, assert\[0\].judge: 'gpt-9' is not a configured"):
        evaluate(service, path, [{"label": "v"}], store=False)


def test_a_rubric_is_judged_by_a_served_model(service: InferenceService) -> None:
    model = service.models()[0].id
    run = evaluate(
        service,
        [
            {
                "input": "What is the capital of France?",
                "assert": [{"type": "llm-rubric", "value": "It names Paris.", "judge": model}],
            }
        ],
        [{"label": "v", "temperature": 0, "max_new_tokens": 16}],
        store=False,
        progress=False,
    )
    score = run.rows[0].scores[0]
    assert score.check == "llm-rubric" and score.record_id is not None and model in score.reason


def test_the_async_twin_and_cancelling_it(service: InferenceService, tmp_path: Path) -> None:
    import asyncio
    import time

    store = tmp_path / "runs.db"
    samples = [{"id": str(i), "input": f"What is {i} plus {i}?", "target": str(2 * i)} for i in range(1, 7)]
    variant = [{"label": "v", "temperature": 0, "max_new_tokens": 24}]

    async def main() -> tuple[EvalRun, str]:
        whole = await service.aevaluate(samples[:2], variant, store=store, progress=False)
        task = asyncio.ensure_future(service.aevaluate(samples, variant, store=store, progress=False, concurrency=1))
        deadline = time.monotonic() + 120
        while not any(r["cells"] >= 1 and r["id"] != whole.id for r in runs(store).to_dict("records")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return whole, next(r["id"] for r in runs(store).to_dict("records") if r["id"] != whole.id)

    whole, cancelled = asyncio.run(main())
    assert whole.status == "done" and len(whole.rows) == 2
    deadline = time.monotonic() + 120  # the run's thread sees the stop between cells, and records it
    while open_run(cancelled, store).status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stopped = open_run(cancelled, store)
    assert stopped.status == "interrupted" and 1 <= len(stopped.rows) < 6


# ----- no check hangs a run, and Ctrl-C always ends one ---------------------------------------------

SEVENTY = "The capital of France is Paris and it is a large and rather old city!!"


def test_a_regex_check_out_of_time_is_an_error_cell_and_the_run_finishes(
    service: InferenceService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is fixed (70 characters), the checks real: the issue's pattern gives a verdict at once, one
    that backtracks without end runs out of time and leaves its cell without a verdict, not failed."""
    from toolkit.evals import assertions, runner
    from toolkit.evals.answers import Answer

    def answered(service: Any, request: Any, search: Any, stop: Any) -> Answer:
        return Answer(SEVENTY, "stop", 12, 18, 0.1, 0.4, 45.0, None, (), {"request_id": request.request_id})

    monkeypatch.setattr(runner, "ask", answered)
    monkeypatch.setattr(assertions, "REGEX_TIMEOUT_S", 0.2)
    store = tmp_path / "runs.db"
    samples = [
        {"id": "issue", "input": "Tell me about Paris.", "assert": [{"type": "regex", "value": r"^(\w+\s?)*$"}]},
        {
            "id": "runaway",
            "input": "Tell me about Paris, again.",
            "assert": [
                {"type": "icontains", "value": "Paris"},
                {"type": "regex", "value": r"^(?:[\w ]|[\w ](?=[\w ]))*$"},
            ],
        },
        {"id": "plain", "input": "And once more?", "target": "Paris"},
    ]
    run = evaluate(service, samples, [{"label": "v"}], store=store, progress=False)
    assert run.status == "done" and [r.sample_id for r in run.rows] == ["issue", "runaway", "plain"]
    issue, runaway, plain = run.rows
    assert issue.scored and not issue.passed and issue.scores[0].reason == "no match"
    assert not runaway.scored and runaway.error_code == "CHECK_TIMEOUT" and runaway.text == SEVENTY
    assert runaway.error is not None and runaway.error.startswith(
        "assert[1] regex check timed out after 0.2 s on a 70-character answer: simplify the pattern"
    )
    assert plain.scored and plain.passed
    summary = run.variant_summary("v")
    assert (summary["n"], summary["errors"], summary["pass_rate"]) == (2, 1, 0.5)
    stored = open_run(run.id, store)
    assert stored.status == "done" and stored.row("runaway", "v").error_code == "CHECK_TIMEOUT"  # type: ignore[union-attr]


def test_an_interrupt_inside_checks_keeps_the_finished_cells_even_while_others_end(
    service: InferenceService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt raised in the checks of two cells in flight at once (one reaches the run at once,
    the other while the run waits for the cells in flight to end, as a second Ctrl-C would): the run returns,
    interrupted in the store, with the cells that finished before; resuming does the rest."""
    from toolkit.evals import runner

    real = runner.score
    together = threading.Barrier(2)

    def interrupted(check: Any, answer: Any, question: str, judge: Any = None, metric: Any = None) -> Any:
        if question in ("Question 3?", "Question 4?"):
            with contextlib.suppress(threading.BrokenBarrierError):
                together.wait(timeout=120)  # both in flight: the third ends only once the fourth runs
            raise KeyboardInterrupt
        return real(check, answer, question, judge, metric)

    monkeypatch.setattr(runner, "score", interrupted)
    store = tmp_path / "runs.db"
    samples = [{"id": str(i), "input": f"Question {i}?", "target": "x"} for i in range(1, 6)]
    variant = [{"label": "v", "temperature": 0, "max_new_tokens": 4}]
    try:
        run = evaluate(service, samples, variant, store=store, progress=False, concurrency=2)
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped evaluate: the run was left 'running' in the store")
    assert run.status == "interrupted" and [r.sample_id for r in run.rows] == ["1", "2"]
    stored = open_run(run.id, store)
    assert stored.status == "interrupted" and [r.sample_id for r in stored.rows] == ["1", "2"]
    monkeypatch.setattr(runner, "score", real)
    resumed = evaluate(service, samples, variant, store=store, progress=False, resume=run.id)
    assert resumed.status == "done" and [r.sample_id for r in resumed.rows] == ["1", "2", "3", "4", "5"]
