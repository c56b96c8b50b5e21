"""The statistics an evaluation reports: a pass rate's Wilson interval, and McNemar's exact test on paired
outcomes (the same questions, two variants)."""

from __future__ import annotations

import math


def wilson(passed: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95 % by default) of ``passed`` out of ``n``: it stays within 0..1 and is
    honest for small ``n`` and rates near 0 or 1, where the normal approximation is not."""
    if n == 0:
        return 0.0, 1.0
    p = passed / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    low = 0.0 if passed == 0 else max(0.0, (centre - margin) / scale)
    high = 1.0 if passed == n else min(1.0, (centre + margin) / scale)  # exact at the ends, not 0.9999...
    return low, high


def mcnemar(fixed: int, broken: int) -> float:
    """McNemar's exact p-value (two-sided) from the discordant pairs: questions that passed only with B
    (``fixed``) and only with A (``broken``). Under no difference each discordant pair goes either way with
    probability 1/2, so the count one way is binomial(fixed + broken, 1/2)."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


ALPHA = 0.05


def min_flips(pairs: int, alpha: float = ALPHA) -> int | None:
    """The fewest one-way flips (all discordant pairs the same way) that reach McNemar's p < ``alpha`` with
    ``pairs`` paired answers; None when even all of them flipping could not: the set is too small to tell.
    Known before the run: at 0.05 it is 6 from 6 pairs up (two-sided, 2 / 2**6 = 0.031), None under 6."""
    for k in range(1, pairs + 1):
        if mcnemar(k, 0) < alpha:
            return k
    return None
