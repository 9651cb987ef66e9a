"""Stage 2's learning rates, chosen in one place: given by the user, or "auto" as the course picks them —
slice(valley suggestion / 10, stage-1 rate / 5) — from what the parent job and its lr_find sweep found."""

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
    low = min(suggestion / 10, high / 10)
    how = {
        "policy": "auto: slice(valley / 10, stage-1 lr / 5)",
        "suggestion": "valley",
        "suggestion_lr": suggestion,
        "suggestion_from": source,
        "stage1_lr": stage1,
        "stage1_lr_from": "the parent job" if spec.stage1_lr else f"the stage-1 default {STAGE1_DEFAULT_LR}",
        "low": low,
        "high": high,
    }
    return low, high, how
