"""lr_find's divergence stop on scripted smoothed losses: noise in the first tenth of the sweep (an easy
batch on an already trained model) neither stops it nor sets the minimum; a real blow-up or a NaN does."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from core.engine.events import CancelFitException
from core.engine.lr_finder import LRFinder


def steps_run(losses: list[float], num_it: int = 100) -> int:
    """How many batches the finder lets through before it cancels the fit."""
    learn = SimpleNamespace(
        training=True, train_iter=0, groups=[0], moms=(0.95,), recorder=SimpleNamespace(smooth_loss=0.0)
    )
    learn.set_hypers = lambda lrs, mom: None
    finder = LRFinder(1e-7, 10, num_it, stop_div=True)
    finder.learn = learn  # type: ignore[assignment]
    finder.before_fit()
    for i, loss in enumerate(losses):
        learn.train_iter = i
        learn.recorder.smooth_loss = loss
        finder.before_batch()
        try:
            finder.after_batch()
        except CancelFitException:
            return i + 1
    return len(losses)


def test_an_easy_batch_early_on_does_not_end_the_sweep() -> None:
    # A trained model: the first smoothed value is one easy batch (0.02), then ordinary ones (~0.3).
    losses = [0.02, 0.15, 0.2, 0.25, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3] + [0.3] * 80
    assert steps_run(losses) == 90


def test_a_loss_that_passes_four_times_its_minimum_ends_the_sweep() -> None:
    losses = [0.3] * 50 + [0.25, 0.5, 0.9, 1.2, 5.0, 9.0]
    assert steps_run(losses) == 54  # 1.2 > 4 x 0.25


@pytest.mark.parametrize("at", [0, 5, 40])
def test_nan_ends_the_sweep_anywhere(at: int) -> None:
    losses = [0.3] * 60
    losses[at] = math.nan
    assert steps_run(losses) == at + 1


def test_the_sweep_stops_after_num_it_batches() -> None:
    assert steps_run([0.3] * 200, num_it=100) == 100
