"""Schedules are numbers: check them as numbers."""

import math

import pytest

from core.engine.schedules import combine_scheds, one_cycle_lr, one_cycle_mom, sched_cos, sched_exp, sched_lin


def test_cosine_goes_from_start_to_end_through_the_midpoint() -> None:
    s = sched_cos(1.0, 3.0)
    assert s(0.0) == pytest.approx(1.0)
    assert s(0.5) == pytest.approx(2.0)
    assert s(1.0) == pytest.approx(3.0)


def test_linear_and_exponential() -> None:
    assert sched_lin(0, 10)(0.3) == pytest.approx(3.0)
    assert sched_exp(1e-7, 10)(0.5) == pytest.approx(math.sqrt(1e-7 * 10))


def test_combined_schedules_switch_at_their_share() -> None:
    s = combine_scheds([0.25, 0.75], [sched_lin(0, 1), sched_lin(1, 0)])
    assert s(0.125) == pytest.approx(0.5)
    assert s(0.25) == pytest.approx(1.0)
    assert s(1.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="add up to 1"):
        combine_scheds([0.5, 0.6], [sched_lin(0, 1), sched_lin(1, 0)])


def test_one_cycle_matches_fastai_defaults() -> None:
    lr = one_cycle_lr(1e-2)  # div 25, div_final 1e5, pct_start 0.25
    assert lr(0.0) == pytest.approx(1e-2 / 25)
    assert lr(0.25) == pytest.approx(1e-2)
    assert lr(1.0) == pytest.approx(1e-2 / 1e5)
    mom = one_cycle_mom()
    assert (mom(0.0), mom(0.25), mom(1.0)) == pytest.approx((0.95, 0.85, 0.95))
