"""The promotion gate: a retrained model (the challenger) replaces the model serving its name (the champion)
only when it scores better on the same validation items and no class gets much worse."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from core.engine.inference import Predictor
from core.engine.items import LabelledItems
from core.engine.tasks import Scores, task_of


@dataclass(frozen=True)
class Policy:
    """A name's retraining policy. The gate reads min_improvement and max_class_drop; auto_promote lets it
    promote on its own (else a person promotes); min_feedback is how much new feedback starts a retrain."""

    min_feedback: int = 50
    min_improvement: float = 0.0
    max_class_drop: float = 0.05
    auto_promote: bool = True

    @classmethod
    def of(cls, stored: dict[str, Any]) -> Policy:
        """A stored policy (unset fields take the defaults)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(challenger: Scores, champion: Scores | None, policy: Policy) -> Decision:
    """Promote when the challenger's main metric is at least the champion's + min_improvement (in the
    metric's good direction) and no class's recall or IoU drops by more than max_class_drop."""
    if champion is None:
        return Decision(True, "the name has no champion")
    metric = challenger.metric
    gain = challenger.value - champion.value if challenger.higher_is_better else champion.value - challenger.value
    if gain < policy.min_improvement:
        relation = ">=" if challenger.higher_is_better else "<="
        wanted = (
            champion.value + policy.min_improvement
            if challenger.higher_is_better
            else champion.value - policy.min_improvement
        )
        return Decision(
            False,
            f"challenger's {metric} {challenger.value:.4f} is not {relation} {wanted:.4f} "
            f"(champion's {champion.value:.4f}, min_improvement {policy.min_improvement})",
        )
    drops = {
        c: champion.per_class[c] - challenger.per_class.get(c, 0.0)
        for c in champion.per_class
        if champion.per_class[c] - challenger.per_class.get(c, 0.0) > policy.max_class_drop
    }
    if drops:
        worst = max(drops, key=lambda c: drops[c])
        return Decision(
            False,
            f"class '{worst}' drops {drops[worst]:.3f} (from {champion.per_class[worst]:.3f}), more than "
            f"max_class_drop {policy.max_class_drop}"
            + (f"; {len(drops) - 1} more classes drop" if len(drops) > 1 else ""),
        )
    return Decision(
        True,
        f"challenger's {metric} {challenger.value:.4f} vs champion's {champion.value:.4f} (gain {gain:+.4f} >= "
        f"{policy.min_improvement}); no class drops more than {policy.max_class_drop}",
    )


def decide_with_gold(
    challenger: Scores,
    champion: Scores | None,
    policy: Policy,
    gold_challenger: Scores | None = None,
    gold_champion: Scores | None = None,
) -> Decision:
    """The gate on the new version's validation items, and also on the project's gold items when both were
    scored there: the challenger must pass both."""
    verdict = decide(challenger, champion, policy)
    if gold_challenger is None or gold_champion is None:
        return verdict
    on_gold = decide(gold_challenger, gold_champion, policy)
    promote = verdict.promote and on_gold.promote
    return Decision(promote, f"validation: {verdict.reason}; gold: {on_gold.reason}")


def score_bundle(bundle: Path, items: LabelledItems, split: str = "valid", batch: int = 32) -> Scores:
    """A bundle's answers on the items' validation split ("valid"), training split ("train") or every item
    ("all": a gold set), scored by the items' task."""
    predictor = Predictor(bundle)
    task = task_of(items)
    if predictor.task is not task:
        raise ValueError(f"a {predictor.task.name} model cannot be scored on {task.name} data")
    indices = list(range(len(items))) if split == "all" else items.indices(split == "valid")
    answers = []
    for start in range(0, len(indices), batch):
        answers += predictor.predict_batch([items.path(i) for i in indices[start : start + batch]])
    return task.score(answers, items, indices)
