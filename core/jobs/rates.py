"""Learning rates chosen from earlier jobs, in one place: stage 2's "auto" as the course picks them —
slice(valley suggestion / 10, stage-1 rate / 5) — from what the parent job and its lr_find sweep found; and a
retrain's defaults, by the course's rule for new data, from how its champion last trained."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.engine.learner import LR_MULT

if TYPE_CHECKING:
    from core.jobs.spec import TrainSpec

STAGE1_DEFAULT_LR = 3e-3  # the course's stage-1 default


@dataclass(frozen=True)
class AutoRateHints:
    """What stage 2's "auto" policy reads from earlier jobs, typed: the parent's stage-1 base rate and the
    valley suggestion of an lr_find job run on the parent's model."""

    stage1_lr: float | None = None
    suggestion: float | None = None
    suggestion_from: str | None = None

    @classmethod
    def from_results(
        cls, parent_result: dict[str, Any], sweep_id: str | None = None, sweep_result: dict[str, Any] | None = None
    ) -> AutoRateHints:
        """From a parent job's result (its lrs.base_lr) and, when there is one, an lr_find child's result."""
        base = (parent_result.get("lrs") or {}).get("base_lr")
        valley = ((sweep_result or {}).get("suggestions") or {}).get("valley")
        return cls(
            float(base) if isinstance(base, int | float) else None,
            float(valley) if isinstance(valley, int | float) else None,
            f"lr_find job {sweep_id}" if isinstance(valley, int | float) and sweep_id else None,
        )

    def spec_fields(self) -> dict[str, Any]:
        """The job-spec fields that carry the hints to the worker's engine (unset ones left out)."""
        fields = {
            "stage1_lr": self.stage1_lr,
            "lr_suggestion": self.suggestion,
            "lr_suggestion_from": self.suggestion_from,
        }
        return {k: v for k, v in fields.items() if v is not None}


def stage2_rates(spec: TrainSpec, sweep: Callable[[], float]) -> tuple[float, float, dict[str, Any]]:
    """Stage 2's (low, high) and how they were chosen. `sweep` runs lr_find on the unfrozen model here, for
    "auto" when no lr_find job of the parent gave a suggestion."""
    if isinstance(spec.lr, tuple):
        return spec.lr[0], spec.lr[1], {"policy": "given", "low": spec.lr[0], "high": spec.lr[1]}
    if isinstance(spec.lr, float):
        lo, hi = spec.lr / LR_MULT, spec.lr
        return lo, hi, {"policy": f"given base rate, spread {LR_MULT}x over the groups", "low": lo, "high": hi}
    suggestion, source = spec.lr_suggestion, spec.lr_suggestion_from or "the parent's lr_find job"
    if suggestion is None:
        suggestion, source = sweep(), "a sweep of the unfrozen model in this job"
    stage1 = spec.stage1_lr or STAGE1_DEFAULT_LR
    high = stage1 / 5
    # The course's slice(valley/10, stage-1 lr/5), with the low end held at most a tenth of the high one: a sweep
    # of an already trained model can suggest a rate near the head's, and the body must still train slower.
    low = min(suggestion / 10, high / 10)
    how = {
        "policy": "auto: slice(min(valley / 10, high / 10), stage-1 lr / 5)",
        "suggestion": "valley",
        "suggestion_lr": suggestion,
        "suggestion_from": source,
        "stage1_lr": stage1,
        "stage1_lr_from": "the parent job" if spec.stage1_lr else f"the stage-1 default {STAGE1_DEFAULT_LR}",
        "low": low,
        "high": high,
    }
    return low, high, how


RETRAIN_LR_FACTOR = 1.5  # "a slightly larger learning rate than it last trained with"
RETRAIN_EXTRA_EPOCHS = 2  # "... and more epochs"
RETRAIN_FALLBACK = {"freeze_epochs": 1, "epochs": 2, "lr": 1e-3}  # a champion that did not record its last stage


def retrain_defaults(last: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """A retrain's freeze_epochs, epochs and lr when the request leaves them out, and how they were chosen.

    The course's rule for new labelled data (lesson 2): load the old model, unfreeze, train at a slightly larger
    learning rate than it last trained with, for more epochs. So: no frozen stage (the head already fits), the
    champion's last-stage rates times RETRAIN_LR_FACTOR with its discriminative spread kept (first group to
    head), for its last stage's epochs plus RETRAIN_EXTRA_EPOCHS. A champion whose last stage was frozen (a
    stage-1 model) gets the spread fine_tune would have given its next stage: slice(head/2/LR_MULT, head/2)."""
    if not last or not all(isinstance(last.get(k), int | float) for k in ("low", "high", "epochs")):
        return dict(RETRAIN_FALLBACK), "fallback: the champion did not record how its last stage trained"
    high = float(last["high"])
    low = float(last["low"])
    if last.get("frozen"):
        low, high = high / 2 / LR_MULT, high / 2
    fields = {
        "freeze_epochs": 0,
        "epochs": int(last["epochs"]) + RETRAIN_EXTRA_EPOCHS,
        "lr": [low * RETRAIN_LR_FACTOR, high * RETRAIN_LR_FACTOR],
    }
    how = (
        f"the champion's last stage ({'frozen, spread as a stage 2' if last.get('frozen') else 'unfrozen'}: "
        f"{low:.3g}..{high:.3g}, {last['epochs']} epochs) x{RETRAIN_LR_FACTOR}, "
        f"+{RETRAIN_EXTRA_EPOCHS} epochs, unfrozen"
    )
    return fields, how
