"""Drift alarms end to end, on the stack (PostgreSQL, Redis, S3, a worker, the API over HTTP): a Fashion-MNIST model
is served 500 images like its training data and raises no alarm; then inverted images, and the alarm fires within
200 of them, explained (the input moved, from what to what, with the inverted images as examples), its model.drift
webhook signed and delivered once, the name's policy queues a retrain from the waiting correction, and
fitcycle_drift_score is on /metrics."""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageOps

from core.datasets.samples import write_sample
from tests.platform.services import Client, wait_for
from tests.platform.stack import ImageHandler, ImageServer, Stack, make_zip
from tests.platform.test_cli_remote import run
from tests.platform.test_metrics import sample
from tests.platform.test_policy_webhooks import SECRET, assert_signed

TRAIN_PER_CLASS = 150  # 1,500 images: 300 validation answers make the reference
SERVE_PER_CLASS = 200  # images 150-199 of each class: 500 in-distribution answers, never trained on
FILES_PER_CALL = 10


def _predict(c: Client, images: list[tuple[str, bytes]]) -> list[str]:
    """Answer the images through the registry name, FILES_PER_CALL a request; their prediction ids, in order."""
    ids: list[str] = []
    for start in range(0, len(images), FILES_PER_CALL):
        files = [("file", (name, data, "image/png")) for name, data in images[start : start + FILES_PER_CALL]]
        res = c.post("/registry/fashion/predict", files=files)
        assert res.status_code == 200, res.text
        body = res.json()
        ids += [r["prediction_id"] for r in body["results"]] if "results" in body else [body["prediction_id"]]
    return ids


def _checked(c: Client, newest: str) -> dict[str, Any]:
    """The drift report once the fleet loop's check has read up to prediction `newest`."""
    found: dict[str, Any] = wait_for(
        lambda: (d := c.get("/registry/fashion/drift").json()).get("newest") == newest and d,
        60,
        f"a drift check up to prediction {newest}",
    )
    return found


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_in_distribution_answers_raise_no_alarm_and_inverted_ones_do_within_200(
    stack: Stack, image_server: ImageServer, tmp_path: Path
) -> None:
    c, _ = stack.new_project("drift")
    folder = write_sample("fashion-mnist", tmp_path / "train", per_class=TRAIN_PER_CLASS, size=32)
    ds = c.upload("fashion", make_zip(folder, tmp_path / "train.zip")).json()
    spec = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 64, "freeze_epochs": 0, "epochs": 1}
    job = c.wait(c.submit(kind="fine_tune", dataset_id=ds["id"], **spec)["id"])
    assert job["state"] == "succeeded", job["error"]
    print(f"job: {job['result'].get('timings')}")

    served = write_sample("fashion-mnist", tmp_path / "serve", per_class=SERVE_PER_CLASS, size=32)
    classes = sorted(p.name for p in served.iterdir() if p.is_dir())
    fresh = [p for cls in classes for p in sorted((served / cls).glob("*.png"))[TRAIN_PER_CLASS:]]
    assert len(fresh) == 500
    before = c.get("/registry/fashion/drift").json()
    assert before["watched"] and before["reference_items"] >= 250 and before["alarm"] is None, before

    # 500 answers like the training data, in no particular order: scored, no alarm at any check on the way.
    random.Random(0).shuffle(fresh)
    ids = _predict(c, [(p.name, p.read_bytes()) for p in fresh])
    report = _checked(c, ids[-1])
    print("in distribution:", {k: round(v["score"], 3) for k, v in report["scores"].items()})
    assert report["window_size"] == 500 and set(report["scores"]) == {"uncertainty", "class_mix", "input"}
    assert report["alarm"] is None and all(v["score"] < report["threshold"] for v in report["scores"].values())
    assert report["alarms"] == 0

    # A webhook for the alarm, a policy that retrains on drift, and one correction waiting for it.
    hook = {"url": f"{image_server.base}/drift-hook", "events": ["model.drift"], "secret": SECRET}
    assert c.post("/webhooks", json=hook).status_code == 201
    assert c.http.put("/registry/fashion/policy", json={"retrain_on_drift": True}).status_code == 200
    assert c.post(f"/predictions/{ids[0]}/feedback", json={"label": fresh[0].parent.name}).status_code == 201

    # Inverted images (a client that sends negatives): the alarm fires within 200 of them.
    inverted = [
        (f"inv-{p.name}", _png(ImageOps.invert(Image.open(p).convert("RGB"))))
        for cls in classes
        for p in sorted((served / cls).glob("*.png"))[TRAIN_PER_CLASS : TRAIN_PER_CLASS + 20]
    ]
    random.Random(1).shuffle(inverted)
    shifted: list[str] = []
    fired_after, alarm = None, {}
    for start in range(0, len(inverted), 20):  # all 200, 20 at a time: a check after each 20
        shifted += _predict(c, inverted[start : start + 20])
        report = _checked(c, shifted[-1])
        if report["alarm"] is not None and fired_after is None:
            fired_after, alarm = len(shifted), report["alarm"]
            print("fired:", {k: round(v["score"], 3) for k, v in report["scores"].items()}, "after", fired_after)
    assert fired_after is not None and fired_after <= 200, report["scores"]
    assert alarm["score"] > alarm["threshold"] and alarm["signal"] in alarm["signals"] and "went from" in alarm["text"]
    assert alarm["window"]["answers"] == 500
    print("alarm:", alarm["text"])
    # By 200 inverted answers (40% of the window) the input has moved past the threshold, and says how.
    moved = report["scores"]["input"]
    print("after 200:", {k: round(v["score"], 3) for k, v in report["scores"].items()})
    assert moved["score"] > report["threshold"] and moved["moved"].startswith("mean_") and moved["to"] > moved["from"]
    assert "mean brightness went from" in moved["text"] and set(moved["examples"]) <= set(shifted)
    assert report["alarm"]["since"] == alarm["since"]  # the same alarm, open since it fired

    # The policy queued a retrain from the waiting correction (cancelled here: its training is not the point).
    action = wait_for(lambda: c.get("/registry/fashion/drift").json()["alarm"]["action"], 60, "the policy's action")
    assert action.startswith("retrain job") and "with 1 corrections" in action, action
    retrain_id = action.split()[2]
    assert c.get(f"/jobs/{retrain_id}").json()["kind"] == "retrain"
    c.post(f"/jobs/{retrain_id}/cancel")

    # The webhook: signed, delivered once, however many checks see the alarm open.
    delivered = wait_for(
        lambda: [(h, b) for h, b in ImageHandler.received if h.get("x-fitcycle-event") == "model.drift"],
        30,
        "the model.drift delivery",
    )
    more = _predict(c, inverted[:20])
    assert _checked(c, more[-1])["alarm"] is not None
    drifted = [(h, b) for h, b in ImageHandler.received if h.get("x-fitcycle-event") == "model.drift"]
    assert len(drifted) == len(delivered) == 1, drifted
    headers, body = drifted[0]
    assert_signed(headers, body)
    data = json.loads(body)["data"]
    assert data["model_id"] == report["model_id"] and data["name"] == "fashion" and data["signal"] == alarm["signal"]

    # The scores are on /metrics, and the registry page shows the banner (its browser test: tests/ui).
    metrics = httpx.get(f"{stack.a.base.removesuffix('/api/v1')}/metrics").text  # no key
    assert (sample(metrics, "fitcycle_drift_score", model=report["model_id"], signal="input") or 0) > 0.25
    assert c.get(f"/models/{report['model_id']}/drift").json()["alarm"]["signal"] == alarm["signal"]

    # The same from the CLI: the report in words, and the project's threshold (alarms off, then back on).
    shown = run(stack, c.key, "registry", "drift", "fashion")
    assert shown.returncode == 0 and "ALARM since" in shown.stdout and re.search(r"input +PSI \d", shown.stdout), shown
    print(shown.stdout)
    off = run(stack, c.key, "project", "set", "--drift-threshold", "off", "--drift-window", "400")
    assert off.returncode == 0 and json.loads(off.stdout)["settings"]["drift_threshold"] is None, off.stderr
    assert run(stack, c.key, "project", "set", "--drift-threshold", "x").returncode == 2
    back = json.loads(run(stack, c.key, "project", "set", "--drift-threshold", "0.25").stdout)["settings"]
    assert back["drift_threshold"] == 0.25 and back["drift_window"] == 400
    c.wait(retrain_id)
