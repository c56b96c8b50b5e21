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

from collections.abc import Sequence
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
