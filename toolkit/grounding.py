"""The grounding check: is an answer that cites web results supported by them? Pure and fast.

``check(answer, sources)`` splits the answer into sentences and, for each one that makes a claim,
finds the source that supports it best and a support score:

- the share of the sentence's content words (stemmed, stop words left out) found in the source
  (its title and snippet), and
- zero outright when the sentence has a number (in digits or words), or a name (a capitalized word;
  the first word of the sentence when a content word follows it), that the source does not: "opened
  in 1872" against "opened in 1994", or another engineer's name, must never pass as supported.

Each ``[n]`` the model wrote is checked: an ``n`` with no source is ``miscited``; a citation whose
source does not support its sentence while another one does is ``miscited`` (with the right one as
the best source); a supported sentence without a citation is ``supported`` with the source to cite.
The verdicts: ``supported | unsupported | no_sources | miscited``. The threshold and the scorer
were chosen on tests/data/grounding.jsonl (``bench/grounding.py``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.wire import ENUM

THRESHOLD = 0.5  # bench/grounding.py: the best accuracy on the labelled cases
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])((?:\s*\[\d+(?:\s*,\s*\d+)*\])*)(?=\s|$)|\n+")
_TEENS = "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
# number words as digits: "eleven" and "11" are the same number (not "one" or "zero": "one of the", "no one")
_NUMBER_WORDS = {word: str(n) for n, word in enumerate([*_TEENS.split(), "eighteen", "nineteen", "twenty"], start=2)}
_STOP = frozenset(
    """a an the and or but if then than so of to in on at by for with from into onto over under about as is are was
    were be been being it its this that these those there here which who whom whose what when where why how i you he
    she we they me him her us them my your his our their not no yes do does did done have has had can could may might
    must shall should will would also just only very more most some any each every all both either neither such same
    other another one ones own up down out off again further once while during before after above below between
    through because until against among per via according source sources result results document""".split()  # noqa: SIM905
)


@dataclass(frozen=True)
class GroundedSentence:
    text: str
    cited: tuple[int, ...]  # the [n] the model wrote
    best_source: int | None  # the source that supports it best (1-based), or None
    score: float  # that source's support, 0..1
    verdict: str = field(metadata=ENUM)  # supported | unsupported | no_sources | miscited


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


@functools.lru_cache(maxsize=1)
def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return str(_stemmer().stemWord(word.lower().replace("’", "'")))


@dataclass(frozen=True)
class _Text:
    stems: frozenset[str]
    numbers: frozenset[str]


def _numbers(words: list[str]) -> set[str]:
    """The numbers of a text, in digits: "eleven" and "11" are the same number."""
    out = set()
    for word in words:
        if _NUMBER.fullmatch(word):
            out.add(word.replace(",", ""))
        elif word.lower() in _NUMBER_WORDS:
            out.add(_NUMBER_WORDS[word.lower()])
    return out


def _profile(text: str) -> _Text:
    words = _WORD.findall(text)
    stems = frozenset(_stem(w) for w in words if w.lower() not in _STOP)
    return _Text(stems, frozenset(_numbers(words)))


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
    return [(s, tuple(int(n) for group in _CITATION.findall(s) for n in re.split(r"\s*,\s*", group))) for s in out]


def _claim(sentence: str) -> tuple[list[str], set[str], set[str]]:
    """(content stems, names as stems, numbers) of a sentence, citations left out."""
    text = _CITATION.sub(" ", sentence)
    words = _WORD.findall(text)
    content = [w for w in words if w.lower() not in _STOP]
    # a name: a capitalized word past the first; the first too when a content word follows it ("Newton
    # built ...", not "Start the loaf ...")
    names = {
        _stem(w)
        for i, w in enumerate(words)
        if w[:1].isupper() and w.lower() not in _STOP and (i > 0 or (len(words) > 1 and words[1].lower() not in _STOP))
    }
    return [_stem(w) for w in content], names, _numbers(words)


def support(sentence: str, source: str | _Text) -> float:
    """How well ``source`` supports ``sentence``: the share of its content words found there, 0 when a
    number or a name of the sentence is not there."""
    stems, names, numbers = _claim(sentence)
    if not stems:
        return 0.0
    profile = source if isinstance(source, _Text) else _profile(source)
    if not numbers <= profile.numbers or not names <= profile.stems:
        return 0.0
    return sum(s in profile.stems for s in stems) / len(stems)


def check(answer: str, sources: Sequence[Any], *, threshold: float = THRESHOLD) -> Grounding:
    """Ground each claim of ``answer`` in ``sources`` (``Source`` objects or strings), numbered from 1."""
    texts = [_profile(s if isinstance(s, str) else f"{s.title}\n{s.snippet}") for s in sources]  # once each
    sentences = []
    for text, cited in split_sentences(answer):
        stems, _, _ = _claim(text)
        if len(stems) < 2:  # "Sure!", "In short:": no claim to check
            continue
        if not texts:
            sentences.append(GroundedSentence(text, cited, None, 0.0, "no_sources"))
            continue
        scores = [support(text, t) for t in texts]
        best = max(range(len(scores)), key=scores.__getitem__)
        in_range = [n for n in cited if 1 <= n <= len(texts)]
        if len(in_range) < len(cited):
            verdict = "miscited"  # [n] with no source n
        elif cited:
            if max(scores[n - 1] for n in cited) >= threshold:
                best = max(in_range, key=lambda n: scores[n - 1]) - 1
                verdict = "supported"
            else:
                verdict = "miscited" if scores[best] >= threshold else "unsupported"
        else:
            verdict = "supported" if scores[best] >= threshold else "unsupported"
        supported_by = best + 1 if scores[best] > 0 else None
        sentences.append(GroundedSentence(text, cited, supported_by, round(scores[best], 3), verdict))
    return Grounding.of(sentences)
