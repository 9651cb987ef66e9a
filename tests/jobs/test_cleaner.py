"""The cleaner on every task: out-of-fold answers doubt each item's given target, the most doubtful first, and
each suggestion is a target the task accepts as a correction (what a version's relabel applies)."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

from PIL import Image

from core.datasets.samples import write_silhouette_masks, write_silhouette_points
from core.engine.items import ClassItems
from core.engine.labelling import from_targets_csv
from core.engine.masks import from_mask_rule
from core.engine.tasks import Scores, get_task, task_of
from core.engine.tasks.classification import ClassPrediction
from core.jobs.cleaner import suspects
from core.jobs.context import LocalJobContext
from core.jobs.gate import Policy, decide_with_gold
from core.jobs.spec import TrainSpec
from core.jobs.training import build_learner

CHEAP = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 16, "cleaner_epochs": 2, "augment": False}


def test_points_far_from_where_the_model_puts_them_are_the_first_suspects(tmp_path: Path) -> None:
    folder = write_silhouette_points(tmp_path / "data", count=96, seed=7)
    items = from_targets_csv(folder, "points.csv", "points")
    planted = set(range(0, 96, 16))  # 6 items whose two points are moved to the image's top-left corner
    targets = [[1.0, 1.0, 1.0, 1.0] if i in planted else t for i, t in enumerate(items.targets)]
    items = dataclasses.replace(items, targets=targets)
    # A pretrained body, frozen, as a user's job has (from scratch, 64 items a fold teach a regressor nothing).
    spec = TrainSpec(data=str(folder), **(CHEAP | {"arch": "efficientnet_lite0", "pretrained": "imagenet", "size": 64}))
    rows = suspects(spec, LocalJobContext(tmp_path / "job", show_progress=False), items, 3, build_learner)
    assert len(rows) == len(items) and {r["valid"] for r in rows} == {True, False}
    assert [r["loss"] for r in rows] == sorted((r["loss"] for r in rows), reverse=True)
    first = {items.keys.index(r["item"]) for r in rows[:16]}  # a sixth of the items; chance would hold 1 of 6
    assert len(first & planted) >= 4, f"{len(first & planted)} of the 6 planted items in the first 16"
    top = next(r for r in rows if items.keys.index(r["item"]) in planted)
    assert top["given"]["points"] == [[1.0, 1.0], [1.0, 1.0]] and top["probability"] is None
    with Image.open(folder / top["item"]) as img:
        accepted = get_task("points").correction(top["suggested"], {"classes": items.classes}, img.size)
    assert len(accepted.target["points"]) == 4


def test_a_masks_suspect_suggests_a_mask_the_task_accepts(tmp_path: Path) -> None:
    folder = write_silhouette_masks(tmp_path / "data", count=32, side=32, seed=3)
    items = from_mask_rule(folder, void="void", valid_pct=0.25, seed=1)
    spec = TrainSpec(data=str(folder), **(CHEAP | {"cleaner_epochs": 1}))
    rows = suspects(spec, LocalJobContext(tmp_path / "job", show_progress=False), items, 2, build_learner)
    assert len(rows) == len(items) and all(0.0 <= r["loss"] <= 1.0 for r in rows)
    top = rows[0]
    assert set(top["given"]["shares"]) <= set(items.codes) and set(top["suggested"]) == {"mask"}
    manifest = {"classes": items.classes, "codes": items.codes}
    with Image.open(folder / top["item"]) as img:
        # The suggestion is a relabel as JSON carries it (base64); the request's schema decodes it for the task.
        made = get_task("segmentation").correction(
            {"mask": base64.b64decode(top["suggested"]["mask"])}, manifest, img.size
        )
    assert made.mask_png is not None


def test_a_class_the_model_does_not_know_is_doubted_most() -> None:
    items = ClassItems(
        root=Path("."), keys=["a.png", "b.png"], is_valid=[False, True], classes=["cat", "owl"], labels=["cat", "owl"]
    )
    answer = ClassPrediction("cat", 0, [0.7, 0.3], ["cat", "dog"])
    task = task_of(items)
    known, unknown = task.doubt(answer, items, 0), task.doubt(answer, items, 1)
    assert known.suggested == {"label": "cat"} and known.given_probability == 0.7
    assert unknown.given_probability == 0.0 and unknown.loss > known.loss


def test_the_gate_also_needs_the_gold_set() -> None:
    policy = Policy(min_improvement=0.0, max_class_drop=0.1)

    def s(value: float) -> Scores:
        return Scores("accuracy", value, True, {}, 10)

    both = decide_with_gold(s(0.9), s(0.8), policy, s(0.7), s(0.6))
    assert both.promote and both.reason.startswith("validation: ") and "; gold: " in both.reason
    worse_on_gold = decide_with_gold(s(0.9), s(0.8), policy, s(0.5), s(0.6))
    assert not worse_on_gold.promote and "gold: challenger's accuracy 0.5000 is not >= 0.6000" in worse_on_gold.reason
    assert decide_with_gold(s(0.9), s(0.8), policy) == decide_with_gold(s(0.9), s(0.8), policy, s(0.1), None)
