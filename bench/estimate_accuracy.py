"""How close a dry run's estimate comes (issue 27, part 1: within +-25% of the actual total on jobs of 1 to 30
minutes). Through the platform itself (embedded default): for each job below, `dry_run: true` (the probe on the
worker), then the job with `estimate_job_id`; prints, for every job, the estimate, the actual (its timings' total:
the job from its claim to its metrics) and their ratio, and each phase's.

    PYTHONPATH=. .venv/bin/python bench/estimate_accuracy.py [--quick]

--quick runs the smaller jobs only (under a minute each here: the figures then mostly measure fixed costs).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import torch

from bench.embedded import served_embedded
from core.datasets.samples import write_sample

CLASSES = ["trouser", "bag", "sneaker", "dress", "coat", "sandal"]
JOBS: list[dict[str, Any]] = [
    # (name, images per class, spec): a pretrained body the course's way, then bodies from scratch
    {"name": "lite0-64px-1+2", "per_class": 150, "quick": True, "spec": {
        "kind": "fine_tune", "arch": "efficientnet_lite0", "pretrained": "imagenet", "size": 64, "bs": 32,
        "freeze_epochs": 1, "epochs": 2}},
    {"name": "resnet18-48px-4", "per_class": 300, "quick": True, "spec": {
        "kind": "fine_tune", "arch": "resnet18", "pretrained": "none", "size": 48, "bs": 32, "freeze_epochs": 0,
        "epochs": 4, "lr": 3e-3}},
    {"name": "resnet34-64px-3", "per_class": 300, "quick": False, "spec": {
        "kind": "fine_tune", "arch": "resnet34", "pretrained": "none", "size": 64, "bs": 32, "freeze_epochs": 0,
        "epochs": 3, "lr": 3e-3}},
    {"name": "lite0-96px-stage1-3", "per_class": 200, "quick": False, "spec": {
        "kind": "stage1", "arch": "efficientnet_lite0", "pretrained": "imagenet", "size": 96, "bs": 32, "epochs": 3}},
]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    rows = []
    with served_embedded() as served:
        tmp, client = served.tmp, served.client
        for job in [j for j in JOBS if j["quick"] or not args.quick]:
            folder = write_sample(
                "fashion-mnist",
                tmp / job["name"],
                per_class=job["per_class"],
                size=job["spec"]["size"],
                classes=CLASSES,
            )
            archive = Path(shutil.make_archive(str(tmp / job["name"]), "zip", folder))
            ds = client.upload(job["name"], archive).json()
            probe = client.wait(client.submit(dataset_id=ds["id"], dry_run=True, **job["spec"])["id"], timeout=1800)
            assert probe["state"] == "succeeded", probe["error"]
            found = probe["result"]["estimate"]
            done = client.wait(
                client.submit(dataset_id=ds["id"], estimate_job_id=probe["id"], **job["spec"])["id"], timeout=3600
            )
            assert done["state"] == "succeeded", done["error"]
            actual = done["result"]["timings"]
            rows.append((job["name"], found, actual))
            print(f"{job['name']}: estimate {found['total_seconds']:.1f} s, actual {actual['total']:.1f} s", flush=True)
    print(f"\nCPU, {torch.get_num_threads()} threads; the actual is the job's timings' total (claim to metrics.json)")
    print(f"{'job':24} {'estimate s':>10} {'actual s':>9} {'ratio':>6}   phases (actual/estimate)")
    for name, found, actual in rows:
        ratio = actual["total"] / found["total_seconds"]
        phases = " ".join(
            f"{p}={actual.get(p, 0) / s:.2f}" for p, s in found["phases"].items() if s > 0.5 and p in actual
        )
        print(f"{name:24} {found['total_seconds']:10.1f} {actual['total']:9.1f} {ratio:6.2f}   {phases}")


if __name__ == "__main__":
    main()
