"""Engine overhead: the same model, data, batch size and one-cycle schedule trained by fitcycle's Learner
and by a plain hand-written PyTorch loop (torch's OneCycleLR), interleaved in one run. Prints the
time ratio engine/plain (target <= 1.05), and the data pipeline's images/s against the model's, to show
which one limits.

The two run strictly interleaved, in ABBA order (rep 1: plain, engine; rep 2: engine, plain; ...), so drift in the
machine's load and warm-up hit both alike; the ratio printed is the median of each rep's own engine/plain ratio,
with its min-max (on this 2-core machine three reps swung 1.02-1.22: at least 7 are needed to resolve 5%).

    .venv/bin/python bench/engine_overhead.py [--arch resnet18] [--size 64] [--bs 64] [--reps 7] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.datasets.samples import write_sample
from core.engine.architectures import get_architecture
from core.engine.callbacks import ReportCallback
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.labelling import from_folder
from core.engine.learner import Learner
from core.engine.metrics import error_rate
from core.engine.model import create_cnn_model
from core.engine.transforms import get_transforms


class NullSink:
    """Receives reports and drops them (a worker would write rows)."""

    def on_batch(self, row: dict[str, Any]) -> None:
        pass

    def on_epoch(self, row: dict[str, Any]) -> None:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(dls: ImageDataLoaders, arch_name: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return create_cnn_model(get_architecture(arch_name), dls.c).to(dls.device)


def run_engine(dls: ImageDataLoaders, arch_name: str, epochs: int, lr: float) -> float:
    """fit_one_cycle with the callbacks a worker runs (recorder, scheduler, reporting)."""
    model = build(dls, arch_name, 0)
    learn = Learner(
        dls, model, metrics=[error_rate], arch=get_architecture(arch_name), cbs=[ReportCallback(NullSink())]
    )
    learn.unfreeze()
    sync(dls.device)
    t0 = time.perf_counter()
    learn.fit_one_cycle(epochs, lr)
    sync(dls.device)
    return time.perf_counter() - t0


def run_plain(dls: ImageDataLoaders, arch_name: str, epochs: int, lr: float) -> float:
    """The loop a person writes by hand: AdamW + OneCycleLR with fastai's numbers, then a valid pass."""
    model = build(dls, arch_name, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.95, 0.99), eps=1e-5, weight_decay=0.01)
    steps = epochs * len(dls.train)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=lr,
        total_steps=steps,
        pct_start=0.25,
        div_factor=25,
        final_div_factor=1e5 / 25,
        base_momentum=0.85,
        max_momentum=0.95,
    )
    loss_func = nn.CrossEntropyLoss()
    sync(dls.device)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        dls.train.set_epoch(epoch)
        for xb, yb in dls.train:
            loss = loss_func(model(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss.item()
        model.eval()
        dls.valid.set_epoch(epoch)
        preds, targs = [], []
        with torch.no_grad():
            for xb, yb in dls.valid:
                preds.append(model(xb))
                targs.append(yb)
        error_rate(torch.cat(preds), torch.cat(targs))
    sync(dls.device)
    return time.perf_counter() - t0


def data_images_per_second(dls: ImageDataLoaders) -> float:
    """Decode, resize, collate, move and augment one epoch, with no model."""
    dls.train.set_epoch(0)
    sync(dls.device)
    t0, n = time.perf_counter(), 0
    for xb, _ in dls.train:
        n += len(xb)
    sync(dls.device)
    return n / (time.perf_counter() - t0)


def model_images_per_second(dls: ImageDataLoaders, arch_name: str, steps: int = 10) -> float:
    """Forward, backward and step on one batch already on the device."""
    model = build(dls, arch_name, 0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xb, yb = dls.one_batch()
    for i in range(steps + 2):
        if i == 2:
            sync(dls.device)
            t0 = time.perf_counter()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(dls.device)
    return steps * len(xb) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--per-class", type=int, default=80)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions (ABBA)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="a smoke run: 10 images per class at 32 px, 2 reps")
    args = p.parse_args()
    if args.quick:
        args.per_class, args.size, args.reps = 10, 32, 2

    with tempfile.TemporaryDirectory() as tmp:
        root = write_sample("fashion-mnist", Path(tmp) / "data", per_class=args.per_class, size=args.size)
        items = from_folder(root, valid_pct=0.2, seed=0)
        dls = ImageDataLoaders(
            items,
            DataConfig(size=args.size, bs=args.bs, augment=get_transforms(), num_workers=args.workers),
            device=args.device,
        )
        print(
            f"{args.arch} at {args.size}px, bs {args.bs}, {len(dls.train.dataset)} train / "
            f"{len(dls.valid.dataset)} valid images, {args.epochs} epoch(s) per run, device {args.device}"
        )
        run_plain(dls, args.arch, 1, 1e-3)  # warm-up: allocator, kernels, file cache

        engine, plain = [], []
        for rep in range(args.reps):  # ABBA, so drift in machine load hits both alike
            for side in ("plain", "engine") if rep % 2 == 0 else ("engine", "plain"):
                if side == "plain":
                    plain.append(run_plain(dls, args.arch, args.epochs, 1e-3))
                else:
                    engine.append(run_engine(dls, args.arch, args.epochs, 1e-3))
            print(
                f"  rep {rep + 1}: plain {plain[-1]:.2f}s  engine {engine[-1]:.2f}s  ratio {engine[-1] / plain[-1]:.3f}"
            )
        ratios = [e / pl for e, pl in zip(engine, plain, strict=True)]
        print(
            f"engine/plain time ratio: {statistics.median(ratios):.3f} (min-max {min(ratios):.3f}-{max(ratios):.3f}, "
            f"median of {len(ratios)} per-rep ratios; median engine {statistics.median(engine):.2f}s, "
            f"plain {statistics.median(plain):.2f}s; target <= 1.05)"
        )

        data_ips = data_images_per_second(dls)
        model_ips = model_images_per_second(dls, args.arch)
        limit = "the data pipeline" if data_ips < model_ips else "the model"
        print(
            f"data pipeline: {data_ips:.0f} images/s   model (fwd+bwd+step): {model_ips:.0f} images/s   "
            f"-> {limit} limits (data/model = {data_ips / model_ips:.2f})"
        )


if __name__ == "__main__":
    main()
