"""The loop guard: an answer whose tail is one span repeated over and over ends early, with finish
reason ``repetition``, instead of running to its token limit.

The rule: the last ``span`` items (tokens for the local engine, characters for a remote one) repeat
exactly with some period ``p`` of at most ``max_period`` items, where ``span`` is the larger of
``min_span`` and four periods. So a loop must fill at least ``min_span`` items (64 tokens) and at
least four whole turns before it stops an answer:

- "la femme, la femme, la femme, ..." (period 4 tokens) stops after 64 tokens of it;
- one sentence of 25 tokens said over and over stops at its fourth turn (100 tokens);
- a numbered list, a table's rows or code lines differ from each other (the numbers, the cells),
  so they are not exact repeats and never trip it; a run of one token (a table's "----") would
  need 64 of them in a row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_PERIOD_TOKENS = 64
MIN_SPAN_TOKENS = 64
MAX_PERIOD_CHARS = 256  # for engines that give text, not tokens (a remote server): about 4 characters a token
MIN_SPAN_CHARS = 256
# all of an answer the rule ever looks at: the most a loop can span (four of the longest periods)
TAIL_CHARS = max(MIN_SPAN_CHARS, 4 * MAX_PERIOD_CHARS)


def looping(items: Sequence[Any], *, max_period: int = MAX_PERIOD_TOKENS, min_span: int = MIN_SPAN_TOKENS) -> int:
    """The period of the loop the tail of ``items`` is caught in, or 0 when it is not in one."""
    n = len(items)
    if n < min_span:
        return 0
    last = items[-1]
    for period in range(1, min(max_period, n // 4) + 1):
        if items[-1 - period] != last:  # the cheap test first: most periods fail here
            continue
        span = max(min_span, 4 * period)
        if span <= n and items[n - span + period :] == items[n - span : n - period]:
            return period
    return 0


# ----- near copies: a sentence or clause said again, nearly word for word ---------------------------

SHINGLE = 4  # words: a copy is a run of 4-word sequences that occurred earlier in the answer
MIN_COPY_WORDS = 8  # a near copy this long ends the answer: the second copy, never a third
GAP = 2  # new 4-word sequences tolerated inside a copy (a word added, dropped or changed)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CONNECTOR = re.compile(r"(?:[\s,;:–—-]+(?:and|or|but|then|so|which|that)?)+\s*$", re.I)
_CLAUSE_START = re.compile(r"(?:^|[.!?\n]\s*|[;:]\s+)$")


@dataclass(frozen=True)
class Loop:
    """Why an answer was ended: ``cut`` is where its visible part ends (in characters of the raw text)."""

    kind: str  # near_copy | period
    cut: int


class LoopGuard:
    """The near-copy rule on an answer's text as it streams, for any engine.

    Words are compared, lower-cased, with numbers kept: a run of 4-word sequences that each occurred
    earlier in the answer is a copy in the making; one new sequence after another (``GAP`` of them) ends
    it, and a copy that reaches ``MIN_COPY_WORDS`` words ends the answer (``loop``). The visible answer
    ends where the copy began (at the start of its sentence when it began within that sentence's first
    words), without a dangling "and" or comma; the raw text stays in ``raw``.

    While a copy is in the making its text is held back, not shown: a stream never shows a copy that
    the guard then ends. A list, a table or code whose lines differ in a number or a name has new
    sequences in every line, and text inside a fenced code block is never taken for a copy.
    """

    def __init__(self) -> None:
        self.raw = ""
        self.shown = 0  # characters of ``raw`` released
        self.loop: Loop | None = None
        self._scanned = 0  # characters of ``raw`` cut into words
        self._words: list[tuple[str, int]] = []  # (word, start in raw)
        self._seen: dict[tuple[str, ...], int] = {}  # 4-word sequence -> index of its first word
        self._copy_start: int | None = None  # word index where the copy in the making began
        self._copied = 0  # words of it covered by earlier sequences
        self._misses = 0  # new sequences in a row

    @property
    def visible(self) -> str:
        return self.raw[: self.loop.cut] if self.loop else self.raw

    def push(self, delta: str) -> str:
        """Add generated text; the part that may be shown now."""
        if self.loop is not None or not delta:
            return ""
        self.raw += delta
        for match in _WORD.finditer(self.raw, self._scanned):
            if match.end() == len(self.raw):  # the word may go on in the next delta
                break
            self._scanned = match.end()
            self._word(match.group().lower(), match.start())
            if self.loop is not None:
                return self._release(self.loop.cut)
        # held back: a copy in the making, and the last words, which may begin one (a copy is seen at its
        # fourth word), from the start of their clause; a dangling "and" waits for what follows it
        could_begin = self._copy_start if self._copy_start is not None else len(self._words) - (SHINGLE - 1)
        held = self._clause_start(could_begin) if could_begin < len(self._words) and could_begin >= 0 else self._scanned
        return self._release(self._trimmed(min(held, self._scanned)))

    def finish(self) -> str:
        """The answer ended for another reason: the rest, copy in the making included."""
        return "" if self.loop is not None else self._release(len(self.raw))

    def stop(self, kind: str, cut: int) -> None:
        """Another rule ended the answer; the visible part ends at ``cut`` (trimmed as a near copy is)."""
        if self.loop is None:
            self.loop = Loop(kind, max(self.shown, self._trimmed(cut)))

    def _release(self, end: int) -> str:
        end = max(end, self.shown)
        delta = self.raw[self.shown : end]
        self.shown = end
        return delta

    def _word(self, word: str, start: int) -> None:
        self._words.append((word, start))
        i = len(self._words)
        if i < SHINGLE or self.raw.count("```", 0, start) % 2 == 1:  # inside a code block: never a copy
            return
        key = tuple(w for w, _ in self._words[i - SHINGLE :])
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = i - SHINGLE
        if first is not None and first + SHINGLE <= i - SHINGLE:  # seen before, and not overlapping itself
            if self._copy_start is None:
                self._copy_start, self._copied = i - SHINGLE, SHINGLE
            else:
                self._copied += 1
            self._misses = 0
        elif self._copy_start is not None:
            self._misses += 1
            if self._misses > GAP:
                self._copy_start, self._copied, self._misses = None, 0, 0
        if self._copy_start is not None and self._copied >= MIN_COPY_WORDS:
            self.loop = Loop("near_copy", self._trimmed(self._clause_start(self._copy_start)))

    def _clause_start(self, index: int) -> int:
        """The start of the copy's sentence (or clause), when the copy began within its first words."""
        index = max(0, index)
        start = self._words[index][1]
        for back in range(index, max(-1, index - 3), -1):
            at = self._words[back][1]
            if _CLAUSE_START.search(self.raw[:at]):
                return at
        return start

    def _trimmed(self, cut: int) -> int:
        """``cut`` moved back over trailing spaces and a dangling connector ("…engineer Y and")."""
        kept = self.raw[:cut]
        match = _CONNECTOR.search(kept)
        return match.start() if match else len(kept.rstrip())


def repeats(text: str, n: int = 6, times: int = 3) -> bool:
    """A loop in plain words: some run of ``n`` words occurs ``times`` times or more."""
    words = text.lower().split()
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        key = tuple(words[i : i + n])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] >= times:
            return True
    return False
