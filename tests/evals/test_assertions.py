"""Each check, both ways: an answer that passes it and one that fails it (and ``not-`` turns them around)."""

from __future__ import annotations

from typing import Any

import pytest

from toolkit import grounding
from toolkit.errors import InvalidRequest
from toolkit.evals import assertions
from toolkit.evals.answers import Answer
from toolkit.evals.assertions import TYPES, CheckError, parse_check, score

SOURCES = ["Quillborough is the capital of Zorvath. It was founded in 2231.", "Zorvath exports glowmoss."]


def answer(text: str, *, finish: str = "stop", total_s: float = 0.5, sources: list[str] | None = None) -> Answer:
    checked = grounding.check(text, sources) if sources else None
    return Answer(text, finish, 10, 5, 0.1, total_s, 10.0, checked, (), {"request_id": "r"})


def judge_says(verdict: bool | None) -> Any:
    def ask(name: str, question: str) -> tuple[bool | None, str | None]:
        assert name == "judge" and "Answer: Paris" in question and "names a city" in question
        return verdict, "judge-record"

    return ask


# (check, an answer that passes, an answer that fails)
CASES: list[tuple[dict[str, Any], Answer, Answer]] = [
    ({"type": "equals", "value": "Paris"}, answer(" Paris\n"), answer("Paris, France")),
    ({"type": "contains", "value": "Paris"}, answer("It is Paris."), answer("It is paris.")),
    ({"type": "icontains", "value": "Paris"}, answer("it is PARIS"), answer("It is Lyon.")),
    ({"type": "contains-any", "value": ["Paris", "Lyon"]}, answer("Lyon"), answer("lyon")),
    ({"type": "icontains-any", "value": ["Paris", "Lyon"]}, answer("LYON"), answer("Nice")),
    ({"type": "contains-all", "value": ["Paris", "France"]}, answer("Paris, France"), answer("Paris, france")),
    ({"type": "icontains-all", "value": ["Paris", "France"]}, answer("paris, FRANCE"), answer("Paris only")),
    ({"type": "not-contains", "value": "sorry"}, answer("Paris."), answer("I am sorry.")),
    ({"type": "not-icontains", "value": "sorry"}, answer("Paris."), answer("SORRY.")),
    ({"type": "regex", "value": r"\b\d{4}\b"}, answer("In 2231."), answer("Long ago.")),
    ({"type": "starts-with", "value": "Yes"}, answer("  Yes, it is."), answer("No. Yes.")),
    ({"type": "is-json"}, answer('{"a": 1}'), answer("{a: 1}")),
    ({"type": "levenshtein", "value": "Quillborough", "threshold": 2}, answer("Quilborough"), answer("Quill")),
    ({"type": "latency", "threshold": 1000}, answer("x", total_s=0.9), answer("x", total_s=1.2)),
    (
        {"type": "grounded", "value": 1.0},
        answer("Quillborough is the capital of Zorvath [1].", sources=SOURCES),
        answer("Quillborough is the capital of Mars [1].", sources=SOURCES),
    ),
    (
        {"type": "cites"},
        answer("Zorvath exports glowmoss [2].", sources=SOURCES),
        answer("Zorvath exports glowmoss [1].", sources=SOURCES),
    ),
    (
        {"type": "no-loop"},
        answer("Paris is the capital of France."),
        answer("the cat sat on the mat and " * 3),
    ),
    ({"type": "finish-reason", "value": "stop"}, answer("x"), answer("x", finish="length")),
]


@pytest.mark.parametrize("spec,good,bad", CASES, ids=[c[0]["type"] for c in CASES])
def test_each_check_passes_and_fails(spec: dict[str, Any], good: Answer, bad: Answer) -> None:
    check = parse_check(spec)
    passed, failed = score(check, good, "q"), score(check, bad, "q")
    assert passed.passed and passed.score > failed.score, passed.reason
    assert not failed.passed, failed.reason
    assert passed.check == spec["type"]


def test_every_type_has_a_case_both_ways() -> None:
    tested = {c[0]["type"].removeprefix("not-") for c in CASES} | {"llm-rubric"}
    assert tested == set(TYPES)


def test_not_turns_any_check_around() -> None:
    check = parse_check({"type": "not-regex", "value": "sorry|apolog"})
    assert score(check, answer("Paris."), "q").passed
    failed = score(check, answer("I apologize."), "q")
    assert not failed.passed and failed.reason.startswith("not: ")


def test_the_loop_guard_ending_an_answer_fails_no_loop() -> None:
    assert not score(parse_check({"type": "no-loop"}), answer("Paris.", finish="repetition"), "q").passed


def test_a_rubric_asks_the_judge_and_keeps_its_record() -> None:
    check = parse_check({"type": "llm-rubric", "value": "names a city", "judge": "judge"}, models=["judge"])
    yes = score(check, answer("Paris"), "Capital of France?", judge_says(True))
    no = score(check, answer("Paris"), "Capital of France?", judge_says(False))
    unsure = score(check, answer("Paris"), "Capital of France?", judge_says(None))
    assert yes.passed and yes.record_id == "judge-record"
    assert not no.passed and "said no" in no.reason
    assert not unsure.passed and "neither" in unsure.reason


@pytest.mark.parametrize(
    "spec,field,words",
    [
        ({"type": "contains-some"}, "type", "known: equals, contains"),
        ({"value": "x"}, "type", "missing"),
        ({"type": "regex", "value": "(unclosed"}, "value", "regular expression"),
        ({"type": "icontains"}, "value", "non-empty string"),
        ({"type": "contains-any", "value": "Paris"}, "value", "list of strings"),
        ({"type": "latency"}, "threshold", "milliseconds"),
        ({"type": "grounded", "value": 2}, "value", "0..1"),
        ({"type": "finish-reason", "value": "done"}, "value", "stop, length"),
        ({"type": "llm-rubric", "value": "polite"}, "judge", "judge model"),
        ({"type": "llm-rubric", "value": "polite", "judge": "gpt-9"}, "judge", "not a configured model"),
        ({"type": "equals", "value": "x", "threshhold": 1}, "threshhold", "not a field"),
        ({"type": "levenshtein", "value": "x", "threshold": "two"}, "threshold", "number"),
    ],
)
def test_a_bad_check_names_its_field(spec: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_check(spec, models=["smollm2"])
    assert caught.value.field == field and words in caught.value.message


# ----- no check hangs a run: a regex runs out of time, the slow checks are bounded -----------------

SEVENTY = "The capital of France is Paris and it is a large and rather old city!!"  # no match for the first


def test_the_issues_regex_against_a_70_character_answer_gives_a_verdict() -> None:
    """``^(\\w+\\s?)*$`` backtracks 2**n ways in Python's ``re`` (the run hung); the engine that runs checks
    now finds no match at once."""
    assert len(SEVENTY) == 70
    check = parse_check({"type": "regex", "value": r"^(\w+\s?)*$"})
    failed = score(check, answer(SEVENTY), "q")
    assert not failed.passed and failed.reason == "no match"
    assert score(check, answer(SEVENTY.rstrip("!")), "q").passed


def test_a_regex_that_backtracks_without_end_runs_out_of_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert assertions.REGEX_TIMEOUT_S == 1.0
    monkeypatch.setattr(assertions, "REGEX_TIMEOUT_S", 0.2)
    check = parse_check({"type": "regex", "value": r"^(?:[\w ]|[\w ](?=[\w ]))*$"})  # beyond the engine's guard
    for spec in (check, parse_check({"type": "not-regex", "value": check.value})):  # no verdict either way
        with pytest.raises(CheckError) as caught:
            score(spec, answer(SEVENTY), "q")
        assert caught.value.code == "CHECK_TIMEOUT"
        assert caught.value.message.startswith(
            "regex check timed out after 0.2 s on a 70-character answer: simplify the pattern"
        )


def test_a_regex_is_checked_at_load_by_the_engine_that_runs_it() -> None:
    check = parse_check({"type": "regex", "value": r"^\p{Lu}\p{Ll}+"})  # Unicode classes: ``re`` refused them
    assert score(check, answer("Zürich"), "q").passed and not score(check, answer("zürich"), "q").passed
    with pytest.raises(InvalidRequest, match="not a valid regular expression"):
        parse_check({"type": "regex", "value": r"\p{NoSuchProperty}"})


def test_levenshtein_on_huge_strings_and_is_json_on_deep_nesting_end_at_once() -> None:
    long_answer = answer("word " * 200_000)  # a million characters against a short value: fails, whatever else
    far = score(parse_check({"type": "levenshtein", "value": "Quillborough", "threshold": 2}), long_answer, "q")
    assert not far.passed and far.score == 0 and far.reason.startswith("at least 999987 edits")
    near = parse_check({"type": "levenshtein", "value": "word " * 100_000})  # as long as the answer: cannot tell
    with pytest.raises(CheckError, match=r"levenshtein: a 501000-character answer .* \(MAX_LEVENSHTEIN_CELLS\)"):
        score(near, answer("word " * 100_000 + "x" * 1000), "q")
    deep = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot read
    with pytest.raises(CheckError, match="is-json: the 200000-character answer nests deeper") as caught:
        score(parse_check({"type": "is-json"}), answer(deep), "q")
    assert caught.value.code == "CHECK_ERROR"
