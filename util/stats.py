"""Paired comparisons over seeds: is the difference between two models larger than seed-to-seed noise?

Two models trained with the same seed see the same data order (and, where their layers agree, the same
initial draws), so their errors are paired: the difference per seed cancels what the seed does to both.
:func:`paired_difference` reports the mean of ``a - b`` over the seeds both have, its standard error
(sample standard deviation of the differences / sqrt(n)), a 95 % confidence interval from Student's t with
n - 1 degrees of freedom, how many seeds each side won, and each side's own mean and spread. A seed only one
side has is named in the result and left out of the pairing, never filled in.

Lower is better for every quantity compared here (errors in metres and degrees): a negative mean difference
means ``a`` had the lower error.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from scipy.stats import t as student_t

CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over the seeds both sides have (lower is better on both)."""

    seeds: tuple[int, ...]  # paired seeds, sorted
    mean: float  # mean of a - b
    se: float  # its standard error (nan with one pair)
    low: float  # 95 % confidence interval of the mean difference (nan with one pair)
    high: float
    wins_a: int  # seeds where a < b
    wins_b: int  # seeds where b < a
    mean_a: float
    sd_a: float  # sample standard deviation over the paired seeds (nan with one)
    mean_b: float
    sd_b: float
    only_a: tuple[int, ...] = ()  # seeds without a partner, left out
    only_b: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def significant(self) -> bool:
        """True when the confidence interval excludes zero."""
        return not math.isnan(self.se) and (self.low > 0 or self.high < 0)

    def verdict(self, name_a: str = "a", name_b: str = "b") -> str:
        """The result in words: who is better, or that the interval covers zero."""
        if self.n < 2:
            return f"cannot tell: {self.n} paired seed(s), at least 2 are needed"
        if not self.significant:
            return "no significant difference"
        return f"{name_a} better" if self.mean < 0 else f"{name_b} better"


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def paired_difference(
    a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE
) -> PairedDifference | None:
    """Pair ``a`` and ``b`` (seed -> value) by seed; None when no seed is in both."""
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) > 1:
        se = statistics.stdev(diffs) / math.sqrt(len(diffs))
        half = float(student_t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * se
        low, high = mean - half, mean + half
    else:
        se = low = high = float("nan")
    va, vb = [a[s] for s in seeds], [b[s] for s in seeds]
    return PairedDifference(
        seeds,
        mean,
        se,
        low,
        high,
        sum(d < 0 for d in diffs),
        sum(d > 0 for d in diffs),
        statistics.fmean(va),
        _sd(va),
        statistics.fmean(vb),
        _sd(vb),
        tuple(sorted(set(a) - set(b))),
        tuple(sorted(set(b) - set(a))),
    )
