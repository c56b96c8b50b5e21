"""The grounding check: is an answer that cites web results supported by them? Pure and fast.

``check(answer, sources)`` splits the answer into sentences and, for each one that makes a claim, finds the
source passage that supports it best, reading each source as a careful reader does (``document``: its title
and headings, its sections, what "it" and "the lighthouse" stand for) and applying the rules a careful reader
applies (``rules``: names, subject, numbers, negation, replaced and swapped words, who did what, and enough of
its words). A claim whose subject is only a pronoun takes its antecedent from the answer before it (or the
question, when given); with none, it is not supported: the reader cannot tell what "He" is.

Each ``[n]`` the model wrote is checked: an ``n`` with no source is ``miscited``; a citation whose source
does not support its sentence while another does is ``miscited`` (with the right one as the best source);
a supported sentence without a citation is ``supported`` with the source to cite. A sentence said again
(a loop's copy) is one claim. The verdicts: ``supported | unsupported | no_sources | miscited``; each says
why (the rule a claim broke) and the evidence (the passage it was judged on, and what a reference there was
read as). Where the rules are unsure (a score near the threshold and no rule broken), an optional ``judge``
decides, and the sentence says who decided (``decided_by``). Measured on tests/data/grounding*.jsonl
(``bench/grounding.py``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.grounding.document import Document, Unit, names_in, parse
from toolkit.grounding.rules import THRESHOLD, Claim, Subject, Support, subject_of, support, swapped
from toolkit.grounding.text import CITATION, name_units, tokens
from toolkit.wire import ENUM

__all__ = ["JUDGE_PROMPT", "THRESHOLD", "UNSURE", "GroundedSentence", "Grounding", "Judge", "check", "supports"]

UNSURE = 0.15  # a score this close to the threshold, with no rule broken, goes to the judge (if any)
_SENTENCE_END = re.compile(r"(?<=[.!?])((?:\s*\[\d+(?:\s*,\s*\d+)*\])*)(?=\s|$)|\n+")
EVIDENCE_CHARS = 300
JUDGE_PROMPT = (
    "Source:\n{source}\n\nClaim: {claim}\n\n"
    "Does the source state the claim, with the same names, numbers and facts? Answer yes or no."
)


@dataclass(frozen=True)
class GroundedSentence:
    text: str
    cited: tuple[int, ...]  # the [n] the model wrote
    best_source: int | None  # the source that supports it best (1-based), or None
    score: float  # that source's support, 0..1
    verdict: str = field(metadata=ENUM)  # supported | unsupported | no_sources | miscited
    decided_by: str = "rules"  # rules, or judge:<model> where the rules were unsure
    why: str | None = None  # the rule a claim broke (a name, a number, a negation, a replaced word)
    evidence: str | None = None  # the passage it was judged on, and what a reference there was read as


@dataclass(frozen=True)
class Grounding:
    sentences: tuple[GroundedSentence, ...]
    supported: int  # sentences supported by the sources
    summary: str  # "4 of 5 sentences supported", and how many cite a source that does not say them

    @classmethod
    def of(cls, sentences: Sequence[GroundedSentence]) -> Grounding:
        total = len(sentences)
        supported = sum(s.verdict == "supported" for s in sentences)
        summary = f"{supported} of {total} sentence{'s' if total != 1 else ''} supported"
        miscited = sum(s.verdict == "miscited" for s in sentences)
        return cls(tuple(sentences), supported, summary + (f", {miscited} miscited" if miscited else ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grounding:
        sentences = tuple(GroundedSentence(**{**s, "cited": tuple(s["cited"])}) for s in data["sentences"])
        return cls(sentences, data["supported"], data["summary"])


Judge = Callable[[str, str], "bool | None"]  # (claim, source text) -> supported? None: no answer


def split_sentences(answer: str) -> list[tuple[str, tuple[int, ...]]]:
    """The answer's sentences, each with the citations written in it (or right after its full stop)."""
    out = []
    start = 0
    for match in _SENTENCE_END.finditer(answer):
        end = match.end()
        piece = answer[start:end].strip()
        start = end
        if piece:
            out.append(piece)
    tail = answer[start:].strip()
    if tail:
        out.append(tail)
    return [(s, tuple(int(n) for group in CITATION.findall(s) for n in re.split(r"\s*,\s*", group))) for s in out]


def _same_claim(a: Claim, b: Claim) -> bool:
    """A sentence said again (nearly word for word): one claim, not two."""
    x, y = [t.stem for t in a.content], [t.stem for t in b.content]
    common = len(set(x) & set(y))
    if not x or 2 * common < 0.8 * (len(set(x)) + len(set(y))):  # far apart: no need to align them
        return False
    return difflib.SequenceMatcher(a=x, b=y, autojunk=False).ratio() >= 0.8


def _best(claim: Claim, document: Document, descriptions: Mapping[Unit, frozenset[str]] | None = None) -> Support:
    """The passage of one source that supports the claim best; where none does, the one that came closest
    (the most of its words), with the rule it broke. ``descriptions``: what all the sources say each name is."""
    results = [support(claim, document, p, descriptions) for p in document.passages]
    if swapped(claim, document):
        closest = max(results, key=lambda r: r.found)
        return Support(0.0, "a word or a name in another's place", closest.passage, closest.found)
    best = max(results, key=lambda r: (r.score, r.found))
    if best.score > 0:
        return best
    return max(results, key=lambda r: (r.found, r.why is None))


def _evidence(result: Support) -> str:
    text = result.passage.text
    text = text if len(text) <= EVIDENCE_CHARS else text[: EVIDENCE_CHARS - 1].rsplit(" ", 1)[0] + " …"
    if result.read_as:
        said = "; ".join(f"{reference!r} read as {' '.join(unit)!r}" for reference, unit in result.read_as)
        text += f" ({said})"
    return text


def supports(sentence: str, source: str) -> float:
    """How well ``source`` (one source's text) supports ``sentence``: its best passage's score (0 when a rule
    is broken)."""
    return _best(Claim.of(sentence), parse(source)).score


def _question_subject(question: str | None) -> Subject | None:
    """What a question is about, for an answer that starts with "It ...": its first name."""
    if not question:
        return None
    units = [u for _, u in name_units(tokens(question, first_is_name=True))]
    return Subject(frozenset(units[0]), units[0]) if units else None


def check(
    answer: str,
    sources: Sequence[Any],
    *,
    threshold: float = THRESHOLD,
    judge: Judge | None = None,
    judge_name: str = "judge",
    question: str | None = None,
) -> Grounding:
    """Ground each claim of ``answer`` in ``sources`` (``Source`` objects or strings), numbered from 1.

    ``question``: what was asked; its first name is what a pronoun at the start of the answer stands for.
    ``judge``: asked about a claim the rules are unsure of (``UNSURE`` around the threshold, no rule broken);
    its answer decides, and the sentence's ``decided_by`` says ``judge:<judge_name>``."""
    texts = [s if isinstance(s, str) else f"{s.title}\n{s.snippet}" for s in sources]
    known = frozenset().union(names_in(answer), *(names_in(t) for t in texts))  # a name in one is a name in all
    parsed = [parse(t, known) for t in texts]  # once each
    descriptions: dict[Unit, frozenset[str]] = {}
    for document in parsed:  # what one source says a name is holds when reading another
        for unit, nouns in document.descriptions.items():
            descriptions[unit] = descriptions.get(unit, frozenset()) | nouns
    sentences: list[GroundedSentence] = []
    claims: list[Claim] = []
    about = _question_subject(question)
    for text, cited in split_sentences(answer):
        claim = Claim.of(text, about)
        about = subject_of(text, about)
        if len(claim.content) < 2:  # "Sure!", "In short:": no claim to check
            continue
        if any(_same_claim(claim, c) for c in claims):  # a copy (a loop's): counted once
            continue
        claims.append(claim)
        if not parsed:
            sentences.append(GroundedSentence(text, cited, None, 0.0, "no_sources"))
            continue
        if claim.pronoun is not None and claim.antecedent is None and not claim.subject.words - {claim.pronoun}:
            alone = f"its subject is only {claim.pronoun!r}, and nothing before it in the answer says who or what"
            sentences.append(GroundedSentence(text, cited, None, 0.0, "unsupported", "rules", alone))
            continue
        scored = [_best(claim, document, descriptions) for document in parsed]
        scores = [r.score for r in scored]
        best = max(range(len(scores)), key=lambda i: (scores[i], scored[i].found))
        decided_by = "rules"
        if judge is not None and scored[best].why is None and abs(scores[best] - threshold) < UNSURE:
            verdict = judge(text, parsed[best].text)
            if verdict is not None:
                decided_by = f"judge:{judge_name}"
                scores[best] = 1.0 if verdict else 0.0
        in_range = [n for n in cited if 1 <= n <= len(parsed)]
        if len(in_range) < len(cited):
            verdict_ = "miscited"  # [n] with no source n
        elif cited:
            if max(scores[n - 1] for n in cited) >= threshold:
                best = max(in_range, key=lambda n: scores[n - 1]) - 1
                verdict_ = "supported"
            else:
                verdict_ = "miscited" if scores[best] >= threshold else "unsupported"
        else:
            verdict_ = "supported" if scores[best] >= threshold else "unsupported"
        supported_by = best + 1 if scores[best] > 0 else None
        result = scored[best]
        why: str | None = None
        if verdict_ != "supported":
            absent = ", ".join(result.absent)
            why = result.why or f"too little of it is in the closest passage (not there: {absent})"
        sentences.append(
            GroundedSentence(
                text, cited, supported_by, round(scores[best], 3), verdict_, decided_by, why, _evidence(result)
            )
        )
    return Grounding.of(sentences)
