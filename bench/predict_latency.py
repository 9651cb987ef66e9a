"""Predict latency: POST /models/{id}/predict p50 against the Predictor called in-process on the same
image and the same bundle, printed as a ratio (target <= 1.3 for a 224 px resnet34 on CPU). Then the same
bundle's two backends side by side: ONNX Runtime (model.onnx) against eager PyTorch, p50 latency of one image
and throughput of batches of --batch images, printed as a ratio (target >= 1.5).

    .venv/bin/python bench/predict_latency.py [--n 30] [--batch 32] [--arch resnet34] [--size 224]

The model is trained for one short epoch through the platform itself (embedded default), so the bundle
the endpoint serves is a real one; its accuracy does not matter for latency.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from bench.embedded import served_embedded
from core.datasets.samples import write_sample
from core.engine.inference import Predictor
from core.storage.base import download_prefix
from core.storage.local import LocalStore


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="images per pass for the throughput comparison")
    args = p.parse_args()
    with served_embedded() as served:
        tmp, client = served.tmp, served.client
        folder = write_sample("fashion-mnist", tmp / "fm", per_class=4, size=args.size, classes=["bag", "trouser"])
        archive = Path(shutil.make_archive(str(tmp / "fm"), "zip", folder))
        image = (folder / "bag" / "0000.png").read_bytes()
        ds = client.upload("fm", archive).json()
        job = client.wait(
            client.submit(
                kind="fine_tune",
                dataset_id=ds["id"],
                arch=args.arch,
                pretrained="none",
                size=args.size,
                bs=2,
                freeze_epochs=0,
                epochs=1,
                lr=1e-3,
            )["id"],
            timeout=900,
        )
        assert job["state"] == "succeeded", job["error"]
        model = client.get(f"/models/{job['model_id']}").json()

        def over_http() -> None:
            r = client.post(f"/models/{model['id']}/predict", files={"file": ("bag.png", image)})
            assert r.status_code == 200, r.text

        # The same bundle the API serves, from the embedded object store.
        store = LocalStore((tmp / "data" / "objects").resolve())
        manifests = [k for k in store.list("projects/") if k.endswith("/export/manifest.json")]
        prefix = next(k for k in manifests if f"/jobs/{job['id']}/" in k)
        local = download_prefix(store, prefix.rsplit("/", 1)[0], tmp / "bundle")
        predictor = Predictor(local)

        def in_process() -> None:
            predictor.predict(image)

        for fn in (over_http, in_process):  # warm-up: load, allocate, first-call overheads
            for _ in range(3):
                fn()
        http_times, local_times = [], []
        for _ in range(args.n):  # interleaved, so load drift hits both alike
            http_times += timed(over_http, 1)
            local_times += timed(in_process, 1)
        h, loc = statistics.median(http_times), statistics.median(local_times)
        print(f"{args.arch} at {args.size}px on CPU ({torch.get_num_threads()} threads), {args.n} requests each")
        print(f"POST /predict p50 {h * 1000:.1f} ms   Predictor in-process p50 {loc * 1000:.1f} ms")
        print(f"http/in-process ratio: {h / loc:.3f}  (target <= 1.3)")
        compare_backends(local, sorted(folder.rglob("*.png")), args.n, args.batch)


def compare_backends(bundle: Path, paths: list[Path], n: int, batch: int) -> None:
    """ONNX Runtime against eager PyTorch on one bundle: p50 of one image, and images/s in batches of `batch`."""
    onnx, eager = Predictor(bundle, backend="onnx"), Predictor(bundle, backend="torch")
    assert onnx.backend == "onnx", f"{bundle} has no usable model.onnx: {onnx.manifest.get('onnx')}"
    image = paths[0].read_bytes()
    images = [paths[i % len(paths)].read_bytes() for i in range(batch)]
    for predictor in (onnx, eager):  # warm-up
        predictor.predict(image)
        predictor.predict_batch(images)
    one: dict[str, list[float]] = {"onnx": [], "eager": []}
    many: dict[str, list[float]] = {"onnx": [], "eager": []}
    for _ in range(n):  # interleaved, so load drift hits both alike
        for name, predictor in (("onnx", onnx), ("eager", eager)):
            one[name] += timed(partial(predictor.predict, image), 1)
    for _ in range(max(3, n // 5)):
        for name, predictor in (("onnx", onnx), ("eager", eager)):
            many[name] += timed(partial(predictor.predict_batch, images), 1)
    o1, e1 = statistics.median(one["onnx"]), statistics.median(one["eager"])
    on, en = batch / statistics.median(many["onnx"]), batch / statistics.median(many["eager"])
    print(f"batch 1 p50: onnx {o1 * 1000:.1f} ms   eager {e1 * 1000:.1f} ms   eager/onnx latency ratio: {e1 / o1:.2f}")
    print(f"batch {batch} throughput: onnx {on:.1f} images/s   eager {en:.1f} images/s")
    print(f"onnx/eager throughput ratio: {on / en:.2f}")


if __name__ == "__main__":
    main()
