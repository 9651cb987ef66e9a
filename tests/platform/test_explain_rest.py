"""Heatmaps over REST with PostgreSQL, Redis, S3 and a Celery worker: an explained answer is the plain answer
with a heatmap of the image's size, for the class asked for; the registry name and a logged prediction give the
same; the interpretation's top losses each have theirs; a wrong request is a 422 that names its field."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.platform.stack import Stack

BIN = Path(sys.executable).parent


def test_heatmaps_over_rest(stack: Stack, fashion_zip: Path, tmp_path: Path) -> None:
    c, _ = stack.new_project("explain")  # 64 px: a ResNet's last block is 2 x 2 cells (at 32 px, one)
    ds = c.upload("clothes", fashion_zip).json()
    job = c.wait(
        c.submit(
            kind="fine_tune",
            dataset_id=ds["id"],
            arch="resnet18",
            pretrained="none",
            size=32,
            freeze_epochs=0,
            epochs=2,
        )["id"]
    )
    assert job["state"] == "succeeded", job["error"]
    model = job["model_id"]
    with zipfile.ZipFile(fashion_zip) as z:
        name = next(n for n in z.namelist() if n.endswith(".png"))
        image = z.read(name)
    wide = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("RGB").resize((48, 32)).save(wide, format="PNG")  # not the model's size

    plain = c.post(f"/models/{model}/predict", files={"file": ("x.png", wide.getvalue())}).json()
    assert "heatmap" not in plain
    res = c.post(f"/models/{model}/predict", params={"explain": "true"}, files={"file": ("x.png", wide.getvalue())})
    assert res.status_code == 200, res.text
    explained = res.json()
    assert explained["top"][0] == plain["top"][0] and explained["heatmap_class"] == plain["top"][0]
    assert explained["top"][1] == pytest.approx(plain["top"][1], abs=1e-4)  # PyTorch's answer, ONNX Runtime's
    heat = Image.open(io.BytesIO(base64.b64decode(explained["heatmap"])))
    assert heat.mode == "L" and heat.size == (48, 32)

    other = next(k for k in ds["classes"] if k != plain["top"][0])
    asked = c.post(
        f"/registry/{job['result']['name']}/predict",
        params={"heatmap_class": other},  # implies explain
        files=[("file", ("a.png", image)), ("file", ("b.png", wide.getvalue()))],
    ).json()["results"]
    assert [r["heatmap_class"] for r in asked] == [other, other] and all(r["heatmap"] for r in asked)

    # A logged answer's heatmap, made again from its kept input.
    logged = c.get(f"/predictions/{explained['prediction_id']}/heatmap")
    assert logged.status_code == 200 and logged.headers["content-type"] == "image/png"
    assert logged.content == base64.b64decode(explained["heatmap"])
    for_other = c.get(f"/predictions/{explained['prediction_id']}/heatmap", params={"heatmap_class": other})
    assert for_other.status_code == 200 and Image.open(io.BytesIO(for_other.content)).size == (48, 32)

    # What a wrong request gets: a 422 naming the field, a 404 for what is not there.
    unknown = c.post(f"/models/{model}/predict", params={"heatmap_class": "zebra"}, files={"file": ("x.png", image)})
    assert unknown.status_code == 422 and unknown.json()["detail"].startswith("heatmap_class: 'zebra'"), unknown.text
    assert (
        c.get(f"/predictions/{explained['prediction_id']}/heatmap", params={"heatmap_class": "zebra"}).status_code
        == 422
    )
    assert c.get("/predictions/nope/heatmap").status_code == 404
    bad = c.post(f"/models/{model}/predict", params={"explain": "maybe"}, files={"file": ("x.png", image)})
    assert bad.status_code == 422

    # The CLI over REST: the image with its heatmap over it, written where --explain says.
    (tmp_path / "x.png").write_bytes(wide.getvalue())
    env = {**stack.env, "FITCYCLE_URL": c.base.removesuffix("/api/v1"), "FITCYCLE_KEY": c.key}
    cmd = [
        str(BIN / "fitcycle"),
        "models",
        "predict",
        model,
        str(tmp_path / "x.png"),
        "--explain",
        str(tmp_path / "hm"),
    ]
    done = subprocess.run([*cmd, "--heatmap-class", other], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert line["heatmap_class"] == other and line["heatmap"] == str(tmp_path / "hm" / "x.heatmap.png")
    assert Image.open(line["heatmap"]).size == (48, 32)

    # The interpretation's top losses each carry their heatmap, an artifact of the job.
    tops = c.get(f"/jobs/{job['id']}/artifacts/interpretation.json").json()["top_losses"]
    drawn = c.get(f"/jobs/{job['id']}/artifacts/{tops[0]['heatmap']}")
    assert drawn.status_code == 200 and Image.open(io.BytesIO(drawn.content)).mode == "RGBA"
