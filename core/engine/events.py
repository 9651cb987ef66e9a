"""The training loop's vocabulary, shared by the Learner, its callbacks and the lr finder: the Callback
base class and the Cancel*Exceptions that skip part of a fit. Nothing here imports the Learner, so the
Learner can import its callbacks at the top like any other module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.engine.learner import Learner


class CancelFitException(Exception):
    """Stop fitting now (after_cancel_fit then after_fit run)."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch."""


class CancelTrainException(Exception):
    """Skip the rest of this epoch's training batches."""


class CancelValidException(Exception):
    """Skip this epoch's validation."""


class CancelBatchException(Exception):
    """Skip the rest of this batch."""


class CancelBackwardException(Exception):
    """Skip the backward pass of this batch."""


class CancelStepException(Exception):
    """Skip the optimizer step of this batch (gradients are kept)."""


class Callback:
    """Override any of the event methods; `order` sorts callbacks (lower runs first)."""

    order = 0
    run_in_lr_find = True  # False: stays out of lr_find's throw-away run (checkpoints, reports)
    learn: Learner

    def __call__(self, event: str) -> None:
        handler = getattr(self, event, None)
        if handler is not None:
            handler()


# A learning rate: one for every layer group, slice(hi) (body hi/10, head hi), slice(lo, hi) spread
# geometrically from the first group to the last, or one per group.
LrSpec = float | slice | Sequence[float]
