"""Explained against plain predict: POST /models/{id}/predict?explain=true (Grad-CAM by PyTorch, the heatmap as an
image-sized PNG in the answer) against the same request without it (ONNX Runtime, the default), p50 latency side
by side, interleaved, printed as a ratio (target <= 3). Then in-process, what the difference is made of: the
Predictor's plain answer by ONNX Runtime and by PyTorch, and its explained answer.

    .venv/bin/python bench/explain.py [--n 30] [--arch resnet34] [--size 224]

Each for an image at the model's size and for a 640 x 480 photo (the heatmap is the image's size, so a bigger
image costs more to map back and encode). The model is trained for one short epoch through the platform itself
(embedded default), so the bundle the endpoint serves is a real one; its accuracy does not matter here.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from bench.embedded import served_embedded
from core.datasets.samples import write_sample
from core.engine.inference import Predictor
from core.storage.base import download_prefix
from core.storage.local import LocalStore


def p50_ms(fn: Callable[[], object], n: int, into: list[float]) -> None:
    for _ in range(n):
        t = time.perf_counter()
        fn()
        into.append((time.perf_counter() - t) * 1000)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    with served_embedded() as served:
        tmp, client = served.tmp, served.client
        folder = write_sample("fashion-mnist", tmp / "fm", per_class=4, size=args.size, classes=["bag", "trouser"])
        archive = Path(shutil.make_archive(str(tmp / "fm"), "zip", folder))
        ds = client.upload("fm", archive).json()
        spec = {"arch": args.arch, "pretrained": "none", "size": args.size, "bs": 2, "freeze_epochs": 0, "epochs": 1}
        job = client.wait(client.submit(kind="fine_tune", dataset_id=ds["id"], lr=1e-3, **spec)["id"], timeout=900)
        assert job["state"] == "succeeded", job["error"]
        model_id = job["model_id"]
        store = LocalStore((tmp / "data" / "objects").resolve())
        manifests = [k for k in store.list("projects/") if k.endswith("/export/manifest.json")]
        prefix = next(k for k in manifests if f"/jobs/{job['id']}/" in k)
        bundle = download_prefix(store, prefix.rsplit("/", 1)[0], tmp / "bundle")
        onnx, eager = Predictor(bundle, backend="onnx"), Predictor(bundle, backend="torch")
        assert onnx.backend == "onnx", onnx.manifest.get("onnx")
        sample = Image.open(folder / "bag" / "0000.png").convert("RGB")
        print(f"{args.arch} at {args.size}px on CPU ({torch.get_num_threads()} threads), {args.n} calls each, p50 ms")
        for label, image in ((f"{args.size}x{args.size} image", sample), ("640x480 photo", sample.resize((640, 480)))):
            data = png(image)

            def plain_http(data: bytes = data) -> None:
                r = client.post(f"/models/{model_id}/predict", files={"file": ("x.png", data)})
                assert r.status_code == 200, r.text

            def explained_http(data: bytes = data) -> None:
                r = client.post(f"/models/{model_id}/predict?explain=true", files={"file": ("x.png", data)})
                assert r.status_code == 200 and r.json()["heatmap"], r.text

            runs: dict[str, Callable[[], object]] = {
                "POST /predict": plain_http,
                "POST /predict?explain=true": explained_http,
                "Predictor plain, ONNX Runtime": partial(onnx.predict, data),
                "Predictor plain, PyTorch": partial(eager.predict, data),
                "Predictor.explain (PyTorch)": partial(onnx.explain, data),
            }
            times: dict[str, list[float]] = {k: [] for k in runs}
            for fn in runs.values():  # warm-up: load, allocate, the explainer's PyTorch model
                for _ in range(3):
                    fn()
            for _ in range(args.n):  # interleaved, so load drift hits all alike
                for name, fn in runs.items():
                    p50_ms(fn, 1, times[name])
            p50 = {k: statistics.median(v) for k, v in times.items()}
            print(f"\n{label}")
            for name, ms in p50.items():
                print(f"  {name:<32} {ms:8.1f}")
            http = p50["POST /predict?explain=true"] / p50["POST /predict"]
            local = p50["Predictor.explain (PyTorch)"] / p50["Predictor plain, ONNX Runtime"]
            print(f"  explained/plain over HTTP: {http:.2f}  (target <= 3)   in-process: {local:.2f}")


if __name__ == "__main__":
    main()
