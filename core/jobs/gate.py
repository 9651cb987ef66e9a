"""The promotion gate: a new model of a name (the challenger) replaces the model serving it (the champion)
unless, on the same validation items, it is worse than chance explains, overall or on a class."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from core.engine.inference import Predictor
from core.engine.items import LabelledItems, TextItems
from core.engine.tasks import Scores, task_of
from core.jobs.significance import ALPHA, paired


@dataclass(frozen=True)
class Policy:
    """A name's retraining policy. The gate reads min_improvement and max_class_drop; auto_promote lets it
    promote on its own (else a person promotes); min_feedback is how much new feedback starts a retrain, and
    retrain_on_drift whether a drift alarm on the champion starts one (api/drift.py)."""

    min_feedback: int | None = None  # None: the loop never retrains this name on its own
    min_improvement: float = 0.0
    max_class_drop: float = 0.05
    auto_promote: bool = True
    retrain_on_drift: bool = False  # a drift alarm on the champion queues a retrain from the waiting corrections

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
    tests: dict[str, Any] = field(default_factory=dict)  # the paired tests behind it: "overall", "per_class"


def decide(challenger: Scores, champion: Scores | None, policy: Policy, newer_data: bool = True) -> Decision:
    """Promote unless the challenger is worse than chance explains. Overall: a challenger short of
    min_improvement > 0 is refused (more was asked for); with min_improvement <= 0 a shortfall counts only when
    the paired sign test on the same items says it is beyond chance (p < ALPHA) — if the challenger learnt from
    `newer_data` (a retrain on a corrected version: a tie goes to it). A challenger of the same data (stage 2 after
    its stage 1, a second fine-tune) has nothing new to break a tie with: any shortfall refuses it. Per class: a
    class whose score falls more than max_class_drop counts only when its own items' paired test says so at
    ALPHA / (number of classes) — ten classes tested each at 5% would veto a third of equal retrains by luck
    alone. Scores without per-item values (nothing to pair) fall back to comparing the numbers as they are."""
    if champion is None:
        return Decision(True, "the name has no champion")
    metric = challenger.metric
    gain = challenger.value - champion.value if challenger.higher_is_better else champion.value - challenger.value
    overall = paired(champion.items, challenger.items, challenger.higher_is_better)
    tests: dict[str, Any] = {"alpha": ALPHA, "overall": overall.as_dict() if overall else None, "per_class": {}}
    shown = f"; {overall.text()}" if overall else ""
    if gain < policy.min_improvement:
        relation = ">=" if challenger.higher_is_better else "<="
        wanted = (
            champion.value + policy.min_improvement
            if challenger.higher_is_better
            else champion.value - policy.min_improvement
        )
        short = (
            f"challenger's {metric} {challenger.value:.4f} is not {relation} {wanted:.4f} "
            f"(champion's {champion.value:.4f}, min_improvement {policy.min_improvement}{shown})"
        )
        if policy.min_improvement > 0 or not newer_data or overall is None or overall.p_worse < ALPHA:
            return Decision(False, short + ("" if newer_data else "; it learnt from the same data"), tests)
        chance = f"; the shortfall is within chance (p >= {ALPHA})"
    else:
        chance = ""
    class_tests = {
        c: paired(champion.class_items.get(c, ()), challenger.class_items.get(c, ()), challenger.higher_is_better)
        for c in champion.per_class
    }
    alpha_class = ALPHA / max(1, len(champion.per_class))
    tests["per_class"] = {c: t.as_dict() for c, t in class_tests.items() if t is not None}
    tests["alpha_per_class"] = alpha_class
    falls = {
        c: champion.per_class[c] - challenger.per_class.get(c, 0.0)
        for c in champion.per_class
        if champion.per_class[c] - challenger.per_class.get(c, 0.0) > policy.max_class_drop
    }
    drops = {c: d for c, d in falls.items() if (t := class_tests[c]) is None or t.p_worse < alpha_class}
    if drops:
        worst = max(drops, key=lambda c: drops[c])
        test = class_tests[worst]
        return Decision(
            False,
            f"class '{worst}' drops {drops[worst]:.3f} (from {champion.per_class[worst]:.3f}), more than "
            f"max_class_drop {policy.max_class_drop}"
            + (f", beyond chance on its {test.n} items ({test.text()})" if test else "")
            + (f"; {len(drops) - 1} more classes drop" if len(drops) > 1 else ""),
            tests,
        )
    noise = (
        f"; {len(falls)} class(es) fall more than {policy.max_class_drop} but within chance at their counts "
        f"({', '.join(f'{c}: {t.n} items' for c in sorted(falls) if (t := class_tests[c]) is not None)}, "
        f"p >= {alpha_class:.3g})"
        if falls
        else ""
    )
    return Decision(
        True,
        f"challenger's {metric} {challenger.value:.4f} vs champion's {champion.value:.4f} (gain {gain:+.4f}"
        f"{shown}){chance}; no class drops more than {policy.max_class_drop} beyond chance{noise}",
        tests,
    )


def decide_with_gold(
    challenger: Scores,
    champion: Scores | None,
    policy: Policy,
    gold_challenger: Scores | None = None,
    gold_champion: Scores | None = None,
    newer_data: bool = True,
) -> Decision:
    """The gate on the new version's validation items, and also on the project's gold items when both were
    scored there: the challenger must pass both."""
    verdict = decide(challenger, champion, policy, newer_data)
    if gold_challenger is None or gold_champion is None:
        return verdict
    on_gold = decide(gold_challenger, gold_champion, policy, newer_data)
    promote = verdict.promote and on_gold.promote
    tests = {"validation": verdict.tests, "gold": on_gold.tests}
    return Decision(promote, f"validation: {verdict.reason}; gold: {on_gold.reason}", tests)


def score_bundle(bundle: Path, items: LabelledItems, split: str = "valid", batch: int = 32) -> Scores:
    """A bundle's answers on the items' validation split ("valid"), training split ("train") or every item
    ("all": a gold set), scored by the items' task."""
    if isinstance(items, TextItems):
        return score_text_bundle(bundle, items, split, batch)
    predictor = Predictor(bundle)
    task = task_of(items)
    if predictor.task is not task:
        raise ValueError(f"a {predictor.task.name} model cannot be scored on {task.name} data")
    indices = list(range(len(items))) if split == "all" else items.indices(split == "valid")
    answers = []
    for start in range(0, len(indices), batch):
        answers += predictor.predict_batch([items.path(i) for i in indices[start : start + batch]])
    return task.score(answers, items, indices)


def score_text_bundle(bundle: Path, items: TextItems, split: str = "valid", batch: int = 32) -> Scores:
    """A text classifier's answers on the labelled texts of a split, in label space: accuracy (multi-label: the
    answer's class set is the given one) and recall per class, item by item for the gate's paired test."""
    from core.engine.text.bundle import TextPredictor

    predictor = TextPredictor(bundle)
    if predictor.is_language_model:
        raise ValueError("a language model has no classification score")
    if bool(predictor.thresholds) != items.multi_label:
        raise ValueError("a single-label model cannot be scored on multi-label texts, nor the other way")
    indices = items.labelled(None if split == "all" else split == "valid")
    answers = []
    for start in range(0, len(indices), batch):
        answers += predictor.predict_texts([items.texts[i] for i in indices[start : start + batch]])
    values: list[float] = []
    per_class: dict[str, list[float]] = {}
    for i, p in zip(indices, answers, strict=True):
        given = sorted(items.label_set(i))
        got = sorted(p.answer()["labels"]) if items.multi_label else [p.ranked()[0][0]]
        hit = 1.0 if got == given else 0.0
        values.append(hit)
        for c in given:
            per_class.setdefault(c, []).append(hit)
    return Scores.of_items("accuracy", True, values, per_class)
