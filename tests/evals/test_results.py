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


def test_the_summary_of_a_variant_with_failed_cells() -> None:
    r = run("a", {"q1": True, "q2": False}, {})
    r.rows.append(EvalRow("q3", "v", 0, False, error="the server is busy"))
    summary = r.variant_summary("v")
    assert (summary["n"], summary["passed"], summary["errors"]) == (3, 1, 1)
    assert summary["mean_tokens"] is None and summary["ci_low"] < 1 / 3 < summary["ci_high"]
