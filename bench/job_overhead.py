"""Job overhead: a whole training job (`core.jobs.runner.run_spec`: build, the epochs, interpretation, plots,
export, metrics.json) against a hand-written plain PyTorch loop that trains the same model on the same images
for the same epochs (same batch size, AdamW, one-cycle schedule, PIL decode and centre-crop resize, a
validation pass and error rate each epoch, the weights saved at the end), interleaved in one run. Prints each
wall time, the ratio job/plain (target <= 1.05) and the job's own `timings` breakdown from metrics.json.

Both train from scratch (pretrained none) without augmentation, so they do the same work: the job's extra
time is its fixed cost (data statistics, checkpoints, show_batch, interpretation, plots, export).

The two run strictly interleaved, in ABBA order (rep 1: plain, job; rep 2: job, plain; ...), so drift in the
machine's load hits both alike; the ratio printed is the median of each rep's own job/plain ratio, with its
min-max (on this 2-core machine three reps swung 1.02-1.22: at least 7 are needed to resolve 5%).

    .venv/bin/python bench/job_overhead.py [--arch resnet18] [--size 64] [--bs 64] [--per-class 60]
                                           [--epochs 4] [--reps 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.datasets.samples import write_sample
from core.engine.architectures import get_architecture
from core.engine.images import open_rgb
from core.engine.metrics import error_rate
from core.engine.model import create_cnn_model
from core.engine.transforms import image_to_uint8_tensor, resize_image
from core.jobs.runner import run_spec
from core.jobs.spec import TrainSpec


class MemoryJobContext:
    """A JobContext that keeps reports and the latest checkpoint in memory and writes artifacts under a
    folder (export needs files); nothing is uploaded (a worker's context would)."""

    show_progress = False

    def __init__(self, out: Path) -> None:
        self.out = out
        self.checkpoint: dict[str, Any] | None = None
        self.written: list[str] = []

    def on_batch(self, row: dict[str, Any]) -> None:
        pass

    def on_epoch(self, row: dict[str, Any]) -> None:
        pass

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.checkpoint = state

    def latest_checkpoint(self) -> dict[str, Any] | None:
        return None  # every run starts fresh

    def artifact_path(self, name: str) -> Path:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def artifact_written(self, name: str) -> None:
        self.written.append(name)

    def should_stop(self) -> bool:
        return False


def run_fitcycle_job(root: Path, out: Path, args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    """The whole job as a worker runs it; its wall time and metrics.json."""
    spec = TrainSpec(
        data=str(root),
        arch=args.arch,
        pretrained="none",
        size=args.size,
        bs=args.bs,
        freeze_epochs=1,
        epochs=args.epochs - 1,  # from scratch: one phase of freeze_epochs + epochs epochs
        lr=args.lr,
        augment=False,
        num_workers=0,
        device="cpu",
        precision="fp32",  # as the plain loop: this bench measures the job's fixed cost, not bf16's gain
    )
    t0 = time.perf_counter()
    metrics = run_spec(spec, MemoryJobContext(out))
    return time.perf_counter() - t0, metrics


class PlainImages(Dataset[tuple[torch.Tensor, int]]):
    """(uint8 CHW image, class index) from image files: PIL decode, centre-crop resize."""

    def __init__(self, files: list[tuple[Path, int]], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[i]
        return image_to_uint8_tensor(resize_image(open_rgb(path), self.size, "crop", None)), label


def run_plain(root: Path, out: Path, args: argparse.Namespace, epochs: int) -> float:
    """The script a person writes by hand: list the files, split, AdamW + OneCycleLR with fastai's numbers,
    a validation pass and error rate each epoch, then save the weights."""
    t0 = time.perf_counter()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())]
    valid = [f for i, f in enumerate(files) if i % 5 == 0]
    train = [f for i, f in enumerate(files) if i % 5 != 0]
    train_dl = DataLoader(PlainImages(train, args.size), batch_size=args.bs, shuffle=True, drop_last=True)
    valid_dl = DataLoader(PlainImages(valid, args.size), batch_size=args.bs * 2)
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
    std = torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1)

    torch.manual_seed(0)
    model = create_cnn_model(get_architecture(args.arch), len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.95, 0.99), eps=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=args.lr,
        total_steps=epochs * len(train_dl),
        pct_start=0.25,
        div_factor=25,
        final_div_factor=1e5 / 25,
        base_momentum=0.85,
        max_momentum=0.95,
    )
    loss_func = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for xb, yb in train_dl:
            loss = loss_func(model((xb.float() / 255 - mean) / std), yb)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss.item()
        model.eval()
        preds, targs = [], []
        with torch.no_grad():
            for xb, yb in valid_dl:
                preds.append(model((xb.float() / 255 - mean) / std))
                targs.append(yb)
        error_rate(torch.cat(preds), torch.cat(targs))
    torch.save(model.state_dict(), out / "weights.pt")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--per-class", type=int, default=60, help="Fashion-MNIST images per class (10 classes)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each run (at least 2)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--reps", type=int, default=7, help="interleaved repetitions (ABBA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 images per class, 2 reps")
    args = p.parse_args()
    if args.quick:
        args.per_class, args.reps = 20, 2
    args.epochs = max(2, args.epochs)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = write_sample("fashion-mnist", Path(tmp) / "data", per_class=args.per_class, size=args.size)
        n = sum(1 for f in root.rglob("*.png"))
        print(
            f"{args.arch} at {args.size}px from scratch, bs {args.bs}, {n} images (80/20 split), "
            f"{args.epochs} epochs per run, CPU, {torch.get_num_threads()} threads"
        )
        run_plain(root, Path(tmp), args, 1)  # warm-up: allocator, kernels, file cache

        jobs, plains, timings = [], [], []
        for rep in range(args.reps):  # ABBA, so drift in machine load hits both alike
            for side in ("plain", "job") if rep % 2 == 0 else ("job", "plain"):
                if side == "plain":
                    plains.append(run_plain(root, Path(tmp), args, args.epochs))
                else:
                    seconds, metrics = run_fitcycle_job(root, Path(tmp) / f"job{rep}", args)
                    jobs.append(seconds)
                    timings.append(metrics.get("timings", {}))
            print(f"  rep {rep + 1}: plain {plains[-1]:.2f}s  job {jobs[-1]:.2f}s  ratio {jobs[-1] / plains[-1]:.3f}")
        ratios = [j / pl for j, pl in zip(jobs, plains, strict=True)]
        print(
            f"job/plain time ratio: {statistics.median(ratios):.3f} (min-max {min(ratios):.3f}-{max(ratios):.3f}, "
            f"median of {len(ratios)} per-rep ratios; median job {statistics.median(jobs):.2f}s, "
            f"plain {statistics.median(plains):.2f}s; target <= 1.05)"
        )

        if timings[-1]:
            print("the job's timings (seconds, median over reps):")
            for name in timings[-1]:
                print(f"  {name:>16}: {statistics.median(t.get(name, 0.0) for t in timings):7.3f}")
            phases = {k: v for k, v in timings[-1].items() if k != "total" and not k.startswith("fit")}
            fits = sum(v for k, v in timings[-1].items() if k.startswith("fit"))
            outside = timings[-1]["total"] - fits
            print(
                f"  outside the epochs: {outside:.2f}s of {timings[-1]['total']:.2f}s "
                f"({outside / timings[-1]['total']:.1%}) in the last rep: {json.dumps(phases)}"
            )
        else:
            print("(this job's metrics.json has no timings)")


if __name__ == "__main__":
    main()
