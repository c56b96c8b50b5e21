"""The grounding check: is an answer that cites web results supported by them? Pure and fast.

``check(answer, sources)`` splits the answer into sentences and, for each one that makes a claim, finds
the source passage that supports it best. A claim is aligned with a source's own sentences, one or two
adjacent ones (not with words gathered from all over a snippet), and a passage supports it only when:

- every **name** of the claim is there as a whole: a full name ("Tamsin Reade") is one unit, so "Corven
  Reade", recombined from two names of the same source, is not there;
- every **number** is there, and bound to the same words: "finished in 1890" needs 1890 next to
  "finished" (or a word of its phrase) in the passage, not a date the source gives for another fact;
- a **negation** of the claim ("not", "never", "no") is the passage's too;
- no word of the claim **replaces** one of the passage: a claim word the source does not have at all,
  in the place where the passage has another ("an arch dam" for "a gravity dam", "ground coal" for
  "ground grain", "the east bank" for "the west bank"), and no two of its attributes are swapped ("red
  with yellow stripes" for "yellow with red stripes");
- and most of its content words (stemmed, stop words left out) are in the passage: what a claim adds
  counts against it (``support`` is the share found; at least ``THRESHOLD``).

Each ``[n]`` the model wrote is checked: an ``n`` with no source is ``miscited``; a citation whose source
does not support its sentence while another does is ``miscited`` (with the right one as the best source);
a supported sentence without a citation is ``supported`` with the source to cite. A sentence said again
(a loop's copy) is one claim. The verdicts: ``supported | unsupported | no_sources | miscited``. Where the
rules are unsure (a score near the threshold and no rule broken), an optional ``judge`` decides, and the
sentence says who decided (``decided_by``). Chosen on tests/data/grounding.jsonl and
tests/data/grounding_adversarial.jsonl (``bench/grounding.py``).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from toolkit.wire import ENUM

THRESHOLD = 0.5  # bench/grounding.py: the share of a claim's content words its passage must have
UNSURE = 0.15  # a score this close to the threshold, with no rule broken, goes to the judge (if any)
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:['’][^\W\d_]+)?|[,;:()\"“”]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])((?:\s*\[\d+(?:\s*,\s*\d+)*\])*)(?=\s|$)|\n+")
_SOURCE_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+")
_TEENS = "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
# number words as digits: "eleven" and "11" are the same number (not "one" or "zero": "one of the", "no one")
_NUMBER_WORDS = {word: str(n) for n, word in enumerate([*_TEENS.split(), "eighteen", "nineteen", "twenty"], start=2)}
_NEGATIONS = frozenset(
    ["not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "cannot", "n't", "isn't", "wasn't"]
)
_DETERMINERS = frozenset(
    ["the", "a", "an", "its", "their", "this", "that", "these", "those", "his", "her", "our", "my", "your"]
)
_STOP = frozenset(
    """a an the and or but if then than so of to in on at by for with from into onto over under about as is are was
    were be been being it its this that these those there here which who whom whose what when where why how i you he
    she we they me him her us them my your his our their not no yes do does did done have has had can could may might
    must shall should will would also just only very more most some any each every all both either neither such same
    other another one ones own up down out off again further once while during before after above below between
    through because until against among per via according source sources result results document up since without
    """.split()  # noqa: SIM905
)
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
class _Tok:
    stem: str
    kind: str  # word | name | number | stop | mark (punctuation) | boundary (between a passage's sentences)
    negation: bool = False
    verbish: bool = False  # an inflected word right after its subject ("the planet sells", "an owl called")

    @property
    def content(self) -> bool:
        return self.kind in ("word", "name", "number")


_BOUNDARY = _Tok("|", "boundary")
_PUNCT = frozenset(',;:()"“”')


def _number(word: str) -> str | None:
    if _NUMBER.fullmatch(word):
        return word.replace(",", "")
    return _NUMBER_WORDS.get(word.lower())


def _tokens(text: str, *, first_is_name: bool = False) -> list[_Tok]:
    """A text's tokens in order: names (capitalized, past a sentence's first word), numbers, content words,
    stop words and punctuation (which ends a name)."""
    words = _TOKEN.findall(_CITATION.sub(" ", text))
    out: list[_Tok] = []
    for i, w in enumerate(words):
        low = w.lower()
        number = _number(w)
        if w in _PUNCT:
            out.append(_Tok(w, "mark"))
        elif number is not None:
            out.append(_Tok(number, "number"))
        elif low in _STOP or low in _NEGATIONS or low.endswith("n't"):
            out.append(_Tok(low, "stop", negation=low in _NEGATIONS or low.endswith("n't")))
        elif w[:1].isupper() and (i > 0 or first_is_name or _names_first(words)):
            out.append(_Tok(_stem(w), "name"))
        else:
            out.append(_Tok(_stem(w), "word", verbish=low.endswith(("s", "ed")) and _after_subject(out)))
    for k in range(len(out) - 1):  # a word right before a determiner is a verb ("drop the oven")
        if out[k].kind == "word" and out[k + 1].stem in _DETERMINERS and not out[k].verbish:
            out[k] = _Tok(out[k].stem, "word", verbish=True)
    return out


def _after_subject(before: list[_Tok]) -> bool:
    """The next word follows a subject: a name ("the Nile, runs"), or a noun after a determiner ("the planet
    sells", "an owl called"); then an inflected word there is a verb, not a plural noun ("early coins")."""
    k = len(before) - 1
    while k >= 0 and before[k].kind == "mark":
        k -= 1
    if k < 0:
        return False
    if before[k].kind == "name":
        return True
    return before[k].kind == "word" and k > 0 and before[k - 1].stem in _DETERMINERS


def _names_first(words: list[str]) -> bool:
    """A sentence's capitalized first word is a name when a capitalized word or a content word follows it
    ("Tamsin Reade built ...", "Newton built ..."), not a number or a stop word ("Since 1989 ...", "Start the ...")."""
    if len(words) < 2 or words[0].lower() in _STOP or _number(words[1]) is not None:
        return False
    return words[1][:1].isupper() or (words[1].lower() not in _STOP and words[1] not in _PUNCT)


@dataclass(frozen=True)
class _Passage:
    """One or two adjacent sentences of a source, as the checks see them."""

    tokens: tuple[_Tok, ...]
    stems: frozenset[str]
    negated: bool
    text: str

    sentences: tuple[tuple[tuple[_Tok, ...], frozenset[str]], ...]  # each sentence, and its words
    joined: str  # its stems, space-separated with a space at each end: where a name is looked for whole

    @classmethod
    def of(cls, text: str, tokens: Sequence[_Tok]) -> _Passage:
        content = frozenset(t.stem for t in tokens if t.content)
        parts = tuple((tuple(p), frozenset(t.stem for t in p)) for p in _sentences(tokens))
        joined = " " + " ".join(t.stem for t in tokens) + " "
        return cls(tuple(tokens), content, any(t.negation for t in tokens), text, parts, joined)


@dataclass(frozen=True)
class _Source:
    passages: tuple[_Passage, ...]
    tokens: tuple[_Tok, ...]  # all its sentences, a boundary between two
    stems: frozenset[str]  # every content word of the source
    subject: frozenset[str]  # its title's and first sentence's words: what a later "It" stands for
    text: str
    pairs: frozenset[tuple[str, str]] = frozenset()  # content words that follow each other
    adjacent: frozenset[tuple[str, str]] = frozenset()  # content words right next to each other
    kinds: dict[str, str] = field(default_factory=dict)


def _source(text: str) -> _Source:
    title, _, body = text.partition("\n") if "\n" in text else ("", "", text)
    sentences = [s.strip() for s in _SOURCE_SENTENCE.split(body) if s and s.strip()] or [text]
    tokens = [_tokens(s) for s in sentences]
    passages = [_Passage.of(s, t) for s, t in zip(sentences, tokens, strict=True)]
    passages += [
        _Passage.of(sentences[i] + " " + sentences[i + 1], [*tokens[i], _BOUNDARY, *tokens[i + 1]])
        for i in range(len(sentences) - 1)
    ]
    every = frozenset(t.stem for ts in tokens for t in ts if t.content)
    subject = frozenset(t.stem for t in [*_tokens(title, first_is_name=True), *tokens[0]] if t.content)
    everything = [t for ts in tokens for t in (*ts, _BOUNDARY)]
    return _Source(
        tuple(passages),
        tuple(everything),
        every | subject,
        subject,
        text,
        frozenset(_pairs(everything)),
        frozenset(_adjacent(everything)),
        {t.stem: t.kind for t in everything},
    )


@dataclass(frozen=True)
class _Claim:
    tokens: tuple[_Tok, ...]
    content: tuple[_Tok, ...]
    names: tuple[tuple[str, ...], ...]  # each a run of name words: one unit
    negated: bool

    @classmethod
    def of(cls, sentence: str) -> _Claim:
        tokens = _tokens(sentence)
        names: list[tuple[str, ...]] = []
        run: list[str] = []
        for t in [*tokens, _Tok("", "stop")]:
            if t.kind == "name":
                run.append(t.stem)
            elif run:
                names.append(tuple(run))
                run = []
        content = tuple(t for t in tokens if t.content)
        return cls(tuple(tokens), content, tuple(names), any(t.negation for t in tokens))


def _support(claim: _Claim, source: _Source, passage: _Passage) -> tuple[float, str | None]:
    """The passage's support of the claim, 0..1, and the rule the claim broke (then 0)."""
    if not claim.content:
        return 0.0, None
    for unit in claim.names:
        if " " + " ".join(unit) + " " not in passage.joined:
            return 0.0, f"the name {' '.join(unit)!r} is not in the source as a whole"
    if claim.negated and not passage.negated:
        return 0.0, "a negation the source does not have"
    words = {t.stem for t in claim.content}
    for i, tok in enumerate(claim.tokens):
        if tok.kind == "number":
            if tok.stem not in passage.stems:
                return 0.0, f"the number {tok.stem} is not there"
            if not _bound(claim.tokens, i, passage.tokens):
                return 0.0, f"the number {tok.stem} is there for another fact"
        elif (
            tok.kind == "word"
            and not tok.verbish
            and tok.stem not in source.subject
            and _replaced(claim.tokens, i, passage, words)
        ):  # (the source's subject stands for its later "It": not a word in another's place)
            return 0.0, f"{tok.stem!r} where the source has another word"
    found = passage.stems | source.subject
    return sum(t.stem in found for t in claim.content) / len(claim.content), None


_PREPOSITIONS = frozenset(["on", "in", "at", "of", "to", "from", "by", "with", "for", "into", "onto", "over", "under"])
_COPULAS = frozenset(["is", "are", "was", "were"])  # "its tail is blue"


def _after(tokens: Sequence[_Tok], index: int) -> _Tok | None:
    return tokens[index + 1] if index + 1 < len(tokens) else None


def _bound(claim: Sequence[_Tok], index: int, passage: Sequence[_Tok]) -> bool:
    """A claim's number is there for the same fact: the word right after it (its unit: "1977 metres",
    "40 passengers") follows it in the passage too; a number with no unit ("finished in 1968") shares a
    word of its neighbourhood with the passage's."""
    number, unit = claim[index].stem, _after(claim, index)
    places = [j for j, t in enumerate(passage) if t.kind == "number" and t.stem == number]
    if unit is not None and unit.content:
        return any((after := _after(passage, j)) is not None and after.stem == unit.stem for j in places)
    around = _around(claim, index, 3)
    return not around or any(around & _around(passage, j, 3) for j in places)


def _around(tokens: Sequence[_Tok], index: int, reach: int) -> set[str]:
    """The content words and numbers within ``reach`` content tokens of ``index``, in its own sentence."""
    out: set[str] = set()
    for step in (-1, 1):
        k, taken = index + step, 0
        while 0 <= k < len(tokens) and taken < reach and tokens[k].kind != "boundary":
            if tokens[k].content:
                out.add(tokens[k].stem)
                taken += 1
            k += step
    return out


def _neighbours(tokens: Sequence[_Tok], index: int, step: int, *, links: bool = True) -> list[tuple[int, bool]]:
    """Where the word next to ``index`` stands, going ``step``: right beside it, or past a determiner, a
    preposition, a coordinator or (``links``) a copula ("cover the southern", "sour and firm", "open on
    weekends", "its tail is red"); with whether a copula was passed."""
    k, skipped, linked = index + step, 0, False
    while 0 <= k < len(tokens) and tokens[k].kind != "boundary":
        tok = tokens[k]
        if tok.content:
            return [(k, linked)]
        copula = tok.stem in _COPULAS
        if tok.stem in _DETERMINERS or tok.stem in _PREPOSITIONS or tok.stem in ("and", "or") or (copula and links):
            skipped += 1
            linked = linked or copula
            if skipped > 2:
                break
            k += step
            continue
        break
    return []


def _other_object(claim: Sequence[_Tok], index: int, passage: _Passage, words: set[str]) -> bool:
    """ "founded by a fisherman" where the passage's sentence has the same word and "by the merchant"."""
    k = index - 1
    while k >= 0 and claim[k].stem in _DETERMINERS:
        k -= 1
    if k < 1 or claim[k].stem not in _PREPOSITIONS:
        return False
    preposition, head = claim[k].stem, next((t.stem for t in reversed(claim[:k]) if t.content), None)
    for sentence, _ in _sentences_of(passage):
        stems = [t.stem for t in sentence]
        if head not in stems or claim[index].stem in stems:
            continue
        for j in range(stems.index(head) + 1, len(sentence) - 1):
            if sentence[j].stem != preposition:
                continue
            m = j + 1
            while m < len(sentence) and sentence[m].stem in _DETERMINERS:
                m += 1
            if m < len(sentence) and sentence[m].kind == "word" and sentence[m].stem not in words:
                return True
    return False


def _sentences_of(passage: _Passage) -> Sequence[tuple[Sequence[_Tok], frozenset[str]]]:
    return passage.sentences


def _sentences(tokens: Sequence[_Tok]) -> list[list[_Tok]]:
    out: list[list[_Tok]] = [[]]
    for t in tokens:
        if t.kind == "boundary":
            out.append([])
        else:
            out[-1].append(t)
    return out


def _replaced(claim: Sequence[_Tok], index: int, passage: _Passage, words: set[str]) -> bool:
    """A claim word that its passage's sentence lacks stands where that sentence has another word, next to
    the same word: a modifier ("an arch dam" for "a gravity dam"), a head ("ground coal" for "ground grain",
    "320 cars" for "320 passengers"), a preposition's object ("founded by a fisherman" for "by the
    merchant") or a coordinate ("sour and firm" for "sweet and firm")."""
    x = claim[index].stem
    if _other_object(claim, index, passage, words):
        return True
    for step in (1, -1):
        for k, linked in _neighbours(claim, index, step):
            anchor = claim[k]
            for sentence, present in _sentences_of(passage):
                if x in present:
                    continue
                for j, tok in enumerate(sentence):
                    if tok.stem != anchor.stem:
                        continue
                    for m, _ in _neighbours(sentence, j, -step, links=linked):
                        slot = sentence[m]
                        if slot.kind == "word" and slot.stem not in words and not slot.verbish:
                            return True
    return False


def _pairs(tokens: Sequence[_Tok]) -> set[tuple[str, str]]:
    """Content words that follow each other (past stop words and marks), within a sentence."""
    content = [t for t in tokens if t.content or t.kind == "boundary"]
    return {
        (content[j - 1].stem, content[j].stem)
        for j in range(1, len(content))
        if "|" not in (content[j - 1].stem, content[j].stem)
    }


def _adjacent(tokens: Sequence[_Tok]) -> set[tuple[str, str]]:
    """Content words right next to each other."""
    return {
        (tokens[j - 1].stem, tokens[j].stem)
        for j in range(1, len(tokens))
        if tokens[j - 1].content and tokens[j].content
    }


def _swapped(claim: _Claim, source: _Source) -> bool:
    """Two attributes in each other's place ("red with yellow stripes" for "yellow with red stripes"), or a
    name put right before what the source names otherwise ("the Strand apple" for "the Corrin apple")."""
    ours, near_ours = _pairs(claim.tokens), _adjacent(claim.tokens)
    theirs, near_theirs, kinds = source.pairs, source.adjacent, source.kinds
    names = {t.stem for t in claim.tokens if t.kind == "name"}
    for x, y in near_ours - near_theirs:
        for z, y2 in near_theirs:
            if y2 != y or z == x:
                continue
            if kinds.get(z) == "name" and x in names and (x, y) not in theirs:
                return True  # another name on the same thing
            if any((w, z) in ours and (w, x) in theirs for w, _ in ours):
                return True  # x and z changed places
    return False


def _best(claim: _Claim, source: _Source) -> tuple[float, str | None]:
    """The best passage's support of the claim in one source, and why none supports it (a rule broken)."""
    if _swapped(claim, source):
        return 0.0, "a word in another's place"
    return max((_support(claim, source, p) for p in source.passages), key=lambda r: r[0], default=(0.0, None))


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


def _same_claim(a: _Claim, b: _Claim) -> bool:
    """A sentence said again (nearly word for word): one claim, not two."""
    x, y = [t.stem for t in a.content], [t.stem for t in b.content]
    common = len(set(x) & set(y))
    if not x or 2 * common < 0.8 * (len(set(x)) + len(set(y))):  # far apart: no need to align them
        return False
    return difflib.SequenceMatcher(a=x, b=y, autojunk=False).ratio() >= 0.8


Judge = Callable[[str, str], "bool | None"]  # (claim, source text) -> supported? None: no answer


def support(sentence: str, source: str) -> float:
    """How well ``source`` (one source's text) supports ``sentence``: its best passage's score (0 when a rule
    is broken)."""
    return _best(_Claim.of(sentence), _source(source))[0]


def check(
    answer: str,
    sources: Sequence[Any],
    *,
    threshold: float = THRESHOLD,
    judge: Judge | None = None,
    judge_name: str = "judge",
) -> Grounding:
    """Ground each claim of ``answer`` in ``sources`` (``Source`` objects or strings), numbered from 1.

    ``judge``: asked about a claim the rules are unsure of (``UNSURE`` around the threshold, no rule broken);
    its answer decides, and the sentence's ``decided_by`` says ``judge:<judge_name>``."""
    parsed = [_source(s if isinstance(s, str) else f"{s.title}\n{s.snippet}") for s in sources]  # once each
    sentences: list[GroundedSentence] = []
    claims: list[_Claim] = []
    for text, cited in split_sentences(answer):
        claim = _Claim.of(text)
        if len(claim.content) < 2:  # "Sure!", "In short:": no claim to check
            continue
        if any(_same_claim(claim, c) for c in claims):  # a copy (a loop's): counted once
            continue
        claims.append(claim)
        if not parsed:
            sentences.append(GroundedSentence(text, cited, None, 0.0, "no_sources"))
            continue
        scored = [_best(claim, source) for source in parsed]
        scores = [s for s, _ in scored]
        best = max(range(len(scores)), key=scores.__getitem__)
        decided_by = "rules"
        if judge is not None and not any(why for _, why in scored) and abs(scores[best] - threshold) < UNSURE:
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
        why = scored[best][1] if verdict_ != "supported" else None
        sentences.append(GroundedSentence(text, cited, supported_by, round(scores[best], 3), verdict_, decided_by, why))
    return Grounding.of(sentences)
