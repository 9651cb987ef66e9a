"""lr_find sized to the data, against fastai's full 100-step sweep, side by side in one run.

On three small sets (digits, Fashion-MNIST, animal-mnist; a frozen ImageNet EfficientNet-Lite0, as a stage 1
sweeps it), each sweep runs with three data orders: the full sweep (100 steps, smoothing 0.98) and the sized one
(`sweep_steps` of a 4-epoch stage on this data, smoothing `sweep_beta`). It prints each valley suggestion, the
full sweeps' own spread (the noise: how far one full sweep's valley lies from another's with only the data order
changed), whether the sized sweeps' valleys fall inside that noise, and the seconds and steps each took.

    PYTHONPATH=. .venv/bin/python bench/lr_find_sized.py [--per-class 40] [--size 32] [--epochs 4]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

from core.datasets.samples import write_sample
from core.engine.lr_finder import FULL_SWEEP, sweep_steps
from core.jobs.context import LocalJobContext
from core.jobs.spec import TrainSpec
from core.jobs.training import build_learner

SETS = ("digits", "fashion-mnist", "animal-mnist")
SEEDS = (1, 2, 3)


def sweep(data: Path, size: int, seed: int, steps: int | None, epochs: int, out: Path) -> tuple[float, int, float]:
    """One sweep: (valley, steps run, seconds). steps None: sized to `epochs` of this data."""
    spec = TrainSpec(
        data=str(data),
        arch="efficientnet_lite0",
        pretrained="imagenet",
        size=size,
        bs=32,
        seed=42,
        data_seed=seed,
        kind="lr_find",
        epochs=epochs,
    )
    built = build_learner(spec, LocalJobContext(out, show_progress=False))
    learn = built.learn
    learn.freeze()
    num_it = steps if steps is not None else sweep_steps(epochs * learn.n_train_batches)
    t0 = time.perf_counter()
    result = learn.lr_find(num_it=num_it)
    return result.suggestions["valley"], len(result.lrs), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="the stage the sweep serves")
    args = parser.parse_args()
    inside = 0
    with tempfile.TemporaryDirectory(prefix="fitcycle-lrfind-") as tmp:
        for name in SETS:
            data = write_sample(name, Path(tmp) / name, per_class=args.per_class, size=args.size)
            full = [sweep(data, args.size, s, FULL_SWEEP, args.epochs, Path(tmp) / "out") for s in SEEDS]
            sized = [sweep(data, args.size, s, None, args.epochs, Path(tmp) / "out") for s in SEEDS]
            centre = statistics.median(math.log10(v) for v, _, _ in full)
            noise = max(abs(math.log10(v) - centre) for v, _, _ in full)
            band = max(noise, math.log10(2))  # never tighter than a factor of 2: a learning rate's own grain
            off = abs(statistics.median(math.log10(v) for v, _, _ in sized) - centre)
            ok = off <= band
            inside += ok
            cost = sum(t for _, _, t in sized) / sum(t for _, _, t in full)
            print(
                f"{name:14s} full valleys {', '.join(f'{v:.2e}' for v, _, _ in full)} "
                f"({full[0][1]} steps, {statistics.mean(t for _, _, t in full):.1f} s)"
            )
            print(
                f"{'':14s} sized valleys {', '.join(f'{v:.2e}' for v, _, _ in sized)} "
                f"({sized[0][1]} steps, {statistics.mean(t for _, _, t in sized):.1f} s); median off by "
                f"{off:.2f} decades, noise {noise:.2f} (band {band:.2f}): {'inside' if ok else 'OUTSIDE'}; "
                f"cost ratio sized/full {cost:.2f}"
            )
    print(f"sized sweeps inside the full sweeps' noise on {inside} of {len(SETS)} sets")


if __name__ == "__main__":
    main()
