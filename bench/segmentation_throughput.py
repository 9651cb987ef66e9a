"""What the U-Net costs: training images/s of a segmentation learner (dynamic U-Net) against a classifier
(fastai's head) on the same body, image size, batch size, images and schedule, interleaved in one run.
The images are silhouettes on textures; the classifier's label is the texture covering most of each image
(from its mask), the U-Net learns every pixel. Prints images/s for each and the ratio segmentation /
classification.

    .venv/bin/python bench/segmentation_throughput.py [--arch resnet18] [--size 64] [--bs 32] [--items 256]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.datasets.samples import SEGMENTATION_CODES, write_silhouette_masks
from core.engine.callbacks import ChannelsLast, MixedPrecision
from core.engine.data import DataConfig
from core.engine.events import Callback
from core.engine.items import LabelledItems, MaskItems
from core.engine.labelling import from_csv
from core.engine.masks import from_mask_rule
from core.engine.metrics import error_rate, pixel_accuracy
from core.engine.transforms import get_transforms
from core.engine.vision import cnn_learner


def label_by_main_texture(root: Path) -> Path:
    """labels.csv: each image's most common texture code (void and animal left out)."""
    rows = []
    for mask_path in sorted((root / "masks").glob("*.png")):
        counts = np.bincount(np.asarray(Image.open(mask_path)).ravel(), minlength=len(SEGMENTATION_CODES))
        rows.append((f"images/{mask_path.name}", SEGMENTATION_CODES[1 + int(counts[1:4].argmax())]))
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "label"])
        w.writerows(rows)
    return root / "labels.csv"


def images_per_second(items: LabelledItems, args: argparse.Namespace, device: torch.device) -> float:
    """Train one cycle of args.epochs from scratch; training images seen per second (validation included)."""
    config = DataConfig(size=args.size, bs=args.bs, augment=get_transforms(), seed=0, num_workers=args.workers)
    cbs: list[Callback] = [MixedPrecision(), ChannelsLast()] if device.type == "cuda" else []
    metric = pixel_accuracy if isinstance(items, MaskItems) else error_rate
    learn, _ = cnn_learner(items, args.arch, config, "none", [metric], cbs, device)
    learn.unfreeze()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    learn.fit_one_cycle(args.epochs, 1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(learn.dls.train) * learn.dls.train.bs * args.epochs / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--items", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_silhouette_masks(Path(tmp) / "scenes", count=args.items, side=args.size, seed=0)
        segmentation = from_mask_rule(root, void="void", valid_pct=0.2, seed=0)
        classification = from_csv(root, label_by_main_texture(root).name, valid_pct=0.2, seed=0)
        images_per_second(classification, args, device)  # warm-up (allocator, kernels)
        seg, clf = [], []
        for _ in range(args.reps):  # interleaved, so drift in the machine hits both alike
            clf.append(images_per_second(classification, args, device))
            seg.append(images_per_second(segmentation, args, device))
    c, s = statistics.median(clf), statistics.median(seg)
    print(f"device {device}, {args.arch}, {args.size} px, bs {args.bs}, {len(segmentation)} images, {args.reps} reps")
    print(f"classification  {c:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in clf)})")
    print(f"segmentation    {s:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in seg)})")
    print(f"segmentation/classification = {s / c:.3f}  (the U-Net trains {c / s:.1f}x slower)")


if __name__ == "__main__":
    main()
