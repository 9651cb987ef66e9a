"""The loop closes itself: with a policy of min_feedback 20, the 20th correction leads, with no other call, to
a dataset version, a retrain, a decision and signed webhook deliveries. A webhook on a private address is
refused by the SSRF guard. Concurrent version cuts get distinct numbers and lose no edit."""

from __future__ import annotations

import hashlib
import hmac
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.datasets.samples import write_sample
from tests.platform.services import wait_for
from tests.platform.stack import ImageHandler, ImageServer, Stack, make_zip

CLASSES = ["trouser", "bag", "sneaker"]
SECRET = "a-secret-of-sixteen-or-more"


def test_the_20th_correction_retrains_decides_and_calls_the_webhook(
    stack: Stack, image_server: ImageServer, tmp_path: Path
) -> None:
    c, _ = stack.new_project("policy")
    folder = write_sample("fashion-mnist", tmp_path / "v1", per_class=30, size=32, classes=CLASSES)
    ds = c.upload("shoes", make_zip(folder, tmp_path / "v1.zip")).json()
    spec = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 16, "freeze_epochs": 0, "epochs": 2}
    first = c.wait(c.submit(kind="fine_tune", dataset_id=ds["id"], **spec)["id"])
    assert first["state"] == "succeeded", first["error"]

    hook = c.post(
        "/webhooks",
        json={
            "url": f"{image_server.base}/hook",
            "events": ["model.promoted", "job.succeeded", "retrain.rejected"],
            "secret": SECRET,
        },
    )
    assert hook.status_code == 201 and "secret" not in hook.json()
    private = c.post("/webhooks", json={"url": "http://10.1.2.3/hook", "events": ["job.succeeded"], "secret": SECRET})
    assert private.status_code == 201
    policy = {"min_feedback": 20, "min_improvement": -1.0, "max_class_drop": 1.0, "auto_promote": True}
    assert c.http.put("/registry/shoes/policy", json=policy).status_code == 200
    ImageHandler.received.clear()

    fresh = write_sample("fashion-mnist", tmp_path / "new", per_class=37, size=32, classes=CLASSES)
    images = [p for cls in CLASSES for p in sorted((fresh / cls).glob("*.png"))[30:37]][:20]
    for n, image in enumerate(images):
        answer = c.post("/registry/shoes/predict", files={"file": (image.name, image.read_bytes())}).json()
        assert (
            c.post(f"/predictions/{answer['prediction_id']}/feedback", json={"label": image.parent.name}).status_code
            == 201
        )
        if n == 18:  # one short of the threshold: nothing happens
            assert c.get(f"/datasets/{ds['id']}/versions").json()["count"] == 1

    # No other call: the fleet loop cuts v2 and queues the retrain; the worker evaluates and promotes.
    jobs = wait_for(
        lambda: [j for j in c.get("/jobs").json()["data"] if j["kind"] == "retrain" and j["state"] == "succeeded"],
        600,
        "the policy's retrain",
    )
    versions = c.get(f"/datasets/{ds['id']}/versions").json()["data"]
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["changes"]["feedback"] == 20
    decision = jobs[0]["result"]["decision"]
    assert decision["action"] == "promoted" and c.get("/registry/shoes").json()["champion_id"] == jobs[0]["model_id"]

    # The webhook heard it, signed; the private one was refused by the SSRF guard.
    got = wait_for(
        lambda: (
            {h["x-fitcycle-event"] for h, _ in ImageHandler.received} >= {"job.succeeded", "model.promoted"}
            and ImageHandler.received
        ),
        60,
        "the webhook deliveries",
    )
    for headers, body in got:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-fitcycle-signature"], expected)
    promoted = next(json.loads(b) for h, b in got if h["x-fitcycle-event"] == "model.promoted")
    assert promoted["data"]["model_id"] == jobs[0]["model_id"] and promoted["data"]["name"] == "shoes"
    deliveries = wait_for(
        lambda: [d for d in c.get(f"/webhooks/{private.json()['id']}/deliveries").json()["data"] if d["attempts"]],
        60,
        "an attempt at the private webhook",
    )
    assert deliveries[0]["state"] in ("pending", "failed") and "non-public" in deliveries[0]["last_error"]
    assert all(h["x-fitcycle-delivery"] for h, _ in got)


def test_concurrent_cuts_get_distinct_numbers_and_lose_no_edit(stack: Stack, tmp_path: Path) -> None:
    c, _ = stack.new_project("cuts")
    folder = write_sample("fashion-mnist", tmp_path / "v1", per_class=12, size=16, classes=CLASSES)
    ds = c.upload("cuts", make_zip(folder, tmp_path / "v1.zip")).json()
    keys = [i["key"] for i in c.get(f"/datasets/{ds['id']}/items", params={"limit": 100}).json()["data"]]

    def cut(n: int) -> dict[str, Any]:
        res = c.post(
            f"/datasets/{ds['id']}/versions", json={"from_version": 1, "remove": [keys[n]], "note": f"cut {n}"}
        )
        assert res.status_code == 201, res.text
        return dict(res.json())

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(cut, range(4)))
    assert sorted(m["version"] for m in made) == [2, 3, 4, 5]
    for n, m in enumerate(made):  # each version lacks exactly its own removed item
        items = {
            i["key"]
            for i in c.get(f"/datasets/{ds['id']}/items", params={"version": m["version"], "limit": 100}).json()["data"]
        }
        assert items == set(keys) - {keys[n]}, n
