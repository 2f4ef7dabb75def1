"""Paired statistics over seeds against a hand-computed example."""

import math

import pytest

from util.stats import paired_difference


def test_paired_difference_matches_a_hand_computation():
    a = {0: 1.0, 1: 2.0, 2: 4.0}
    b = {0: 1.5, 1: 2.0, 2: 3.0, 3: 9.0}
    d = paired_difference(a, b)
    # Differences -0.5, 0, 1: mean 1/6; sample sd sqrt(((-2/3)^2 + (1/6)^2 + (5/6)^2) / 2) = sqrt(7/12);
    # se = sd / sqrt(3); t(0.975, 2 dof) = 4.302653 (tables).
    se = math.sqrt(7 / 12) / math.sqrt(3)
    assert d.seeds == (0, 1, 2) and d.only_b == (3,) and d.only_a == ()
    assert d.mean == pytest.approx(1 / 6)
    assert d.se == pytest.approx(se)
    assert d.low == pytest.approx(1 / 6 - 4.302653 * se, abs=1e-5)
    assert d.high == pytest.approx(1 / 6 + 4.302653 * se, abs=1e-5)
    assert (d.wins_a, d.wins_b) == (1, 1)
    assert d.mean_a == pytest.approx(7 / 3) and d.mean_b == pytest.approx(6.5 / 3)
    assert d.sd_a == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert not d.significant and d.verdict("hyperpose", "effposenet") == "no significant difference"


def test_a_consistent_difference_is_significant_and_named():
    d = paired_difference({0: 1.0, 1: 1.1, 2: 0.9}, {0: 2.0, 1: 2.2, 2: 1.95})
    assert d.mean < 0 and d.high < 0 and d.significant
    assert d.verdict("hyperpose", "effposenet") == "hyperpose better"
    assert paired_difference({0: 3.0, 1: 3.1}, {0: 1.0, 1: 1.05}).verdict("x", "y") == "y better"


def test_one_pair_or_none_cannot_tell():
    one = paired_difference({0: 1.0, 5: 2.0}, {0: 2.0})
    assert one.n == 1 and math.isnan(one.se) and one.only_a == (5,)
    assert one.verdict().startswith("cannot tell") and not one.significant
    assert paired_difference({0: 1.0}, {1: 1.0}) is None
