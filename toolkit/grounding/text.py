"""The grounding check's reading of text: tokens (names, numbers, content words, stop words, marks), stems,
and a name as one unit ("Tamsin Orrell", "Museum of Cornwall").

A capitalized word past a sentence's first is a name; a sentence's first word is one when a capitalized or a
content word follows it ("Tamsin Reade built ...", not "Start the ..."). Words of one name run together, and
"of" or "of the" between two capitalized words joins them ("the Isle of Kell" is one name, so "the Museum of
Truro" is not "the Museum of Cornwall" with Truro found elsewhere).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:['’][^\W\d_]+)?|[,;:()\"“”]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_TEENS = "two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
# number words as digits: "eleven" and "11" are the same number (not "one" or "zero": "one of the", "no one")
_NUMBER_WORDS = {word: str(n) for n, word in enumerate([*_TEENS.split(), "eighteen", "nineteen", "twenty"], start=2)}
NEGATIONS = frozenset(
    ["not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "cannot", "n't", "isn't", "wasn't"]
)
DETERMINERS = frozenset(
    ["the", "a", "an", "its", "their", "this", "that", "these", "those", "his", "her", "our", "my", "your"]
)
# words that stand for something named elsewhere: a claim whose subject is only one of these needs an antecedent
PRONOUNS = frozenset(["he", "she", "it", "they", "his", "her", "its", "their", "him", "them", "hers", "theirs"])
COPULAS = frozenset(["is", "are", "was", "were"])  # "its tail is blue"
AUXILIARIES = frozenset([*COPULAS, "be", "been", "being", "has", "have", "had", "does", "did", "do", "can", "could"])
PLACES = "near beside behind beyond inside outside along across around within toward towards past beneath underneath"
PREPOSITIONS = frozenset(
    ["on", "in", "at", "of", "to", "from", "by", "with", "for", "into", "onto", "over", "under", "above", "below"]
).union(PLACES.split())
STOP = frozenset(
    """a an the and or but if then than so of to in on at by for with from into onto over under about as is are was
    were be been being it its this that these those there here which who whom whose what when where why how i you he
    she we they me him her us them my your his our their not no yes do does did done have has had can could may might
    must shall should will would also just only very more most some any each every all both either neither such same
    other another one ones own up down out off again further once while during before after above below between
    through because until against among per via according source sources result results document up since without
    """.split()  # noqa: SIM905
    + PLACES.split()
)
PUNCT = frozenset(',;:()"“”')
# past participles that do not end in -ed: "was built by", "is held by"
PARTICIPLES = frozenset(
    """built made held known led lit sold born run found given taken written drawn shown kept brought bought seen
    done grown worn begun put set cut paid laid said told sent spent won hung struck thrown flown chosen""".split()  # noqa: SIM905
)


@functools.lru_cache(maxsize=1)
def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


@functools.lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return str(_stemmer().stemWord(word.lower().replace("’", "'")))


@dataclass(frozen=True)
class Tok:
    stem: str
    kind: str  # word | name | number | stop | mark (punctuation) | boundary (between a passage's sentences)
    negation: bool = False
    verbish: bool = False  # an inflected word right after its subject ("the planet sells", "an owl called")
    word: str = ""  # as written, lower case
    capital: bool = False  # a word written with a capital (a sentence's first): a name where the text names it

    @property
    def content(self) -> bool:
        return self.kind in ("word", "name", "number")

    @property
    def pronoun(self) -> bool:
        return self.kind == "stop" and self.word in PRONOUNS


BOUNDARY = Tok("|", "boundary")


def number(word: str) -> str | None:
    if _NUMBER.fullmatch(word):
        return word.replace(",", "")
    return _NUMBER_WORDS.get(word.lower())


@functools.lru_cache(maxsize=8192)
def tokens(text: str, *, first_is_name: bool = False) -> tuple[Tok, ...]:
    """A text's tokens in order: names (capitalized, past a sentence's first word), numbers, content words,
    stop words and punctuation (which ends a name). Cached: a source's sentences are read once per answer
    and its claims against every passage."""
    words = _TOKEN.findall(CITATION.sub(" ", text))
    out: list[Tok] = []
    for i, w in enumerate(words):
        low = w.lower()
        value = number(w)
        if w in PUNCT:
            out.append(Tok(w, "mark", word=w))
        elif value is not None:
            out.append(Tok(value, "number", word=low))
        elif low in STOP or low in NEGATIONS or low.endswith("n't"):
            out.append(Tok(low, "stop", negation=low in NEGATIONS or low.endswith("n't"), word=low))
        elif w[:1].isupper() and (i > 0 or first_is_name or _names_first(words)):
            out.append(Tok(stem(w), "name", word=low))
        else:
            verbish = _inflected(low) and _after_subject(out)
            out.append(Tok(stem(w), "word", verbish=verbish, word=low, capital=w[:1].isupper()))
    for k in range(len(out) - 1):  # a word right before a determiner is a verb ("drop the oven")
        if out[k].kind == "word" and out[k + 1].stem in DETERMINERS and not out[k].verbish:
            out[k] = Tok(out[k].stem, "word", verbish=True, word=out[k].word)
    return tuple(out)


# words that end like an inflected verb and are not one ("a single red band", "a hundred")
_NOT_INFLECTED = frozenset(
    ["red", "bed", "shed", "hundred", "sacred", "naked", "wicked", "rugged", "ragged", "jagged", "kindred"]
).union(["this", "its", "his", "has", "was", "is", "us", "as"])


def _inflected(word: str) -> bool:
    return word.endswith(("s", "ed")) and not word.endswith(("eed", "ss", "us")) and word not in _NOT_INFLECTED


def _after_subject(before: list[Tok]) -> bool:
    """The next word follows a subject: a name ("the Nile, runs"), or a noun after a determiner ("the planet
    sells", "an owl called"); then an inflected word there is a verb, not a plural noun ("early coins")."""
    k = len(before) - 1
    while k >= 0 and before[k].kind == "mark":
        k -= 1
    if k < 0:
        return False
    if before[k].kind == "name" or before[k].word in ("he", "she", "it", "they"):
        return True
    return before[k].kind == "word" and k > 0 and before[k - 1].stem in DETERMINERS


def _names_first(words: list[str]) -> bool:
    """A sentence's capitalized first word is a name when a capitalized word or a content word follows it
    ("Tamsin Reade built ...", "Newton built ..."), not a number or a stop word ("Since 1989 ...", "Start the ...")."""
    if len(words) < 2 or words[0].lower() in STOP or number(words[1]) is not None:
        return False
    return words[1][:1].isupper() or (words[1].lower() not in STOP and words[1] not in PUNCT)


def with_names(toks: Sequence[Tok], names: frozenset[str]) -> list[Tok]:
    """A sentence's capitalized first word as a name where the text names it elsewhere ("Zorvath is a ...")."""
    out = list(toks)
    if out and out[0].kind == "word" and out[0].capital and out[0].stem in names:
        out[0] = Tok(out[0].stem, "name", word=out[0].word)
    return out


def name_units(toks: Sequence[Tok]) -> list[tuple[int, tuple[str, ...]]]:
    """Each name as one unit, with where it starts: runs of name words, joined across "of" / "of the" between
    two of them ("Isle of Kell", "Museum of Cornwall")."""
    units: list[tuple[int, tuple[str, ...]]] = []
    k = 0
    while k < len(toks):
        if toks[k].kind != "name":
            k += 1
            continue
        start, run = k, []
        while k < len(toks):
            if toks[k].kind == "name":
                run.append(toks[k].stem)
                k += 1
                continue
            j = k  # "of" or "of the", then a name: the same name goes on
            if toks[j].stem == "of":
                j += 1
                if j < len(toks) and toks[j].stem == "the":
                    j += 1
                if j < len(toks) and toks[j].kind == "name":
                    run += [t.stem for t in toks[k:j]]
                    k = j
                    continue
            break
        units.append((start, tuple(run)))
    return units


def joined(toks: Sequence[Tok]) -> str:
    """The stems space-separated, a space at each end: where a name unit is looked for whole."""
    return " " + " ".join(t.stem for t in toks) + " "


def contains(unit: tuple[str, ...], toks_joined: str) -> bool:
    return " " + " ".join(unit) + " " in toks_joined


def verb_index(toks: Sequence[Tok]) -> int | None:
    """Where a clause's verb starts: the first auxiliary or copula, or the first inflected word after the
    subject (a leading "In 1903," is part of no subject)."""
    for i, t in enumerate(toks):
        if t.kind == "stop" and t.word in AUXILIARIES and i > 0:
            return i
        if t.kind == "word" and t.verbish:
            return i
    # none marked: the first inflected word after a noun ("The Larch Valley film festival takes place ...")
    return next(
        (i for i, t in enumerate(toks) if i > 0 and t.kind == "word" and _inflected(t.word) and toks[i - 1].content),
        None,
    )


def is_participle(tok: Tok) -> bool:
    return tok.kind == "word" and (tok.word.endswith("ed") or tok.word in PARTICIPLES)
