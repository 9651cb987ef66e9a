"""The learning-rate finder [fastai: lr_find]: an exponential sweep from start_lr to end_lr that stops
when the smoothed loss passes 4x its minimum, four suggestions (valley, steep, minimum, slide), and
an exact restore of the model, optimizer and RNG afterwards."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core.engine.events import Callback, CancelFitException, CancelValidException
from core.engine.schedules import sched_exp

if TYPE_CHECKING:
    from core.engine.learner import Learner


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The middle of the longest valley: a point 1/2 of the way into the steepest descending stretch."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    """Where the loss falls fastest against log(lr)."""
    grads = (losses[1:] - losses[:-1]) / (np.log(lrs[1:]) - np.log(lrs[:-1]))
    return float(lrs[int(np.argmin(grads))])


def minimum(lrs: np.ndarray, losses: np.ndarray) -> float:
    """One tenth of the lr at the lowest loss."""
    return float(lrs[int(np.argmin(losses))]) / 10


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai's interval slide rule: walk left from the end until the loss gradient flattens."""
    grads = np.gradient(losses)
    r_idx, l_idx = -1, -1 - lr_diff
    local_min_lr = lrs[l_idx] if len(lrs) > lr_diff else lrs[0]
    while l_idx >= -len(losses) and abs(grads[r_idx] - grads[l_idx]) > thresh:
        local_min_lr = lrs[l_idx]
        r_idx -= 1
        l_idx -= 1
    return float(local_min_lr)


SUGGESTIONS = {"valley": valley, "steep": steep, "minimum": minimum, "slide": slide}

FULL_SWEEP = 100  # fastai's steps, whatever the data
MIN_SWEEP = 30  # below this the curve's valley is a guess


def sweep_steps(budget: int) -> int:
    """How many steps a sweep takes when it serves a stage of `budget` training steps: no more than that stage
    (a sweep that costs more than the training it tunes does not pay for itself), at least MIN_SWEEP, at most
    fastai's FULL_SWEEP. bench/lr_find_sized.py measures the suggestions against full sweeps."""
    return max(MIN_SWEEP, min(FULL_SWEEP, budget))


def sweep_start(num_it: int, start_lr: float = 1e-7) -> float:
    """Where a sweep of num_it steps starts: fastai's 1e-7 at 100 steps, rising to 1e-5 at MIN_SWEEP. A short
    sweep over fastai's whole range would take a quarter-decade per step, too coarse for its valley (measured:
    2-6x low on three sets, tests/jobs/test_lr_find_sized.py); the decades below 1e-5 are flat for nearly every model,
    so a short sweep spends its steps above them."""
    share = (FULL_SWEEP - min(FULL_SWEEP, max(MIN_SWEEP, num_it))) / (FULL_SWEEP - MIN_SWEEP)
    return max(start_lr, start_lr * 100**share)


def sweep_beta(num_it: int) -> float:
    """The loss smoothing for a sweep of num_it steps: fastai's 0.98 averages over ~50 steps, half of its 100;
    a shorter sweep keeps that share (1 - 2/num_it), or its smoothed loss would lag the rising lr by most of the
    sweep and every suggestion would land late."""
    return min(0.98, max(0.9, 1 - 2 / num_it))


@dataclass
class LRFindResult:
    """The sweep (lr and smoothed loss per step) and the suggested learning rates."""

    lrs: list[float]
    losses: list[float]
    suggestions: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {"lrs": self.lrs, "losses": self.losses, "suggestions": self.suggestions}


class LRFinder(Callback):
    """Sets an exponentially growing lr each batch and stops on divergence or after num_it batches."""

    order = 55  # after the Recorder, whose smoothed loss it reads

    def __init__(self, start_lr: float, end_lr: float, num_it: int, stop_div: bool) -> None:
        self.sched = sched_exp(start_lr, end_lr)
        self.num_it, self.stop_div = num_it, stop_div

    def before_fit(self) -> None:
        self.best_loss = math.inf

    def before_batch(self) -> None:
        if self.learn.training:
            lr = self.sched(self.learn.train_iter / self.num_it)
            self.learn.set_hypers([lr] * len(self.learn.groups), self.learn.moms[0])

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        smooth = self.learn.recorder.smooth_loss
        # The first tenth neither sets the minimum nor is checked against it, as the suggestions skip it:
        # there the smoothed loss is an average of a few batches, and on an already trained model one easy
        # batch can set a minimum that the next few ordinary ones pass 4x over, long before any divergence.
        warmed_up = self.learn.train_iter >= self.num_it // 10
        if warmed_up and smooth < self.best_loss:
            self.best_loss = smooth
        if self.stop_div and (math.isnan(smooth) or (warmed_up and smooth > 4 * self.best_loss)):
            raise CancelFitException()
        if self.learn.train_iter + 1 >= self.num_it:
            raise CancelFitException()

    def before_validate(self) -> None:
        raise CancelValidException()


def run_lr_find(learn: Learner, start_lr: float, end_lr: float, num_it: int, stop_div: bool) -> LRFindResult:
    """Sweep, suggest, then put the learner back exactly as it was."""
    saved_model = copy.deepcopy(learn.model.state_dict())
    had_opt = learn.opt is not None
    saved_opt = copy.deepcopy(learn.opt.state_dict()) if learn.opt is not None else None
    saved_recorder = learn.recorder.state()
    saved_fit_index = learn.fit_index
    saved_rng = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    n_epoch = max(1, math.ceil(num_it / max(1, learn.n_train_batches)))
    start_lr = sweep_start(num_it, start_lr)
    finder = LRFinder(start_lr, end_lr, num_it, stop_div)
    learn.lr_finding = True
    learn.recorder.beta = sweep_beta(num_it)
    try:
        first = len(learn.recorder.batches)
        learn.fit(n_epoch, start_lr, cbs=[finder], tag="lr_find")
        rows = learn.recorder.batches[first:]
    finally:
        del learn.recorder.beta  # back to the class's smoothing for training
        learn.lr_finding = False
        learn.model.load_state_dict(saved_model)
        if had_opt and saved_opt is not None and learn.opt is not None:
            learn.opt.load_state_dict(saved_opt)
        else:
            learn.opt = None
        learn.recorder.load_state(saved_recorder)
        learn.fit_index = saved_fit_index
        torch.set_rng_state(saved_rng)
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
    lrs = [r["lr"] for r in rows]
    losses = [r["smooth_loss"] for r in rows]
    result = LRFindResult(lrs, losses)
    # As fastai: skip the first tenth and the last five steps, where the curve says little.
    lo, hi = num_it // 10, len(lrs) - 5
    if hi - lo >= 3:
        x, y = np.array(lrs[lo:hi]), np.array(losses[lo:hi])
        result.suggestions = {name: f(x, y) for name, f in SUGGESTIONS.items()}
    return result
