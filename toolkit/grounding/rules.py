"""Does a passage support a claim? The rules, each a reason a careful reader would give for "no".

A claim is aligned with a source's own sentences, one or two adjacent ones (``document.Passage``), and a
passage supports it only when:

- every **name** of the claim is there as a whole, or is what the passage refers to ("it", "the
  lighthouse" under the heading "Brannock Lighthouse"; ``document``);
- its **subject** is what the passage is about: the subject's words are in the passage or in what it refers
  to ("The main telescope was donated by ..." is not supported by "A smaller refractor, donated by ...");
- every **number** is there, bound to the same words: its unit and the word after it ("240 metres long" is
  not "climbs 240 metres"), or the words around it ("finished in 1890");
- a **negation** of the claim is the passage's too, and the passage does not deny what the claim asserts
  ("never married");
- no word of the claim **replaces** one of the passage next to the same word ("an arch dam" for "a gravity
  dam", "born in Kew" for "born in Truro"), and no two of its attributes or names are **swapped**;
- who does what is kept: a claim does not make the passage's agent ("built ... by the Marra Valley Railway
  company") the one it was done to, or the other way round;
- at least ``THRESHOLD`` of the words that carry its relation (its content words other than names, numbers
  and its subject) are in the passage, and of all its content words: the lower share is its score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from toolkit.grounding.document import Document, Passage, Unit
from toolkit.grounding.text import (
    COPULAS,
    DETERMINERS,
    PREPOSITIONS,
    Tok,
    contains,
    is_participle,
    name_units,
    tokens,
    verb_index,
)

THRESHOLD = 0.5  # bench/grounding.py: the share of a claim's content words its passage must have


@dataclass(frozen=True)
class Subject:
    """What a sentence is about: its subject's words, the name among them (or its pronoun's antecedent), and
    its head noun (the last word before the verb: "the main telescope")."""

    words: frozenset[str]
    name: Unit | None
    head: str | None = None


@dataclass(frozen=True)
class Claim:
    text: str
    tokens: tuple[Tok, ...]
    content: tuple[Tok, ...]
    names: tuple[Unit, ...]  # each a name as one unit, the antecedent of a pronoun subject among them
    negated: bool
    subject: Subject
    pronoun: str | None  # its subject is only this pronoun ("it", "its lamp")
    antecedent: Unit | None  # what that pronoun stands for, from the answer (or the question)
    passive: str | None  # the participle of "was built", "is held"
    agent: frozenset[str]  # a passive claim's "by ..." words

    @classmethod
    def of(cls, sentence: str, before: Subject | None = None) -> Claim:
        """``before``: the subject of the answer so far, for a pronoun subject ("It was first lit ...")."""
        toks = tokens(sentence)
        units = [u for _, u in name_units(toks)]
        subject, pronoun = _subject(toks)
        antecedent = None
        if pronoun is not None and before is not None:
            antecedent = before.name
            subject = Subject(subject.words | before.words, before.name, subject.head or before.head)
            if before.name is not None and before.name not in units:
                units.insert(0, before.name)
        verb = verb_index(toks)
        passive, agent = None, frozenset[str]()
        if verb is not None and toks[verb].word in COPULAS:
            following = next((t for t in toks[verb + 1 :] if t.kind != "stop" or t.negation), None)
            if following is not None and is_participle(following):
                passive = following.stem
                agent = _after_by(toks, toks.index(following))
        return cls(
            sentence,
            tuple(toks),
            tuple(t for t in toks if t.content),
            tuple(units),
            any(t.negation for t in toks),
            subject,
            pronoun,
            antecedent,
            passive,
            agent,
        )

    @property
    def relation(self) -> list[Tok]:
        """The words that say what the claim says of its subject: not names, numbers or the subject's words."""
        return [t for t in self.content if t.kind == "word" and t.stem not in self.subject.words]


def _subject(toks: Sequence[Tok]) -> tuple[Subject, str | None]:
    """A sentence's subject (the words before its verb; a leading "In 1903," is not part of it), and its pronoun
    when a pronoun is all it names ("It", "Its lamp")."""
    end = verb_index(toks)
    first = next((i for i, t in enumerate(toks) if t.content), 0)
    span = list(toks[:end]) if end is not None else list(toks[: first + 1])
    while span and span[0].word in PREPOSITIONS:  # "In 1903 Ada Penhallow led ...": past the leading phrase
        k = 1
        while k < len(span) and not (span[k].kind == "name" and k > 1) and span[k].kind != "mark":
            k += 1
        span = span[k + (k < len(span) and span[k].kind == "mark") :]
    words = frozenset(t.stem for t in span if t.content and t.kind != "number")
    names = [u for _, u in name_units(span)]
    pronoun = next((t.word for t in span if t.pronoun), None)
    head = next((t.stem for t in reversed(span) if t.kind == "word"), None)
    if names:
        return Subject(words, names[0], head), None
    return Subject(words, None, head), pronoun


def subject_of(sentence: str, before: Subject | None) -> Subject | None:
    """What the answer is about after ``sentence``: its subject, or (a pronoun subject) what it stood for."""
    subject, pronoun = _subject(tokens(sentence))
    if pronoun is not None:
        return before
    return subject if subject.words else before


def _after_by(toks: Sequence[Tok], index: int) -> frozenset[str]:
    """The content words of the "by ..." phrase after ``index`` (a passive's agent), up to a mark or a verb."""
    for k in range(index + 1, len(toks)):
        if toks[k].kind == "boundary":
            break
        if toks[k].stem == "by":
            out = set()
            for t in toks[k + 1 :]:
                if t.kind in ("mark", "boundary") or t.verbish or t.word in COPULAS:
                    break
                if t.content:
                    out.add(t.stem)
            return frozenset(out)
    return frozenset()


# ----- the rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Support:
    score: float  # the share of the claim's content words in the passage (0 when a rule is broken)
    why: str | None  # the rule it broke
    passage: Passage
    found: int  # content words found, rules aside: which passage came closest
    read_as: tuple[tuple[str, Unit], ...] = ()  # references the passage makes that the claim names
    absent: tuple[str, ...] = ()  # its words the passage does not have


def support(
    claim: Claim, document: Document, passage: Passage, descriptions: Mapping[Unit, frozenset[str]] | None = None
) -> Support:
    """The passage's support of the claim, and the rule it broke (then 0). ``descriptions``: what the sources
    say each name is ("Zorvath is a small desert planet"), so "the planet" is about Zorvath."""
    descriptions = descriptions if descriptions is not None else document.descriptions
    referred = set(passage.referred)
    present = passage.stems | referred
    found = sum(t.stem in present for t in claim.content)

    def no(why: str) -> Support:
        return Support(0.0, why, passage, found)

    if not claim.content:
        return no("no claim")
    read_as: list[tuple[str, Unit]] = []
    for unit in claim.names:
        if contains(unit, passage.joined):
            continue
        said = passage.refers_to(unit)
        if said is None:
            return no(f"the name {' '.join(unit)!r} is not in the passage, and nothing there refers to it")
        read_as.append((said, unit))
    if claim.subject.name is None and claim.subject.head is not None:  # a named subject: the names say it
        head = claim.subject.head
        described = any(
            head in nouns and (contains(unit, passage.joined) or passage.refers_to(unit) is not None)
            for unit, nouns in descriptions.items()
        )
        if head not in present and not described:
            return no(f"its subject ({head}) is not what the passage is about")
    if claim.negated and not passage.negated:
        return no("a negation the source does not have")
    words = {t.stem for t in claim.content}
    if not claim.negated:
        denied = _denied(claim, passage)
        if denied is not None:
            return no(f"the source says not: {denied!r}")
    for i, tok in enumerate(claim.tokens):
        if tok.kind == "number":
            if tok.stem not in passage.stems:
                return no(f"the number {tok.stem} is not there")
            if not _bound(claim.tokens, i, passage.tokens):
                return no(f"the number {tok.stem} is there for another fact")
        elif tok.kind in ("word", "name") and not tok.verbish and _in_place_of(claim, i, passage, words, referred):
            return no(f"{tok.word!r} where the source has another word")
    turned = _turned(claim, passage)
    if turned is not None:
        return no(turned)
    # what it says of its subject must be there as much as its words are: the lower share is its score
    relation = claim.relation
    share = sum(t.stem in present for t in relation) / len(relation) if relation else 1.0
    absent = tuple(t.word for t in claim.content if t.stem not in present)
    return Support(min(found / len(claim.content), share), None, passage, found, tuple(read_as), absent)


def _in_place_of(claim: Claim, i: int, passage: Passage, words: set[str], referred: set[str]) -> bool:
    """The claim's ``i``-th word stands where the passage has another: a preposition's other object (a name
    too: "born in Kew"), or, for a word that is not what the passage refers to, another modifier or head."""
    if _other_object(claim.tokens, i, passage, words):
        return True
    tok = claim.tokens[i]
    return (
        tok.kind == "word"
        and tok.stem not in referred
        and tok.stem not in claim.subject.words
        and _replaced(claim.tokens, i, passage, words)
    )


def _denied(claim: Claim, passage: Passage) -> str | None:
    """A word the claim asserts that the passage has right after a negation ("never married")."""
    asserted = {t.stem for t in claim.relation}
    for sentence, _ in passage.sentences:
        for k, tok in enumerate(sentence):
            if tok.stem in asserted and tok.kind == "word":
                back = [t for t in sentence[max(0, k - 3) : k] if t.kind != "mark"]
                if any(t.negation for t in back):
                    return " ".join(t.word for t in [*back, tok])
    return None


def _turned(claim: Claim, passage: Passage) -> str | None:
    """Who does what is kept: the passage's agent ("built ... by X") is not the claim's patient ("X was built"),
    and a claim in the active voice ("A built B") has the passage's agent as its subject."""
    for sentence, _ in passage.sentences:
        for k, tok in enumerate(sentence):
            if not is_participle(tok) or k == 0:
                continue
            passive_there = any(t.word in COPULAS for t in sentence[max(0, k - 3) : k])
            agent = _after_by(sentence, k)
            if not passive_there or not agent:
                continue
            if claim.passive == tok.stem and not claim.agent and claim.subject.words & agent:
                return "the source has it the other way round: " + f"{' '.join(sorted(agent))} did it"
            active = next((t for t in claim.tokens if t.stem == tok.stem and t.kind == "word"), None)
            if claim.passive is None and active is not None and not claim.subject.words & agent:
                return "the source has it the other way round: " + f"{' '.join(sorted(agent))} did it"
    return None


def _after(toks: Sequence[Tok], index: int) -> Tok | None:
    return toks[index + 1] if index + 1 < len(toks) else None


def _bound(claim: Sequence[Tok], index: int, passage: Sequence[Tok]) -> bool:
    """A claim's number is there for the same fact: the word right after it (its unit: "1977 metres",
    "40 passengers") follows it in the passage too, and so does the word after the unit where the claim has
    one ("240 metres long"); a number with no unit ("finished in 1968") shares a word of its neighbourhood
    with the passage's."""
    value, unit = claim[index].stem, _after(claim, index)
    places = [j for j, t in enumerate(passage) if t.kind == "number" and t.stem == value]
    if unit is not None and unit.kind == "word":
        places = [j for j in places if (after := _after(passage, j)) is not None and after.stem == unit.stem]
        measure = _after(claim, index + 1)
        if measure is not None and measure.kind == "word" and not measure.verbish:
            return any((m := _after(passage, j + 1)) is not None and m.stem == measure.stem for j in places)
        return bool(places)
    around = _around(claim, index, 3)
    return not around or any(around & _around(passage, j, 3) for j in places)


def _around(toks: Sequence[Tok], index: int, reach: int) -> set[str]:
    """The content words and numbers within ``reach`` content tokens of ``index``, in its own sentence (a name
    of several words counts as one)."""
    out: set[str] = set()
    for step in (-1, 1):
        k, taken = index + step, 0
        while 0 <= k < len(toks) and taken < reach and toks[k].kind != "boundary":
            if toks[k].content:
                out.add(toks[k].stem)
                in_name = toks[k].kind == "name" and 0 <= k - step < len(toks) and toks[k - step].kind == "name"
                taken += not in_name
            k += step
    return out


def _neighbours(toks: Sequence[Tok], index: int, step: int, *, links: bool = True) -> list[tuple[int, bool]]:
    """Where the word next to ``index`` stands, going ``step``: right beside it, or past a determiner, a
    preposition, a coordinator, a parenthesis or (``links``) a copula ("cover the southern", "sour and firm",
    "open on weekends", "its tail is red", "Ada Penhallow (1874-1951) was a botanist"); with whether a copula
    was passed."""
    k, skipped, linked = index + step, 0, False
    while 0 <= k < len(toks) and toks[k].kind != "boundary":
        tok = toks[k]
        if tok.stem in ("(", ")"):  # a parenthesis is passed over whole
            close = ")" if tok.stem == "(" else "("
            while 0 <= k < len(toks) and toks[k].stem != close and toks[k].kind != "boundary":
                k += step
            k += step
            continue
        if tok.content:
            return [(k, linked)]
        copula = tok.stem in COPULAS
        if tok.stem in DETERMINERS or tok.stem in PREPOSITIONS or tok.stem in ("and", "or") or (copula and links):
            skipped += 1
            linked = linked or copula
            if skipped > 2:
                break
            k += step
            continue
        break
    return []


def _other_object(claim: Sequence[Tok], index: int, passage: Passage, words: set[str]) -> bool:
    """ "founded by a fisherman" (or "born in Kew") where the passage's sentence has the same word and "by the
    merchant" ("born in Truro")."""
    k = index - 1
    while k >= 0 and claim[k].stem in DETERMINERS:
        k -= 1
    if k < 1 or claim[k].stem not in PREPOSITIONS:
        return False
    preposition, head = claim[k].stem, next((t.stem for t in reversed(claim[:k]) if t.content), None)
    for sentence, _ in passage.sentences:
        stems = [t.stem for t in sentence]
        if head not in stems:
            continue
        for j in range(stems.index(head) + 1, len(sentence) - 1):
            if sentence[j].kind == "mark":  # the head's own phrase only
                break
            if sentence[j].stem != preposition:
                continue
            m = j + 1
            while m < len(sentence) and sentence[m].stem in DETERMINERS:
                m += 1
            phrase = []  # the preposition's object: up to a mark, a verb, "and" or another preposition
            for t in sentence[m:]:
                if t.kind == "mark" or t.verbish or t.stem in ("and", "or") or t.stem in PREPOSITIONS:
                    break
                phrase.append(t)
            slot = phrase[0] if phrase else None
            if slot is not None and slot.content and slot.stem not in words:
                return claim[index].stem not in {t.stem for t in phrase}
            break
    return False


def _replaced(claim: Sequence[Tok], index: int, passage: Passage, words: set[str]) -> bool:
    """A claim word that its passage's sentence lacks stands where that sentence has another word, next to
    the same word: a modifier ("an arch dam" for "a gravity dam"), a head ("ground coal" for "ground grain",
    "320 cars" for "320 passengers") or a coordinate ("sour and firm" for "sweet and firm")."""
    x = claim[index].stem
    for step in (1, -1):
        for k, linked in _neighbours(claim, index, step):
            anchor = claim[k]
            for sentence, present in passage.sentences:
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


def swapped(claim: Claim, document: Document) -> bool:
    """Two attributes in each other's place ("red with yellow stripes" for "yellow with red stripes"), or a
    name put beside what the source names otherwise ("the Strand apple" for "the Corrin apple", "the river
    Callow" for "the river Sabb")."""
    from toolkit.grounding.document import _adjacent, _pairs

    ours, near_ours = _pairs(claim.tokens), _adjacent(claim.tokens)
    theirs, near_theirs, kinds = document.pairs, document.adjacent, document.kinds
    names = {t.stem for t in claim.tokens if t.kind == "name"}
    for x, y in near_ours - near_theirs:
        for z, y2 in near_theirs:
            if y2 != y or z == x:
                continue
            if kinds.get(z) == "name" and x in names and (x, y) not in theirs:
                return True  # another name on the same thing
            if any((w, z) in ours and (w, x) in theirs for w, _ in ours):
                return True  # x and z changed places
        if (
            kinds.get(x) == "word"
            and y in names
            and (x, y) not in theirs
            and any(x2 == x and z != y and kinds.get(z) == "name" for x2, z in near_theirs)
        ):
            return True  # the same thing, another name after it
    return False
