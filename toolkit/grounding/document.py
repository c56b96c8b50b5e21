"""A source as a careful reader sees it: its title's headings, its sections and paragraphs, and what the
references in each sentence stand for.

A local document's title is ``file.md › Heading › Subheading``; a web page's ``Page - Site``. A markdown
heading inside the text starts a section too. In a sentence, a pronoun ("it", "its", "she") stands for the
subject of the section's latest sentence that names one, else for the section's heading (the deepest that
names something), else the document's title; "the lighthouse" stands for the latest of those whose name has
the word ("Brannock Lighthouse"). A claim may then name what its passage only refers to: "The Brannock
Lighthouse was designed by ..." is supported by "It was designed by ..." under the heading "Brannock
Lighthouse", and by nothing under "Harwick Lighthouse".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from toolkit.grounding.text import (
    BOUNDARY,
    DETERMINERS,
    Tok,
    joined,
    name_units,
    tokens,
    verb_index,
    with_names,
)

_SOURCE_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_MARKDOWN_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
_TITLE_PARTS = re.compile(r"\s+(?:›|»|>|\||-|–|—|::)\s+")
_FILE = re.compile(r"^[\w./\\-]+\.(?:md|markdown|txt|html?|rst|pdf)$", re.I)

Unit = tuple[str, ...]


@dataclass(frozen=True)
class Topic:
    """What a sentence or a heading is about: its name, and its subject's words ("Corrin apple")."""

    name: Unit
    words: frozenset[str]


@dataclass(frozen=True)
class Sentence:
    text: str
    tokens: tuple[Tok, ...]
    referents: dict[str, Topic]  # a reference in it ("it", "the lighthouse") -> what it stands for


@dataclass(frozen=True)
class Passage:
    """One sentence of a source, or two adjacent ones of the same section, as the checks see them."""

    text: str
    tokens: tuple[Tok, ...]  # its sentences' tokens, a boundary between two
    stems: frozenset[str]  # its content words
    negated: bool
    joined: str  # its stems, space-separated: where a name is looked for whole
    sentences: tuple[tuple[tuple[Tok, ...], frozenset[str]], ...]  # each sentence, and its words
    referents: dict[str, Topic] = field(default_factory=dict)  # references in it and what they stand for

    @classmethod
    def of(cls, parts: Sequence[Sentence]) -> Passage:
        toks: list[Tok] = []
        for i, s in enumerate(parts):
            toks += ([BOUNDARY] if i else []) + list(s.tokens)
        referents: dict[str, Topic] = {}
        for s in parts:
            referents.update(s.referents)
        return cls(
            " ".join(s.text for s in parts),
            tuple(toks),
            frozenset(t.stem for t in toks if t.content),
            any(t.negation for t in toks),
            joined(toks),
            tuple((s.tokens, frozenset(t.stem for t in s.tokens)) for s in parts),
            referents,
        )

    @functools.cached_property
    def referred(self) -> frozenset[str]:
        """The words of what its references stand for ("it": the Corrin apple)."""
        return frozenset(w for topic in self.referents.values() for w in (*topic.name, *topic.words))

    def refers_to(self, unit: Unit) -> str | None:
        """The reference in this passage that stands for ``unit`` ("it", "the lighthouse"), if one does."""
        return next((said for said, meant in self.referents.items() if meant.name == unit), None)


@dataclass(frozen=True)
class Document:
    text: str
    passages: tuple[Passage, ...]
    headings: tuple[Unit, ...]  # the names its title and headings give, outermost first
    stems: frozenset[str]  # every content word
    pairs: frozenset[tuple[str, str]]  # content words that follow each other (past stop words), per sentence
    adjacent: frozenset[tuple[str, str]]  # content words right next to each other
    kinds: dict[str, str]  # a stem's kind (name, word, number)
    descriptions: dict[Unit, frozenset[str]]  # what it says a name is: "Zorvath is a small desert planet"


def names_in(text: str) -> frozenset[str]:
    """The stems a text writes as names (past a sentence's first word, or in a title)."""
    return frozenset(t.stem for line in text.splitlines() for t in tokens(line) if t.kind == "name")


def parse(text: str, known: frozenset[str] = frozenset()) -> Document:
    """``title\\nbody`` (the service's form of a source), or a text with no title. ``known``: names the other
    sources (or the answer) write, for a word that only starts sentences here ("Zorvath is a ...")."""
    title, _, body = text.partition("\n") if "\n" in text else ("", "", text)
    outer = _title_units(title)
    sections: list[tuple[list[Unit], list[list[str]]]] = [(list(outer), [])]
    for line in body.splitlines():
        heading = _MARKDOWN_HEADING.match(line.strip())
        if heading:
            sections.append(([*outer, *_units(heading.group(1))], []))
        elif line.strip():
            sections[-1][1].append([s.strip() for s in _SOURCE_SENTENCE.split(line.strip()) if s.strip()])
    passages: list[Passage] = []
    every: list[Tok] = []
    descriptions: dict[Unit, set[str]] = {}
    names = known | {w for u in outer for w in u} | names_in(body)
    for headings, paragraphs in sections:
        read = _read(headings, [s for paragraph in paragraphs for s in paragraph], names)
        for s in read:
            described = _description(s.tokens)
            if described is not None:
                descriptions.setdefault(described[0], set()).add(described[1])
        passages += [Passage.of([s]) for s in read]
        # two sentences are one passage where the second refers back ("... Tamsin Orrell. She also ..."): a claim
        # may join what they say, not the subject of one and what the other says of something else
        passages += [Passage.of(read[i : i + 2]) for i in range(len(read) - 1) if read[i + 1].referents]
        for s in read:
            every += [*s.tokens, BOUNDARY]
    if not passages:  # a title alone
        read = _read(list(outer), [title])
        passages = [Passage.of(read)]
        every = list(read[0].tokens)
    heads = tuple(dict.fromkeys(u for headings, _ in sections for u in headings))
    return Document(
        text,
        tuple(passages),
        heads,
        frozenset(t.stem for t in every if t.content) | {w for u in heads for w in u},
        frozenset(_pairs(every)),
        frozenset(_adjacent(every)),
        {t.stem: t.kind for t in every},
        {unit: frozenset(nouns) for unit, nouns in descriptions.items()},
    )


def _title_units(title: str) -> list[Unit]:
    parts = [p for p in _TITLE_PARTS.split(title.strip()) if p and not _FILE.match(p)]
    return [u for p in parts for u in _units(p)]


def _units(heading: str) -> list[Unit]:
    """The names a heading gives ("The Harrowgate Bridge" -> harrowgate bridge); a heading with no name of its
    own ("Maintenance") gives none."""
    return [unit for _, unit in name_units(tokens(heading, first_is_name=True))]


def _read(headings: Sequence[Unit], sentences: Sequence[str], names: frozenset[str] = frozenset()) -> list[Sentence]:
    """The section's sentences, each with what its references stand for: a pronoun, the latest subject named
    (else the deepest heading's name); "the X", the latest of those whose words have X."""
    topics: list[Topic] = [Topic(u, frozenset(u)) for u in headings]  # latest last
    out: list[Sentence] = []
    for text in sentences:
        toks = with_names(tokens(text), names)
        referents: dict[str, Topic] = {}
        for k, tok in enumerate(toks):
            if tok.pronoun and topics:
                referents.setdefault(tok.word, topics[-1])
            elif tok.kind == "word" and k > 0 and toks[k - 1].word == "the" and toks[k - 1].kind == "stop":
                topic = next((t for t in reversed(topics) if tok.stem in t.name or tok.stem in t.words), None)
                if topic is None and k == 1 and topics and not any(t.kind == "name" for t in toks):
                    topic = topics[-1]  # "The tower is 38 metres tall" in the lighthouse's section: its tower
                if topic is not None:
                    referents.setdefault(f"the {tok.word}", topic)
        out.append(Sentence(text, tuple(toks), referents))
        topic = _topic(toks)
        if topic is not None and not topic.name:  # "The tower is ..." read as the lighthouse's: still about it
            meant = next((referents[said] for said in referents if said.startswith("the ")), None)
            topic = Topic(meant.name, meant.words | topic.words) if meant is not None else topic
        if topic is not None:
            topics.append(topic)
    return out


def _topic(toks: Sequence[Tok]) -> Topic | None:
    """What a sentence is about: a name before its verb ("The Orlen Dam holds ...", "Ada Penhallow (1874-1951)
    was ...", not one in a leading phrase's object), with the words of its subject ("The Corrin apple")."""
    end = verb_index(toks)
    if end is None:
        return None
    span = toks[:end]
    words = frozenset(t.stem for t in span if t.kind in ("word", "name"))
    units = name_units(span)
    for start, unit in units:
        before = toks[start - 1] if start > 0 else None
        if before is None or before.stem in DETERMINERS or before.kind == "mark" or before.kind == "number":
            return Topic(unit, words)
    if span and span[0].word in ("the", "a", "an") and words:  # "The lighthouse on Varrow Point was ..."
        return Topic(units[0][1] if units else (), words)
    return None


def _description(toks: Sequence[Tok]) -> tuple[Unit, str] | None:
    """ "Zorvath is a small desert planet in ...": (zorvath, planet), what the sentence says its subject is."""
    end = verb_index(toks)
    topic = _topic(toks)
    if topic is None or end is None or toks[end].word not in ("is", "was", "are", "were"):
        return None
    k = end + 1
    if k >= len(toks) or toks[k].word not in ("a", "an", "the"):
        return None
    head = None
    for t in toks[k + 1 :]:
        if t.kind != "word" or t.verbish:
            break
        head = t.stem
    return (topic.name, head) if head is not None else None


def _pairs(toks: Sequence[Tok]) -> set[tuple[str, str]]:
    """Content words that follow each other (past stop words and marks), within a sentence."""
    content = [t for t in toks if t.content or t.kind == "boundary"]
    return {
        (content[j - 1].stem, content[j].stem)
        for j in range(1, len(content))
        if "|" not in (content[j - 1].stem, content[j].stem)
    }


def _adjacent(toks: Sequence[Tok]) -> set[tuple[str, str]]:
    """Content words right next to each other."""
    return {(toks[j - 1].stem, toks[j].stem) for j in range(1, len(toks)) if toks[j - 1].content and toks[j].content}
