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
DOCUMENTS = load("grounding_documents.jsonl")  # issue 31: sources with headings and sections, half adversarial
DOCUMENTS_HELD_OUT = load("grounding_documents_heldout.jsonl")  # written after those rules, not used to change them


def verdict(case: dict[str, Any]) -> str:
    """The verdict on the case's sentence: the last of its answer (after ``answer_before``, its antecedent)."""
    before = case.get("answer_before")
    answer = f"{before} {case['sentence']}" if before else case["sentence"]
    result = check(answer, case["sources"], question=case.get("question"))
    return result.sentences[-1].verdict if result.sentences else "none"


def test_at_least_ninety_percent_of_the_labelled_cases() -> None:
    assert len(CASES) >= 60
    right = sum(verdict(c) == c["label"] for c in CASES)
    assert right / len(CASES) >= 0.9, f"{right}/{len(CASES)} at threshold {THRESHOLD}"


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["kind"] in ("swapped name", "wrong number")], ids=lambda c: c["sentence"][:40]
)
def test_a_swapped_name_or_number_never_passes_as_supported(case: dict[str, Any]) -> None:
    assert verdict(case) != "supported"


@pytest.mark.parametrize(
    "cases",
    [ADVERSARIAL, HELD_OUT, DOCUMENTS, DOCUMENTS_HELD_OUT],
    ids=["adversarial", "held out", "documents", "documents held out"],
)
def test_adversarial_claims_do_not_fool_it(cases: list[dict[str, Any]]) -> None:
    assert len(cases) >= 37
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

    unsure = "The observatory shuts for maintenance."  # half of what it says is the source's
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
        "The lighthouse was automated in 1989 [5]. The Nile is the longest river in Africa.",
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


def test_the_documents_set_is_half_correct_answers_and_half_adversarial() -> None:
    assert len(DOCUMENTS) >= 80
    supported = [c for c in DOCUMENTS if c["label"] == "supported"]
    assert 0.4 <= len(supported) / len(DOCUMENTS) <= 0.6
    kinds = {c["kind"] for c in DOCUMENTS}
    assert {"paraphrase", "reference across a section", "swapped names", "a number from another fact"} <= kinds
    assert {"a wrong relation word", "negation", "an invented attribute", "a pronoun only"} <= kinds


BRANNOCK = (
    "lighthouses.md › Brannock Lighthouse\n"
    "The lighthouse stands on Kell Point, at the northern tip of the Isle of Kell. It was designed by the engineer "
    "Tamsin Orrell and first lit in 1868."
)


def test_a_name_in_the_heading_counts_for_the_lighthouse_and_it_later() -> None:
    """The issue's case: a correct sentence copied from a source whose passage says "the lighthouse" and whose
    heading has the full name is supported, and the evidence says how it was read."""
    result = check("The Brannock Lighthouse was designed by the engineer Tamsin Orrell [1].", [BRANNOCK])
    sentence = result.sentences[0]
    assert (sentence.verdict, sentence.best_source, sentence.why) == ("supported", 1, None)
    assert "designed by the engineer Tamsin Orrell" in (sentence.evidence or "")
    assert "'it' read as 'brannock lighthous'" in (sentence.evidence or "")
    other = "lighthouses.md › Harwick Lighthouse\n" + BRANNOCK.split("\n", 1)[1]
    assert check("The Brannock Lighthouse was designed by the engineer Tamsin Orrell.", [other]).supported == 0


def test_a_pronoun_with_nothing_before_it_is_not_supported() -> None:
    """The issue's invented sentence: its subject is "He", and nothing in the answer says who."""
    result = check("He was the engineer of the Lighthouse of the Isle of Kell.", [BRANNOCK])
    sentence = result.sentences[0]
    assert sentence.verdict == "unsupported" and "only 'he'" in (sentence.why or "")
    # with an antecedent in the answer, or in the question, "It" is read as what it stands for
    answer = "The Brannock Lighthouse stands on Kell Point. It was first lit in 1868."
    assert check(answer, [BRANNOCK]).summary == "2 of 2 sentences supported"
    asked = check("It was first lit in 1868.", [BRANNOCK], question="When was the Brannock Lighthouse first lit?")
    assert asked.sentences[0].verdict == "supported"
    assert (
        check("It was first lit in 1868.", [BRANNOCK], question="When was the Harwick Lighthouse lit?").supported == 0
    )


def test_every_verdict_names_its_evidence() -> None:
    result = check(
        "The Brannock Lighthouse stands on Kell Point. The Brannock Lighthouse was first lit in 1921. "
        "Tamsin Orrell designed the Harwick Lighthouse.",
        [BRANNOCK],
    )
    for sentence in result.sentences:
        assert sentence.evidence and (sentence.verdict == "supported" or sentence.why), sentence
    assert "1921" in (result.sentences[1].why or "") and "1868" in (result.sentences[1].evidence or "")
