"""Does a retrain with the default settings beat its champion? The course's scenario for new labelled data.

For each seed: a 10-class Fashion-MNIST set whose training labels are 25% flipped; the champion is fine-tuned on
it with the platform's defaults (an ImageNet-pretrained EfficientNet-Lite0). Then, as the feedback loop does it,
a new version: the flipped labels corrected (the cleaner's suspects, relabelled) and new labelled items added
(corrected predictions); the split stays pinned. Two retrains start from the champion's full weights, side by
side: the default, by the course's rule (core.jobs.rates.retrain_defaults: unfrozen, the champion's last-stage
rates x1.5, its epochs + 2), and the old default (1 frozen + 2 unfrozen epochs at 1e-3) as the baseline. Each
model is scored on held-out images with clean labels the champion never saw, and the gate decides on the new
version's validation items as the worker's evaluate step does.

    PYTHONPATH=. .venv/bin/python bench/retrain_wins.py [--seeds 5] [--per-class 60] [--size 32]

Prints one row per seed and a summary: in how many seeds each retrain beat the champion on the held-out images,
and its worst loss. The issue's bar: the default wins in >= 4 of 5 seeds and never loses more than 0.01.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.datasets.samples import write_sample
from core.engine.items import ClassItems
from core.engine.splits import split_by_rand_pct_per_class
from core.jobs.context import LocalJobContext
from core.jobs.gate import Policy, decide, score_bundle
from core.jobs.rates import retrain_defaults
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec

OLD_DEFAULTS: dict[str, Any] = {"freeze_epochs": 1, "epochs": 2, "lr": 1e-3}


@dataclass(frozen=True)
class Scenario:
    """How big the scenario is: items per class in the first version, new labelled items per class the second
    adds, held-out items per class, the share of training labels flipped, the image size and the recipe."""

    per_class: int = 60
    new_per_class: int = 10
    heldout_per_class: int = 50
    flipped: float = 0.25
    size: int = 32
    arch: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    bs: int = 32
    champion: tuple[int, int, float] = (1, 4, 2e-3)  # the platform's fine_tune defaults: freeze_epochs, epochs, lr
    baseline: bool = True  # also retrain with the old default, side by side


@dataclass(frozen=True)
class Outcome:
    seed: int
    champion: float  # held-out accuracy
    retrain: float
    old_retrain: float | None  # None: the baseline was not run
    gate: str  # the gate's decision on the default retrain (validation items of the new version)
    seconds: float


def _items(root: Path, keys: list[str], labels: list[str], valid: list[bool], classes: list[str]) -> ClassItems:
    return ClassItems(root=root, keys=keys, is_valid=valid, classes=classes, labels=labels)


def run_seed(seed: int, scenario: Scenario, work: Path) -> Outcome:
    """One seed of the scenario, end to end."""
    t0 = time.perf_counter()
    s = scenario
    root = work / f"seed{seed}"
    offset = (seed * 7) % 50  # each seed its own images
    write_sample("fashion-mnist", root / "pool", per_class=s.per_class, size=s.size, offset=offset)
    write_sample("fashion-mnist", root / "new", per_class=s.new_per_class, size=s.size, offset=offset + s.per_class)
    write_sample(
        "fashion-mnist",
        root / "heldout",
        per_class=s.heldout_per_class,
        size=s.size,
        offset=offset + s.per_class + s.new_per_class,
    )

    def listed(folder: str) -> tuple[list[str], list[str]]:
        paths = sorted((root / folder).glob("*/*.png"))
        return [p.relative_to(root).as_posix() for p in paths], [p.parent.name for p in paths]

    keys, truth = listed("pool")
    classes = sorted(set(truth))
    valid = split_by_rand_pct_per_class(keys, truth, 0.2, seed)
    rng = random.Random(seed)
    noisy = list(truth)
    train = [i for i, v in enumerate(valid) if not v]
    for i in rng.sample(train, int(len(train) * s.flipped)):
        noisy[i] = rng.choice([c for c in classes if c != truth[i]])
    v1 = _items(root, keys, noisy, valid, classes)
    new_keys, new_truth = listed("new")
    new_valid = split_by_rand_pct_per_class(new_keys, new_truth, 0.2, seed)
    v2 = _items(root, keys + new_keys, truth + new_truth, valid + new_valid, classes)  # corrected, and the new items
    held_keys, held_truth = listed("heldout")
    heldout = _items(root, held_keys, held_truth, [True] * len(held_keys), classes)

    base = {"data": str(root), "arch": s.arch, "pretrained": s.pretrained, "size": s.size, "bs": s.bs, "seed": seed}
    freeze, epochs, lr = s.champion
    champion_out = work / f"champion{seed}"
    made = run_spec(
        TrainSpec(kind="fine_tune", freeze_epochs=freeze, epochs=epochs, lr=lr, **base),
        LocalJobContext(champion_out, show_progress=False),
        v1,
    )
    defaults, _ = retrain_defaults(made["lrs"].get("last"))

    def retrain(fields: dict[str, Any], out: Path) -> Path:
        lr = fields["lr"]
        spec = TrainSpec(
            kind="retrain",
            init_bundle=str(champion_out / "export"),
            **{**fields, "lr": tuple(lr) if isinstance(lr, list) else lr},
            **base,
        )
        run_spec(spec, LocalJobContext(out, show_progress=False), v2)
        return out / "export"

    challenger = retrain(defaults, work / f"retrain{seed}")
    old = retrain(OLD_DEFAULTS, work / f"old{seed}") if s.baseline else None
    verdict = decide(score_bundle(challenger, v2), score_bundle(champion_out / "export", v2), Policy())
    return Outcome(
        seed,
        score_bundle(champion_out / "export", heldout, "all").value,
        score_bundle(challenger, heldout, "all").value,
        score_bundle(old, heldout, "all").value if old is not None else None,
        "promoted" if verdict.promote else "rejected",
        time.perf_counter() - t0,
    )


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """Wins and the worst loss of each retrain against the champion, on the held-out images."""
    out: dict[str, Any] = {}
    for side in ("retrain", "old_retrain"):
        gains = [getattr(o, side) - o.champion for o in outcomes if getattr(o, side) is not None]
        if not gains:
            continue
        out[side] = {"wins": sum(g > 0 for g in gains), "worst": min(gains), "mean_gain": sum(gains) / len(gains)}
    out["promoted"] = sum(o.gate == "promoted" for o in outcomes)
    return out


HEADER = f"{'seed':>4}  {'champion':>8}  {'retrain':>8}  {'gain':>7}  {'old default':>11}  {'gain':>7}  gate      s"


def row(o: Outcome) -> str:
    old = f"{o.old_retrain:>11.3f}  {o.old_retrain - o.champion:>+7.3f}" if o.old_retrain is not None else f"{'-':>20}"
    return (
        f"{o.seed:>4}  {o.champion:>8.3f}  {o.retrain:>8.3f}  {o.retrain - o.champion:>+7.3f}  "
        f"{old}  {o.gate:<8}  {o.seconds:.0f}"
    )


def summary_lines(outcomes: list[Outcome]) -> list[str]:
    got = summary(outcomes)
    n = len(outcomes)
    lines = []
    for side, name in (("retrain", "default retrain (course's rule)"), ("old_retrain", "old default (1+2 at 1e-3)")):
        if side not in got:
            continue
        g = got[side]
        lines.append(
            f"{name}: beat the champion in {g['wins']} of {n} seeds, worst {g['worst']:+.3f}, "
            f"mean gain {g['mean_gain']:+.3f} (held-out accuracy)"
        )
    lines.append(f"the gate promoted the default retrain in {got['promoted']} of {n} seeds")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--per-class", type=int, default=Scenario.per_class)
    parser.add_argument("--size", type=int, default=Scenario.size)
    parser.add_argument("--arch", default=Scenario.arch)
    parser.add_argument("--pretrained", default=Scenario.pretrained)
    args = parser.parse_args()
    scenario = Scenario(per_class=args.per_class, size=args.size, arch=args.arch, pretrained=args.pretrained)
    print(scenario)
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="fitcycle-retrain-") as tmp:
        outcomes = []
        for seed in range(1, args.seeds + 1):
            outcomes.append(run_seed(seed, scenario, Path(tmp)))
            print(row(outcomes[-1]), flush=True)
    print("\n".join(summary_lines(outcomes)))


if __name__ == "__main__":
    main()
