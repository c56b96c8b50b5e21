"""The grounding check on the labelled cases (tests/data/grounding.jsonl, written for this project), and on
a real web-search answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from toolkit.grounding import THRESHOLD, check, split_sentences

DATA = Path(__file__).parent / "data"


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


CASES = load("grounding.jsonl")
ADVERSARIAL = load("grounding_adversarial.jsonl")  # issue 23: claims that word overlap cannot see through
HELD_OUT = load("grounding_heldout.jsonl")  # the same kinds, written after the rules were fixed


def verdict(case: dict[str, Any]) -> str:
    result = check(case["sentence"], case["sources"])
    return result.sentences[0].verdict if result.sentences else "none"


def test_at_least_ninety_percent_of_the_labelled_cases() -> None:
    assert len(CASES) >= 60
    right = sum(verdict(c) == c["label"] for c in CASES)
    assert right / len(CASES) >= 0.9, f"{right}/{len(CASES)} at threshold {THRESHOLD}"


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["kind"] in ("swapped name", "wrong number")], ids=lambda c: c["sentence"][:40]
)
def test_a_swapped_name_or_number_never_passes_as_supported(case: dict[str, Any]) -> None:
    assert verdict(case) != "supported"


@pytest.mark.parametrize("cases", [ADVERSARIAL, HELD_OUT], ids=["adversarial", "held out"])
def test_adversarial_claims_do_not_fool_it(cases: list[dict[str, Any]]) -> None:
    assert len(cases) >= 40
    right = sum(verdict(c) == c["label"] for c in cases)
    unsupported = [c for c in cases if c["label"] == "unsupported"]
    passed = [c["sentence"] for c in unsupported if verdict(c) == "supported"]
    assert right / len(cases) >= 0.9, f"{right}/{len(cases)}"
    assert len(passed) <= 0.02 * len(unsupported), passed


@pytest.mark.parametrize(
    "case", [c for c in ADVERSARIAL if c["label"] == "unsupported"], ids=lambda c: f"{c['kind']}: {c['sentence'][:50]}"
)
def test_each_kind_of_unsupported_claim_is_caught_and_says_why(case: dict[str, Any]) -> None:
    sentence = check(case["sentence"], case["sources"]).sentences[0]
    assert sentence.verdict == "unsupported" and sentence.decided_by == "rules"


def test_a_sentence_said_again_is_one_claim() -> None:
    source = "The Harlow Dam is a gravity dam on the river Tess. It was built by the engineer Tamsin Reade."
    once = check("The dam was built by the engineer Tamsin Reade.", [source])
    twice = check(
        "The dam was built by the engineer Tamsin Reade. The Harlow dam was built by the engineer Tamsin Reade.",
        [source],
    )
    assert once.summary == twice.summary == "1 of 1 sentence supported"


def test_a_judge_decides_only_where_the_rules_are_unsure() -> None:
    source = "The Pell Ridge Observatory is closed every February for maintenance."
    asked: list[str] = []

    def judge(claim: str, text: str) -> bool:
        asked.append(claim)
        return False

    unsure = "The observatory shuts its doors every February."  # half of its words are the source's
    result = check(unsure, [source], judge=judge, judge_name="smollm2")
    assert asked == [unsure] and result.sentences[0].decided_by == "judge:smollm2"
    assert result.sentences[0].verdict == "unsupported"
    asked.clear()
    clear = check("The Pell Ridge Observatory is never closed [1].", [source], judge=judge)  # a rule decides
    assert asked == [] and clear.sentences[0].decided_by == "rules" and clear.sentences[0].why


def test_citations_out_of_range_wrong_and_missing() -> None:
    sources = ["The lighthouse on Varrow Point was automated in 1989.", "The Nile is the longest river in Africa."]
    result = check(
        "The Varrow Point lighthouse was automated in 1989 [1]. The Nile is Africa's longest river [1]. "
        "It was automated in 1989 [5]. The Nile is the longest river in Africa.",
        sources,
    )
    assert [(s.verdict, s.best_source) for s in result.sentences] == [
        ("supported", 1),
        ("miscited", 2),  # cites [1]; [2] says it
        ("miscited", 1),  # [5]: no such source
        ("supported", 2),  # no citation: [2] is the one to cite
    ]
    assert result.summary == "2 of 4 sentences supported, 2 miscited"


def test_sentences_keep_the_citations_written_after_their_full_stop() -> None:
    assert split_sentences("It opened in 1994. [1] It is long [2].\nA list item") == [
        ("It opened in 1994. [1]", (1,)),
        ("It is long [2].", (2,)),
        ("A list item", ()),
    ]


def test_a_web_search_answer_carries_its_grounding(settings: Any, loaded: Any) -> None:
    from toolkit.search import LocalDocsBackend, Searcher
    from toolkit.service import InferenceService

    svc = InferenceService(
        settings, loaded=loaded, searcher=Searcher(LocalDocsBackend(Path(__file__).parent / "data" / "docs"))
    )
    try:
        result = svc.infer(
            "What is the capital city of the planet Zorvath?", web_search=True, temperature=0, max_new_tokens=40
        )
        grounding = result.grounding
        assert "Quillborough" in result.text and grounding is not None
        assert grounding.sentences[0].verdict == "supported" and grounding.sentences[0].best_source == 1
        assert grounding.summary.startswith(f"{grounding.supported} of {len(grounding.sentences)} sentence")
        assert result.run_record.grounding == grounding.to_dict()  # the record keeps it
        assert svc.infer("Hi", temperature=0, max_new_tokens=4).grounding is None  # no sources, no check
    finally:
        svc.close(grace_s=0)
