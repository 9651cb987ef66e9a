"""Training throughput on the hardware the workers are for: ResNet-50 at 224 px, bf16 autocast, channels_last,
batch 256 by default, in images/s:

  (a) a hand-written minimal loop on synthetic tensors already on the device (the ceiling),
  (b) the engine (Learner + its callbacks: recorder, one-cycle schedule, mixed precision, channels_last) on the
      same synthetic tensors: the engine's own overhead, as the ratio (b)/(a) (target >= 0.95),
  (c) the engine on a real JPEG dataset through the whole input pipeline (DataLoader workers decode and
      resize, pinned non-blocking copies, augmentation on the device).

Also MFU: achieved FLOP/s (about 24.6 GFLOP per 224 px image, forward and backward, scaled by (size/224)^2)
over the device's dense bf16 peak, where the device is known. Anchors: NVIDIA's MLPerf ResNet-50 training is
about 7,000 img/s on one H100 (hand-tuned DALI + MXNet); a plain PyTorch AMP loop on an A100 about 2,500.
Targets on one H100/H200: (b) >= 3,500 and (c) >= 2,500 img/s.

It runs on CPU too, small, printing the same lines (CI exercises it that way):

    .venv/bin/python bench/gpu_throughput.py                      # GPU: resnet50, 224 px, batch 256
    .venv/bin/python bench/gpu_throughput.py --cpu-smoke          # CPU: resnet18, 64 px, batch 16, a few steps
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from core.datasets.samples import write_sample
from core.engine.architectures import get_architecture
from core.engine.callbacks import ChannelsLast, MixedPrecision, ReportCallback
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.events import Callback
from core.engine.labelling import from_folder
from core.engine.learner import Learner
from core.engine.model import create_cnn_model
from core.engine.transforms import get_transforms

GFLOP_PER_IMAGE_224 = 24.6  # ResNet-50, forward + backward
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


class NullSink:
    def on_batch(self, row: dict[str, object]) -> None:
        pass

    def on_epoch(self, row: dict[str, object]) -> None:
        pass


class SyntheticLoader:
    """Stands in for a DeviceLoader: the same batch, already on the device, n times an epoch."""

    def __init__(self, xb: torch.Tensor, yb: torch.Tensor, n: int) -> None:
        self.xb, self.yb, self.n = xb, yb, n
        self.start_batch, self.bs = 0, len(xb)

    def set_epoch(self, epoch: int, start_batch: int = 0, stream: int | None = None) -> None:
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.n - self.start_batch):
            yield self.xb, self.yb


class TrainTimer(Callback):
    """Images/s of the training batches after `warmup` of them (compilation, cudnn autotuning, allocator)."""

    order = 100

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.t0, self.images, self.rate = 0.0, 0, 0.0

    def before_batch(self) -> None:
        if self.learn.training and self.learn.iter == self.warmup:
            sync(self.device)
            self.t0, self.images = time.perf_counter(), 0

    def after_batch(self) -> None:
        if self.learn.training and self.learn.iter >= self.warmup:
            self.images += len(self.learn.xb)

    def after_train(self) -> None:
        sync(self.device)
        self.rate = self.images / (time.perf_counter() - self.t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_for(arch: str, n_out: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = create_cnn_model(get_architecture(arch), n_out).to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def minimal(arch: str, xb: torch.Tensor, yb: torch.Tensor, steps: int, warmup: int, precision: str) -> float:
    """(a): forward, loss, backward, AdamW step on one batch on the device; nothing else."""
    device = xb.device
    model = model_for(arch, int(yb.max()) + 1, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = xb.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else xb
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
            loss = nn.functional.cross_entropy(model(x), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return steps * len(xb) / (time.perf_counter() - t0)


def engine(arch: str, dls: ImageDataLoaders, warmup: int, precision: str) -> float:
    """(b) and (c): one epoch of fit_one_cycle with the callbacks a worker runs."""
    timer = TrainTimer(warmup, dls.device)
    cbs: list[Callback] = [ReportCallback(NullSink()), timer]
    if precision == "bf16":
        cbs.append(MixedPrecision("bf16"))
    if dls.device.type == "cuda":
        cbs.append(ChannelsLast())
    learn = Learner(dls, model_for(arch, dls.n_out, dls.device), arch=get_architecture(arch), cbs=cbs)
    learn.unfreeze()
    learn.fit_one_cycle(1, 1e-3)
    return timer.rate


def jpeg_dataset(folder: Path, n: int, size: int) -> Path:
    """n real images (Fashion-MNIST, 10 classes) as JPEG files at `size` px."""
    per_class = max(1, n // 10)
    png = write_sample("fashion-mnist", folder / "png", per_class=per_class, size=size)
    for src in png.rglob("*.png"):
        dest = folder / "jpeg" / src.relative_to(png).with_suffix(".jpg")
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.open(src).convert("RGB").save(dest, quality=90)
    return folder / "jpeg"


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--steps", type=int, default=30, help="timed steps of (a) and (b), after the warm-up")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=10240, help="JPEG images for (c)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers for (c) (default: the engine's)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--cpu-smoke", action="store_true", help="resnet18, 64 px, batch 16, 3 steps: exercise it on CPU")
    args = p.parse_args()
    if args.cpu_smoke:
        args.arch, args.size, args.bs, args.steps, args.warmup, args.images = "resnet18", 64, 16, 3, 1, 80
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; {args.arch} at "
        f"{args.size} px, batch {args.bs}, {args.precision}, channels_last {device.type == 'cuda'}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        data = jpeg_dataset(Path(tmp), args.images, args.size)
        items = from_folder(data, valid_pct=0.02, seed=0)
        config = DataConfig(size=args.size, bs=args.bs, augment=get_transforms(), num_workers=args.workers, seed=0)
        real = ImageDataLoaders(items, config, device=device)
        xb, yb = real.one_batch()
        synthetic = ImageDataLoaders(items, config, stats=real.stats, device=device)
        synthetic.train = synthetic.valid = SyntheticLoader(xb, yb, args.warmup + args.steps)  # type: ignore[assignment]
        a = minimal(args.arch, xb, yb, args.steps, args.warmup, args.precision)
        b = engine(args.arch, synthetic, args.warmup, args.precision)
        c = engine(args.arch, real, args.warmup, args.precision)

    flop = GFLOP_PER_IMAGE_224 * 1e9 * (args.size / 224) ** 2 * (1 if args.arch == "resnet50" else float("nan"))
    peak = peak_tflops(device)
    for label, rate in [("(a) minimal loop, synthetic", a), ("(b) engine, synthetic", b), ("(c) engine, JPEG", c)]:
        mfu = f"{rate * flop / (peak * 1e12):.1%}" if peak and flop == flop else "n/a"
        print(f"{label:<30} {rate:10.1f} images/s   MFU {mfu}")
    print(f"engine/minimal ratio (b/a): {b / a:.3f}   (target >= 0.95)")
    print(f"pipeline/synthetic ratio (c/b): {c / b:.3f}")


if __name__ == "__main__":
    main()
