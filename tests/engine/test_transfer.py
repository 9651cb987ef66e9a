"""Transfer learning works: a pretrained body beats the same budget from random init, on real images.
The numbers these tests reach are recorded in the closing note of the engine issue."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.datasets.samples import write_sample
from core.jobs.context import LocalJobContext
from core.jobs.runner import run_train
from core.jobs.spec import TrainSpec


def train(out: Path, **fields: object) -> float:
    metrics = run_train(TrainSpec(**fields), LocalJobContext(out, show_progress=False))
    print(f"{out.name}: error_rate {metrics['error_rate']:.3f}")
    return float(metrics["error_rate"])


@pytest.mark.slow
def test_a_body_trained_on_one_dataset_fine_tunes_better_on_another(tmp_path: Path) -> None:
    # Source: 3,000 Animal-MNIST silhouettes, trained from scratch.
    source = write_sample("animal-mnist", tmp_path / "animals", per_class=300, size=32)
    # fp32: bf16's kernels follow the CPU (AVX512-BF16, AMX), and at this size the margin was the machine's luck
    # (bf16: 0.345 vs 0.414 on one machine, 0.448 vs 0.448 on another; fp32: 0.414 vs 0.534, 0.379 vs 0.500).
    common = {"arch": "resnet18", "size": 32, "seed": 1, "precision": "fp32"}
    train(tmp_path / "source", data=str(source), pretrained="none", bs=32, freeze_epochs=0, epochs=3, lr=5e-3, **common)
    # Target: 300 Fashion-MNIST images. The same 3 epochs, from that body or from random init.
    target = write_sample("fashion-mnist", tmp_path / "fashion", per_class=30, size=32)
    transferred = train(
        tmp_path / "transfer",
        data=str(target),
        pretrained=str(tmp_path / "source" / "export"),
        bs=16,
        freeze_epochs=1,
        epochs=2,
        lr=5e-3,
        **common,
    )
    scratch = train(
        tmp_path / "scratch", data=str(target), pretrained="none", bs=16, freeze_epochs=0, epochs=3, lr=5e-3, **common
    )
    assert transferred < 0.6  # 10 classes: chance is 0.9
    assert transferred < scratch - 0.05


@pytest.mark.slow
def test_efficientnet_lite0_imagenet_body_beats_random_init_after_one_frozen_epoch(tmp_path: Path) -> None:
    data = write_sample("fashion-mnist", tmp_path / "fashion", per_class=100, size=64)
    common = {
        "data": str(data),
        "arch": "efficientnet_lite0",
        "size": 64,
        "bs": 16,
        "freeze_epochs": 1,
        "epochs": 0,
        # Stage 1's default rate. At 1e-2 the gap was 0.26 on one machine and 0.12 on another (2026-11-29: 0.544
        # vs 0.661): too hot a rate for 50 steps makes the head's result the machine's luck. At 3e-3 here: 0.491
        # vs 0.871 (seed 1), 0.547 vs 0.766 (seed 2).
        "lr": 3e-3,
        "seed": 1,
        "precision": "fp32",  # bf16 gave 0.561 vs 0.842 on one machine, 0.585 vs 0.766 on another; fp32 0.480 vs 0.80
    }
    imagenet = train(tmp_path / "imagenet", pretrained="imagenet", **common)
    scratch = train(tmp_path / "scratch", pretrained="none", **common)
    assert imagenet < 0.65
    assert imagenet < scratch - 0.2
