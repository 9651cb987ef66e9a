"""The loop closes itself: with a policy of min_feedback 20, the 20th correction leads, with no other call, to
a dataset version, a retrain, a decision and signed webhook deliveries; a prediction corrected again after its
first correction went into a version retrains again. A webhook on a private address is refused when it is made.
One project's hanging receivers do not hold up another project's deliveries, and a deleted webhook gets nothing
more. Concurrent version cuts get distinct numbers and lose no edit."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
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
    assert private.status_code == 422 and "not a public address" in private.json()["detail"], private.text
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

    # The webhook heard it, signed with a timestamp (a captured delivery cannot be replayed later).
    got = wait_for(
        lambda: (
            {h["x-fitcycle-event"] for h, _ in ImageHandler.received} >= {"job.succeeded", "model.promoted"}
            and ImageHandler.received
        ),
        60,
        "the webhook deliveries",
    )
    for headers, body in got:
        assert_signed(headers, body)
    promoted = next(json.loads(b) for h, b in got if h["x-fitcycle-event"] == "model.promoted")
    assert promoted["data"]["model_id"] == jobs[0]["model_id"] and promoted["data"]["name"] == "shoes"
    assert all(h["x-fitcycle-delivery"] for h, _ in got)

    # The same prediction corrected a second time, after its first correction went into v2: with min_feedback 1
    # the loop cuts v3 with the item's new label (not "the version already has an item") and retrains again.
    assert c.http.put("/registry/shoes/policy", json={"min_feedback": 1}).status_code == 200
    first_id = c.get("/feedback", params={"limit": 1}).json()["data"][0]["prediction_id"]
    relabel = next(cls for cls in CLASSES if cls != images[0].parent.name)
    assert c.post(f"/predictions/{first_id}/feedback", json={"label": relabel}).status_code == 201
    again = wait_for(
        lambda: [j for j in c.get("/jobs").json()["data"] if j["kind"] == "retrain" and j["state"] == "succeeded"][1:],
        600,
        "the retrain after the second correction",
    )
    assert again
    versions = c.get(f"/datasets/{ds['id']}/versions").json()["data"]
    assert [v["version"] for v in versions] == [1, 2, 3] and versions[2]["changes"]["feedback"] == 1
    changed = c.get(f"/datasets/{ds['id']}/versions/3/diff").json()
    assert changed["counts"]["added"] == 0 and changed["relabelled"][0]["after"] == {"label": relabel}
    # min_feedback: null switches retraining on feedback off again.
    off = c.http.put("/registry/shoes/policy", json={"min_feedback": None}).json()
    assert off["retrains_on_feedback"] is False


def assert_signed(headers: dict[str, str], body: bytes) -> None:
    """What the docs tell a receiver to check: the HMAC of "timestamp." + body, and a timestamp within 5 minutes."""
    stamp = headers["x-fitcycle-timestamp"]
    signed = stamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-fitcycle-signature"], expected)
    assert abs(time.time() - int(stamp)) < 300


def test_one_projects_hanging_webhooks_do_not_delay_anothers(
    stack: Stack, image_server: ImageServer, tmp_path: Path, step: Callable[[str], None]
) -> None:
    step("two projects, each with a dataset")
    folder = write_sample("fashion-mnist", tmp_path / "data", per_class=8, size=16, classes=CLASSES)
    archive = make_zip(folder, tmp_path / "data.zip")
    spec = {"arch": "resnet18", "pretrained": "none", "size": 16, "bs": 8, "freeze_epochs": 0, "epochs": 1}
    a, _ = stack.new_project("fair-a")
    b, _ = stack.new_project("fair-b")
    ds_a, ds_b = (c.upload("tiny", archive).json() for c in (a, b))

    step("A: 20 webhooks on a URL that never answers; B: one that does")
    for _ in range(20):
        hook = {"url": f"{image_server.base}/hang", "events": ["job.succeeded"], "secret": SECRET}
        assert a.post("/webhooks", json=hook).status_code == 201
    mine = {"url": f"{image_server.base}/hook?b", "events": ["job.succeeded"], "secret": SECRET}
    assert b.post("/webhooks", json=mine).status_code == 201
    ImageHandler.hung.clear()

    step("A's job succeeds: 20 deliveries hang")
    assert a.wait(a.submit(kind="fine_tune", dataset_id=ds_a["id"], **spec)["id"])["state"] == "succeeded"
    wait_for(lambda: len(ImageHandler.hung) >= 2, 30, "A's deliveries to reach the hanging receiver")

    step("B's job succeeds: its delivery arrives within seconds")
    done = b.wait(b.submit(kind="fine_tune", dataset_id=ds_b["id"], **spec)["id"])
    assert done["state"] == "succeeded", done["error"]
    seen = time.time()
    arrived = wait_for(
        lambda: [(h, body, at) for h, body, at in ImageHandler.timed if h["path"] == "/hook?b"],
        30,
        "B's delivery",
        interval=0.05,
    )
    headers, body, at = arrived[0]
    assert json.loads(body)["data"]["job_id"] == done["id"]
    assert_signed(headers, body)
    assert at - seen < 5, f"B's delivery came {at - seen:.1f} s after its job succeeded, behind A's"
    print(f"B's delivery came {at - seen:+.2f} s after its job was seen succeeded; A's hung {len(ImageHandler.hung)}")
    # A's deliveries were still being tried then (each retried up to six times, 2 s to 32 s apart).
    states = [
        a.get(f"/webhooks/{h['id']}/deliveries").json()["data"][0]["state"] for h in a.get("/webhooks").json()["data"]
    ]
    assert "pending" in states, states

    step("A disables half its webhooks and deletes the rest: they get nothing more")
    for n, hook in enumerate(a.get("/webhooks").json()["data"]):
        if n % 2:
            assert a.http.delete(f"/webhooks/{hook['id']}").status_code == 204
        else:
            off = a.http.patch(f"/webhooks/{hook['id']}", json={"active": False})
            assert off.status_code == 200 and off.json()["active"] is False, off.text
    time.sleep(0.5)  # an attempt that was already on its way may still land
    settled = len(ImageHandler.hung)
    time.sleep(3)  # three polls of the delivery worker: nothing new may be sent
    assert len(ImageHandler.hung) == settled


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
