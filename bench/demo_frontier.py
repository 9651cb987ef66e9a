"""The demo's recipe against the others that were tried: validation accuracy against job time, side by side.

`make run` queues one job on a Fashion-MNIST sample (cli/serve.py: DEMO_SAMPLE, DEMO_JOB). This runs that job's
recipe and the alternatives through the same engine (core.jobs.runner.run_spec, the worker's path without the
server), one after another on this machine, and prints each recipe's accuracy on its validation images and its
job time (metrics.json's timings.total: everything the worker does, lr_find and export included).

    PYTHONPATH=. .venv/bin/python bench/demo_frontier.py [--only demo] [--recipes N]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from cli.serve import DEMO_JOB, DEMO_SAMPLE
from core.datasets.samples import write_sample
from core.jobs.context import LocalJobContext
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec

LITE0 = {"arch": "efficientnet_lite0", "pretrained": "imagenet", "bs": 32, "kind": "fine_tune"}
# (name, images per class, image size on disk, job fields): the demo first, then what it was chosen against.
RECIPES: list[tuple[str, int, int, dict[str, Any]]] = [
    ("demo", DEMO_SAMPLE["per_class"], DEMO_SAMPLE["size"], DEMO_JOB),
    (
        "old demo: Lite0 64px, 1000 images, 1+2, lr find",
        100,
        64,
        LITE0 | {"size": 64, "freeze_epochs": 1, "epochs": 2, "lr": "find"},
    ),
    (
        "Lite0 64px, 2000 images, 1+4, lr 1e-2, no augment",
        200,
        64,
        LITE0 | {"size": 64, "freeze_epochs": 1, "epochs": 4, "lr": 1e-2, "augment": False},
    ),
    (
        "Lite0 48px, 3000 images, 1+3, lr 1e-2, no augment",
        300,
        48,
        LITE0 | {"size": 48, "freeze_epochs": 1, "epochs": 3, "lr": 1e-2, "augment": False},
    ),
]


def run_recipe(per_class: int, size: int, job: dict[str, Any], work: Path) -> tuple[float, float, int]:
    """(validation accuracy, job seconds, validation images) of one recipe."""
    data = work / f"fashion-{per_class}-{size}"
    if not data.exists():
        write_sample("fashion-mnist", data, per_class=per_class, size=size)
    fields = {k: v for k, v in job.items() if k in TrainSpec.model_fields}
    result = run_spec(TrainSpec(data=str(data), **fields), LocalJobContext(work / "out", show_progress=False))
    n_valid = sum(c["valid"] for c in result["counts"].values())
    return float(result["accuracy"]), float(result["timings"]["total"]), n_valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run only the recipe of this name (e.g. demo)")
    parser.add_argument("--recipes", type=int, default=len(RECIPES), help="run the first N recipes")
    args = parser.parse_args()
    chosen = [r for r in RECIPES[: args.recipes] if args.only is None or r[0] == args.only]
    print(f"{'recipe':<55} {'accuracy':>8} {'job s':>6} {'valid':>5}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fitcycle-demo-") as tmp:
        for name, per_class, size, job in chosen:
            accuracy, seconds, n_valid = run_recipe(per_class, size, job, Path(tmp))
            print(f"{name:<55} {accuracy:>8.3f} {seconds:>6.0f} {n_valid:>5}", flush=True)


if __name__ == "__main__":
    main()
