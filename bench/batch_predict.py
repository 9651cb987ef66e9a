"""Batch prediction as a job against the Predictor in-process (issue 27, part 2: target >= 0.9x). A model trained
through the platform itself (embedded default) answers a dataset version of --items images as a `predict` job;
the same bundle answers the same files in-process with Predictor.predict_batch, 64 images a call (the job's
forward size), with no writing. Printed side by side, alternating, each --repeats times, medians compared:

- the job's own rate (`result.items_per_second`: its answering loop, chunks written to the object store included);
- the job end to end (queued to succeeded, as a user waits for it: queueing, the worker's start-up of the job,
  the dataset's download, the model's loading).

    PYTHONPATH=. .venv/bin/python bench/batch_predict.py [--items 2000] [--size 128] [--arch resnet34] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch

from bench.embedded import served_embedded
from core.datasets.samples import write_sample
from core.engine.inference import Predictor
from core.jobs.kinds.predict import FORWARD_ITEMS
from core.storage.base import download_prefix
from core.storage.local import LocalStore

CLASSES = ["bag", "trouser", "sneaker", "dress"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with served_embedded() as served:
        tmp, client = served.tmp, served.client
        small = write_sample("fashion-mnist", tmp / "train", per_class=8, size=args.size, classes=CLASSES)
        ds = client.upload("train", Path(shutil.make_archive(str(tmp / "train"), "zip", small))).json()
        spec = {"arch": args.arch, "pretrained": "none", "size": args.size, "bs": 8, "freeze_epochs": 0, "epochs": 1}
        trained = client.wait(client.submit(kind="fine_tune", dataset_id=ds["id"], lr=1e-3, **spec)["id"], timeout=900)
        assert trained["state"] == "succeeded", trained["error"]
        many = write_sample(
            "fashion-mnist", tmp / "answer", per_class=-(-args.items // len(CLASSES)), size=args.size, classes=CLASSES
        )
        archive = Path(shutil.make_archive(str(tmp / "answer"), "zip", many))
        target = client.upload("train", archive).json()  # a new version of the model's name: its champion answers
        paths = sorted(many.rglob("*.png"))

        store = LocalStore((tmp / "data" / "objects").resolve())
        manifests = [k for k in store.list("projects/") if k.endswith("/export/manifest.json")]
        prefix = next(k for k in manifests if f"/jobs/{trained['id']}/" in k)
        predictor = Predictor(download_prefix(store, prefix.rsplit("/", 1)[0], tmp / "bundle"))
        predictor.predict_batch(paths[:FORWARD_ITEMS])  # warm-up

        def in_process() -> float:
            t = time.perf_counter()
            for start in range(0, len(paths), FORWARD_ITEMS):
                predictor.predict_batch(paths[start : start + FORWARD_ITEMS])
            return len(paths) / (time.perf_counter() - t)

        local, own, whole = [], [], []
        for _ in range(args.repeats):  # alternating, so load drift hits both alike
            local.append(in_process())
            t = time.perf_counter()
            job = client.wait(client.submit(kind="batch_predict", dataset_id=target["id"])["id"], timeout=1800)
            seconds = time.perf_counter() - t
            assert job["state"] == "succeeded", job["error"]
            own.append(job["result"]["items_per_second"])
            whole.append(job["result"]["items"] / seconds)
        loc, job_rate, end_to_end = statistics.median(local), statistics.median(own), statistics.median(whole)
        print(f"{args.arch} at {args.size}px, {len(paths)} images, CPU ({torch.get_num_threads()} threads), "
              f"{args.repeats} repeats, backend {job['result']['backend']}")  # fmt: skip
        print(f"Predictor.predict_batch in-process: {loc:.1f} images/s")
        print(
            f"predict job, its answering loop:    {job_rate:.1f} images/s   ratio {job_rate / loc:.3f} (target >= 0.9)"
        )
        print(f"predict job, queued to succeeded:   {end_to_end:.1f} images/s   ratio {end_to_end / loc:.3f}")


if __name__ == "__main__":
    main()
