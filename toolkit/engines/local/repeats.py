"""Penalties against repeating oneself, over the tokens a row has *generated* (never the prompt: copying
a name or a number from a source stays free).

- DRY ("don't repeat yourself", as llama.cpp, koboldcpp and text-generation-webui have it): a token that
  would extend a sequence which already occurred in the answer is penalised in proportion to how long
  that sequence is: ``multiplier * base ** (length - allowed_length)`` for a match of at least
  ``allowed_length`` tokens. A match does not run across a sequence breaker (a newline, a colon, a quote,
  an asterisk), so the lines of a list or a table do not count as one long repeat.
- No repeated n-gram: a token that would complete an n-gram the answer already has is not chosen.

Both are plain Python over short lists: the engine keeps, per row, where each generated token occurred.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

BREAKERS = ("\n", ":", '"', "*")  # as text-generation-webui's default sequence breakers
MAX_MATCH = 64  # the longest match DRY looks back for (its penalty has grown enormous by then)


def breaker_ids(tokenizer: Any, breakers: Iterable[str] = BREAKERS) -> frozenset[int]:
    """The token ids whose text holds a sequence breaker (computed once per model)."""
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
    marks = tuple(breakers)
    return frozenset(i for i, text in enumerate(texts) if any(m in text for m in marks))


@dataclass
class Generated:
    """One row's generated tokens, indexed for DRY and the n-gram rule."""

    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    no_repeat_ngram_size: int = 0
    breakers: frozenset[int] = frozenset()
    tokens: list[int] = field(default_factory=list)
    _where: dict[int, list[int]] = field(default_factory=dict)  # token -> its positions
    _ngrams: dict[tuple[int, ...], set[int]] = field(default_factory=dict)  # (n-1)-gram -> tokens that followed

    @property
    def active(self) -> bool:
        return self.dry_multiplier > 0 or self.no_repeat_ngram_size > 0

    def observe(self, token: int) -> None:
        n = self.no_repeat_ngram_size
        if n > 1 and len(self.tokens) >= n - 1:
            self._ngrams.setdefault(tuple(self.tokens[len(self.tokens) - n + 1 :]), set()).add(token)
        self._where.setdefault(token, []).append(len(self.tokens))
        self.tokens.append(token)

    def banned(self) -> set[int]:
        """Tokens that would complete an n-gram already generated."""
        n = self.no_repeat_ngram_size
        if n <= 0:
            return set()
        if n == 1:
            return set(self._where)
        if len(self.tokens) < n - 1:
            return set()
        return self._ngrams.get(tuple(self.tokens[len(self.tokens) - n + 1 :]), set())

    def dry_penalties(self) -> dict[int, float]:
        """Token -> the DRY penalty to subtract from its logit."""
        if self.dry_multiplier <= 0 or not self.tokens:
            return {}
        tokens, last = self.tokens, self.tokens[-1]
        if last in self.breakers:
            return {}
        end = len(tokens) - 1
        longest: dict[int, int] = {}
        for at in self._where.get(last, ()):
            if at >= end:
                continue
            # how far the sequence ending at ``at`` matches the one ending now, going back
            length = 1
            while (
                length < MAX_MATCH
                and at - length >= 0
                and tokens[at - length] == tokens[end - length]
                and tokens[at - length] not in self.breakers
            ):
                length += 1
            following = tokens[at + 1]
            if length > longest.get(following, 0):
                longest[following] = length
        penalties = {}
        for token, length in longest.items():
            if length >= self.dry_allowed_length:
                penalties[token] = self.dry_multiplier * self.dry_base ** (length - self.dry_allowed_length)
        return penalties
