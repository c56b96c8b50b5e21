"""Diffs between two runs pair by sample and repeat, and say where retrieval changed."""

from __future__ import annotations

from toolkit.evals.results import EvalRow, EvalRun


def run(run_id: str, outcomes: dict[str, bool], search: dict[str, str | None]) -> EvalRun:
    rows = [
        EvalRow(sid, "v", 0, passed, text=f"{run_id} {sid}", search=search.get(sid)) for sid, passed in outcomes.items()
    ]
    return EvalRun(
        id=run_id,
        name=run_id,
        dataset="d",
        dataset_hash="h",
        variants=[{"label": "v", "fields": {}}],
        repeats=1,
        rows=rows,
        inputs={sid: f"question {sid}" for sid in outcomes},
    )


def test_a_diff_of_two_runs_pairs_questions_and_flags_changed_retrieval() -> None:
    before = run("a", {"q1": True, "q2": True, "q3": False, "q4": True}, {"q1": "s1", "q2": "s2"})
    after = run("b", {"q1": False, "q2": True, "q3": True, "q4": True, "q5": False}, {"q1": "s1*", "q2": "s2"})
    diff = before.diff("v", "v", after)
    assert (diff.a, diff.b, diff.pairs) == ("a:v", "b:v", 4)  # q5 has no pair
    assert [f.sample_id for f in diff.broken] == ["q1"] and [f.sample_id for f in diff.fixed] == ["q3"]
    assert diff.broken[0].retrieval_changed and not diff.fixed[0].retrieval_changed
    assert diff.retrieval_changed == ("q1",)
    assert (diff.both_passed, diff.both_failed, diff.p_value) == (2, 0, 1.0)
    text = str(diff)
    assert "1 fixed, 1 broken" in text and "retrieval changed for: q1" in text
    assert "q1" in diff._repr_html_() and "not significant" in diff._repr_html_()


def test_error_cells_are_apart_from_failures_everywhere() -> None:
    """A timed-out or refused cell has no verdict: not in n, the pass rate, the interval or a diff; shown apart
    in the summary, the matrix, the JSON and the chart."""
    r = run("a", {"q1": True, "q2": False}, {})
    r.rows.append(EvalRow("q3", "v", 0, False, error="the answer ran out of time", error_code="TIMEOUT"))
    r.inputs["q3"] = "question q3"
    summary = r.variant_summary("v")
    assert (summary["n"], summary["passed"], summary["pass_rate"], summary["errors"]) == (2, 1, 0.5, 1)
    assert summary["error_codes"] == {"TIMEOUT": 1} and summary["mean_tokens"] is None
    assert summary["ci_low"] < 1 / 2 < summary["ci_high"]
    assert [e.sample_id for e in r.errors()] == ["q3"]
    matrix = r._repr_html_()
    assert matrix.count("⚠") == 2 and "error TIMEOUT: the answer ran out of time" in matrix  # the cell, the row's head
    report = r.to_json()
    assert report["errors"] == 1
    row = next(x for x in report["rows"] if x["sample_id"] == "q3")
    assert (row["pass"], row["error_code"]) == (None, "TIMEOUT")
    figure = r.chart()
    assert any("1 errors" in t.get_text() for t in figure.axes[0].texts)
    other = run("b", {"q1": False, "q2": False, "q3": True}, {})
    diff = r.diff("v", "v", other)
    assert (diff.pairs, diff.errors, [f.sample_id for f in diff.fixed]) == (2, 1, [])  # q3: no verdict in a
    assert "1 pair(s) left out" in str(diff)


def test_the_smallest_detectable_change_is_said_before_looking() -> None:
    small = run("a", dict.fromkeys(["q1", "q2", "q3", "q4", "q5"], True), {})
    diff = small.diff("v", "v", run("b", dict.fromkeys(["q1", "q2", "q3", "q4", "q5"], False), {}))
    assert diff.min_flips is None and len(diff.broken) == 5 and not diff.significant  # all five flipped: p = 0.0625
    assert "cannot show a significant change" in str(diff)
    ten = {f"q{i}": True for i in range(10)}
    diff = run("a", ten, {}).diff("v", "v", run("b", ten, {}))
    assert diff.min_flips == 6 and "6 one-way flips" in str(diff)
    assert run("a", ten, {}).variant_summary("v")["min_flips"] == 6


def test_weighted_pass_rate_and_named_metrics() -> None:
    from toolkit.evals.assertions import Score

    rows = [
        EvalRow("q1", "v", 0, True, scores=(Score("contains", True, 1.0, "", metric="facts"),), weight=3.0),
        EvalRow(
            "q2",
            "v",
            0,
            False,
            scores=(Score("contains", False, 0.0, "", metric="facts"), Score("no-loop", True, 1.0, "", metric="form")),
            weight=1.0,
        ),
    ]
    r = EvalRun("a", "a", "d", "h", [{"label": "v", "fields": {}}], 1, rows, {"q1": "x", "q2": "y"})
    summary = r.variant_summary("v")
    assert (summary["pass_rate"], summary["weighted_pass_rate"]) == (0.5, 0.75)
    assert summary["metrics"] == {"facts": 0.5, "form": 1.0}


def test_verdict_follows_promptfoos_weights_and_threshold() -> None:
    from toolkit.evals.assertions import Score, verdict

    scores = [
        Score("a", True, 1.0, "", weight=3),
        Score("b", False, 0.0, "", weight=1),
        Score("c", False, 0, "", weight=0),
    ]
    assert verdict(scores) == (False, 0.75)  # without a threshold, every check that weighs passes
    assert verdict(scores, threshold=0.7) == (True, 0.75)
    assert verdict(scores, threshold=0.8) == (False, 0.75)
    assert verdict(scores[:1] + scores[2:]) == (True, 1.0)  # a weight-0 check is reported, it does not decide
