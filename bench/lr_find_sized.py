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
from dataclasses import dataclass
from pathlib import Path

from core.datasets.samples import write_sample
from core.engine.lr_finder import FULL_SWEEP, sweep_steps
from core.jobs.context import LocalJobContext
from core.jobs.spec import TrainSpec
from core.jobs.training import build_learner

SETS = ("digits", "fashion-mnist", "animal-mnist")
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class Comparison:
    """The full and the sized sweeps' valleys on one set, and what they say."""

    name: str
    full: list[tuple[float, int, float]]  # (valley, steps, seconds) per data order
    sized: list[tuple[float, int, float]]

    @property
    def centre(self) -> float:
        return statistics.median(math.log10(v) for v, _, _ in self.full)

    @property
    def noise(self) -> float:
        """How far (in decades) a full sweep's valley lies from the full sweeps' median, at most."""
        return max(abs(math.log10(v) - self.centre) for v, _, _ in self.full)

    @property
    def band(self) -> float:
        return max(self.noise, math.log10(2))  # never tighter than a factor of 2: a learning rate's own grain

    @property
    def off(self) -> float:
        """How far (in decades) the sized sweeps' median valley lies from the full sweeps' median."""
        return abs(statistics.median(math.log10(v) for v, _, _ in self.sized) - self.centre)

    @property
    def inside(self) -> bool:
        return self.off <= self.band

    @property
    def cost(self) -> float:
        """The sized sweeps' seconds over the full sweeps'."""
        return sum(t for _, _, t in self.sized) / sum(t for _, _, t in self.full)

    def lines(self) -> list[str]:
        return [
            f"{self.name:14s} full valleys {', '.join(f'{v:.2e}' for v, _, _ in self.full)} "
            f"({self.full[0][1]} steps, {statistics.mean(t for _, _, t in self.full):.1f} s)",
            f"{'':14s} sized valleys {', '.join(f'{v:.2e}' for v, _, _ in self.sized)} "
            f"({self.sized[0][1]} steps, {statistics.mean(t for _, _, t in self.sized):.1f} s); median off by "
            f"{self.off:.2f} decades, noise {self.noise:.2f} (band {self.band:.2f}): "
            f"{'inside' if self.inside else 'OUTSIDE'}; cost ratio sized/full {self.cost:.2f}",
        ]


def sweep(
    data: Path, size: int, seed: int, steps: int | None, epochs: int, out: Path, arch: str, pretrained: str, bs: int
) -> tuple[float, int, float]:
    """One sweep: (valley, steps run, seconds). steps None: sized to `epochs` of this data."""
    spec = TrainSpec(
        data=str(data),
        arch=arch,
        pretrained=pretrained,
        size=size,
        bs=32,
        seed=42,
        data_seed=seed,
        kind="lr_find",
        epochs=epochs,
    )
    built = build_learner(spec, LocalJobContext(out, show_progress=False))
    learn = built.learn
    if spec.is_pretrained:
        learn.freeze()
    num_it = steps if steps is not None else sweep_steps(epochs * learn.n_train_batches)
    t0 = time.perf_counter()
    result = learn.lr_find(num_it=num_it)
    return result.suggestions["valley"], len(result.lrs), time.perf_counter() - t0


def compare(
    name: str,
    work: Path,
    per_class: int = 40,
    size: int = 32,
    epochs: int = 4,
    arch: str = "efficientnet_lite0",
    pretrained: str = "imagenet",
    seeds: tuple[int, ...] = SEEDS,
    bs: int = 32,
) -> Comparison:
    """Full and sized sweeps on one sample set, one per data order each."""
    data = write_sample(name, work / name, per_class=per_class, size=size)
    args = (size, epochs, work / "out", arch, pretrained, bs)
    full = [sweep(data, args[0], s, FULL_SWEEP, *args[1:]) for s in seeds]
    sized = [sweep(data, args[0], s, None, *args[1:]) for s in seeds]
    return Comparison(name, full, sized)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="the stage the sweep serves")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--pretrained", default="imagenet")
    args = parser.parse_args()
    found = []
    with tempfile.TemporaryDirectory(prefix="fitcycle-lrfind-") as tmp:
        for name in SETS:
            found.append(compare(name, Path(tmp), args.per_class, args.size, args.epochs, args.arch, args.pretrained))
            print("\n".join(found[-1].lines()), flush=True)
    print(f"sized sweeps inside the full sweeps' noise on {sum(c.inside for c in found)} of {len(found)} sets")


if __name__ == "__main__":
    main()
