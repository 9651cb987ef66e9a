"""Is a difference between two models on the same items more than chance? A paired sign test: on each item
one model did better, the other did, or they tied; with no real difference, "champion better" and
"challenger better" are equally likely among the items where they differ (for right/wrong answers this is
McNemar's exact test). Small validation sets are common here: 5 items of a class of 40 is a drop of 0.125 that
chance alone makes often, and this is what tells the two apart."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05  # one-sided: how unlikely under "no difference" a drop must be to count
Z95 = 1.959963984540054  # the two-sided 95% normal quantile, for the interval shown


@dataclass(frozen=True)
class Paired:
    """Two models' values on the same n items: how many items each did better on, the mean difference
    (challenger - champion, in the metric's good direction) with its 95% interval, and the sign test's
    one-sided p-value that the challenger is worse."""

    n: int
    worse: int
    better: int
    difference: float
    low: float
    high: float
    p_worse: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "worse": self.worse,
            "better": self.better,
            "difference": self.difference,
            "interval95": [self.low, self.high],
            "p_worse": self.p_worse,
        }

    def text(self) -> str:
        """e.g. 'difference -0.0200 (95% interval -0.0510..+0.0110; worse on 12 of 200 items, better on 8; chance
        of a drop this size: p=0.25)'."""
        return (
            f"difference {self.difference:+.4f} (95% interval {self.low:+.4f}..{self.high:+.4f}; worse on "
            f"{self.worse} of {self.n} items, better on {self.better}; "
            f"chance of a drop this size: p={self.p_worse:.3g})"
        )


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly (n is an item count: small enough for exact sums; large n
    in log space so nothing overflows)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_half_n = -n * math.log(2)
    total = 0.0
    for i in range(k, n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
    return min(1.0, total)


def paired(
    champion: Sequence[float], challenger: Sequence[float], higher_is_better: bool, tie: float = 1e-9
) -> Paired | None:
    """The paired comparison of two models' per-item values (the same items in the same order); None when
    there is nothing to pair (no items, or lists of different lengths: not the same items)."""
    n = len(champion)
    if n == 0 or len(challenger) != n:
        return None
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (b - a) for a, b in zip(champion, challenger, strict=True)]
    worse = sum(1 for d in diffs if d < -tie)
    better = sum(1 for d in diffs if d > tie)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    half = Z95 * sd / math.sqrt(n)
    return Paired(n, worse, better, mean, mean - half, mean + half, binomial_tail(worse, worse + better))
