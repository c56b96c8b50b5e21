"""The interval and the test an evaluation reports, against values worked out by hand."""

from __future__ import annotations

import pytest

from toolkit.evals.stats import mcnemar, wilson


def test_wilson_interval() -> None:
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook 8/10
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0  # stays within 0..1
    assert wilson(0, 0) == (0.0, 1.0)  # nothing measured: anything is possible
    narrow, wide = wilson(80, 100), wilson(8, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


@pytest.mark.parametrize(
    "fixed,broken,p",
    [(0, 0, 1.0), (0, 5, 0.0625), (0, 6, 0.03125), (1, 9, 0.021484375), (5, 5, 1.0), (2, 3, 1.0), (10, 0, 2 / 1024)],
)
def test_mcnemar_exact(fixed: int, broken: int, p: float) -> None:
    assert mcnemar(fixed, broken) == pytest.approx(p)
    assert mcnemar(broken, fixed) == pytest.approx(p)  # two-sided
