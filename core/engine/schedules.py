"""Schedules are pure functions of the position in [0, 1] [fastai: sched_cos, combine_scheds]."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Schedule = Callable[[float], float]


def sched_cos(start: float, end: float) -> Schedule:
    """Cosine annealing from start to end."""
    return lambda pos: start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def sched_lin(start: float, end: float) -> Schedule:
    """Linear from start to end."""
    return lambda pos: start + pos * (end - start)


def sched_exp(start: float, end: float) -> Schedule:
    """Exponential from start to end (both > 0)."""
    return lambda pos: start * (end / start) ** pos


def combine_scheds(pcts: Sequence[float], scheds: Sequence[Schedule]) -> Schedule:
    """Run each schedule over its share `pcts` of the whole, in order."""
    if abs(sum(pcts) - 1.0) > 1e-6:
        raise ValueError(f"the shares must add up to 1, got {sum(pcts)}")
    bounds = [0.0]
    for p in pcts:
        bounds.append(bounds[-1] + p)

    def sched(pos: float) -> float:
        pos = min(max(pos, 0.0), 1.0)
        for i, s in enumerate(scheds):
            lo, hi = bounds[i], bounds[i + 1]
            if pos <= hi or i == len(scheds) - 1:
                return s((pos - lo) / (hi - lo) if hi > lo else 1.0)
        raise AssertionError("unreachable")

    return sched


def combined_cos(pct: float, start: float, middle: float, end: float) -> Schedule:
    """Cosine from start to middle over `pct`, then middle to end [fastai: combined_cos]."""
    return combine_scheds([pct, 1 - pct], [sched_cos(start, middle), sched_cos(middle, end)])


def one_cycle_lr(lr_max: float, pct_start: float = 0.25, div: float = 25.0, div_final: float = 1e5) -> Schedule:
    """fastai v2's one-cycle learning rate: lr_max/div -> lr_max -> lr_max/div_final."""
    return combined_cos(pct_start, lr_max / div, lr_max, lr_max / div_final)


def one_cycle_mom(pct_start: float = 0.25, moms: tuple[float, float, float] = (0.95, 0.85, 0.95)) -> Schedule:
    """fastai v2's one-cycle momentum: 0.95 -> 0.85 -> 0.95."""
    return combined_cos(pct_start, *moms)
