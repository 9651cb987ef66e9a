"""Multi-label, points and segmentation each go once around the loop: predict, feedback in the task's own
shape, a version with it, a retrain scored against the champion in the task's own metric (and on the project's
gold set when it has one of the task). The cleaner doubts points and masks too: its suggestion is a relabel a
version takes as it is (through the API, and through `fitcycle clean --edits`)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.datasets.samples import write_mosaics, write_sample, write_silhouette_masks, write_silhouette_points
from tests.platform.services import Client
from tests.platform.stack import Stack, make_zip

TINY = {"arch": "resnet18", "pretrained": "none", "bs": 16, "freeze_epochs": 0, "epochs": 1, "lr": 3e-3}


def around_the_loop(
    c: Client, ds: dict[str, Any], size: int, images: list[Path], targets: list[dict[str, Any]]
) -> dict[str, Any]:
    first = c.wait(c.submit(kind="fine_tune", dataset_id=ds["id"], size=size, **TINY)["id"])
    assert first["state"] == "succeeded", first["error"]
    return retrain_with_feedback(c, ds, first, images, targets)


def retrain_with_feedback(
    c: Client, ds: dict[str, Any], first: dict[str, Any], images: list[Path], targets: list[dict[str, Any]]
) -> dict[str, Any]:
    for image, target in zip(images, targets, strict=True):
        answer = c.post(f"/models/{first['model_id']}/predict", files={"file": (image.name, image.read_bytes())})
        assert answer.status_code == 200, answer.text
        res = c.post(f"/predictions/{answer.json()['prediction_id']}/feedback", json=target)
        assert res.status_code == 201, res.text
    version = c.post(f"/datasets/{ds['id']}/versions", json={"add_feedback": "all"})
    assert version.status_code == 201, version.text
    assert version.json()["changes"]["added"] == len(images)
    retrain = c.wait(c.submit(kind="retrain", dataset_id=ds["id"], freeze_epochs=0, epochs=1)["id"])
    assert retrain["state"] == "succeeded", retrain["error"]
    decision = retrain["result"]["decision"]
    assert decision["action"] in ("promoted", "rejected")
    assert decision["scores"]["challenger"]["n_items"] == decision["scores"]["champion"]["n_items"] > 0
    return dict(decision)


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return stack.new_project("tasks-loop")[0]


def test_multi_label_feedback_is_a_label_set(client: Client, tmp_path: Path) -> None:
    folder = write_mosaics(tmp_path / "m", count=80, seed=5)
    ds = client.upload(
        "mosaics",
        make_zip(folder, tmp_path / "m.zip"),
        labels="csv",
        csv="labels.csv",
        label_col="tags",
        label_delim=" ",
    ).json()
    extra = write_mosaics(tmp_path / "extra", count=4, seed=9)
    images = sorted((extra / "images").glob("*.png"))[:4]
    # A gold set: other mosaics, uploaded once and pinned; every retrain of a multi-label name is also scored there.
    gold_folder = write_mosaics(tmp_path / "gold", count=24, seed=21)
    gold = client.upload(
        "mosaics-gold",
        make_zip(gold_folder, tmp_path / "gold.zip"),
        labels="csv",
        csv="labels.csv",
        label_col="tags",
        label_delim=" ",
    ).json()
    pinned = client.http.patch("/project", json={"gold": {"dataset_id": gold["id"]}})
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["settings"]["gold"] == {"dataset_id": gold["id"], "dataset": "mosaics-gold", "version": 1}
    refused = client.http.delete(f"/datasets/{gold['id']}")
    assert refused.status_code == 409 and "gold set" in refused.json()["detail"]
    try:
        decision = around_the_loop(client, ds, 56, images, [{"labels": ["bag", "dress"]}] * len(images))
    finally:
        assert client.http.patch("/project", json={"gold": None}).json()["settings"]["gold"] is None
    assert decision["scores"]["champion"]["metric"] == "fbeta"
    on_gold = decision["scores"]["gold"]
    assert on_gold["dataset_id"] == gold["id"] and on_gold["skipped"] is None
    assert on_gold["challenger"]["n_items"] == on_gold["champion"]["n_items"] == 24  # every item: no split
    assert "gold: " in decision["reason"] and "validation: " in decision["reason"]
    assert client.http.delete(f"/datasets/{gold['id']}").status_code == 200  # unpinned: it can go


def test_a_gold_set_of_another_task_is_skipped_with_the_reason(client: Client, stack: Stack, tmp_path: Path) -> None:
    """Gold is the project's (set here with `fitcycle project set`); a retrain of another task records why it
    was not scored there."""
    from tests.platform.test_cli_remote import run

    folder = write_silhouette_points(tmp_path / "p", count=60, seed=3)
    ds = client.upload("points-gold", make_zip(folder, tmp_path / "p.zip"), labels="points", csv="points.csv").json()
    clothes = write_sample("fashion-mnist", tmp_path / "f", per_class=6, size=32, classes=["bag", "dress"])
    other = client.upload("clothes-gold", make_zip(clothes, tmp_path / "f.zip")).json()
    bad = run(stack, client.key, "project", "set", "--gold", f"{other['id']}:7")
    assert bad.returncode == 2 and "no version 7" in bad.stderr
    pinned = run(stack, client.key, "project", "set", "--gold", other["id"])
    assert pinned.returncode == 0 and json.loads(pinned.stdout)["settings"]["gold"]["version"] == 1, pinned.stderr
    try:
        first = client.wait(client.submit(kind="fine_tune", dataset_id=ds["id"], size=32, **TINY)["id"])
        retrain = client.wait(client.submit(kind="retrain", dataset_id=ds["id"], freeze_epochs=0, epochs=1)["id"])
    finally:
        assert run(stack, client.key, "project", "set", "--no-gold").returncode == 0
    assert json.loads(run(stack, client.key, "project", "show").stdout)["settings"]["gold"] is None
    assert first["state"] == retrain["state"] == "succeeded", retrain["error"]
    skipped = retrain["result"]["decision"]["scores"]["gold"]["skipped"]
    assert skipped == "a classification gold set cannot score a points model"


def test_points_feedback_is_pixels(client: Client, tmp_path: Path) -> None:
    folder = write_silhouette_points(tmp_path / "p", count=90, seed=2)
    ds = client.upload("points", make_zip(folder, tmp_path / "p.zip"), labels="points", csv="points.csv").json()
    extra = write_silhouette_points(tmp_path / "extra", count=4, seed=11)
    images = sorted(p for p in extra.glob("**/*.png"))[:4]
    first = client.wait(client.submit(kind="fine_tune", dataset_id=ds["id"], size=32, **TINY)["id"])
    assert first["state"] == "succeeded", first["error"]

    # The cleaner on points: every item doubted by a model that never saw it, its answer a relabel in pixels.
    interp = client.wait(
        client.submit(kind="interpret", dataset_id=ds["id"], parent_job_id=first["id"], folds=2, cleaner_epochs=1)["id"]
    )
    assert interp["state"] == "succeeded", interp["error"]
    found = client.get(f"/jobs/{interp['id']}/suspects", params={"limit": 1000}).json()
    assert found["count"] == 90 and [s["loss"] for s in found["data"]] == sorted(
        (s["loss"] for s in found["data"]), reverse=True
    )
    top = found["data"][0]
    assert len(top["given"]["points"]) == len(top["suggested"]["points"]) == 2 and top["probability"] is None
    edit = {"item": top["item"], **top["suggested"]}
    cut = client.post(f"/datasets/{ds['id']}/versions", json={"relabel": [edit], "note": "cleaner"})
    assert cut.status_code == 201 and cut.json()["changes"]["relabelled"] == 1, cut.text

    decision = retrain_with_feedback(client, ds, first, images, [{"points": [[30, 30], [30, 10]]}] * len(images))
    assert decision["scores"]["champion"]["metric"] == "point_error"


def test_segmentation_feedback_is_a_mask(client: Client, tmp_path: Path) -> None:
    folder = write_silhouette_masks(tmp_path / "s", count=60, side=32, seed=4)
    ds = client.upload("scenes", make_zip(folder, tmp_path / "s.zip"), labels="masks", void="void").json()
    extra = write_silhouette_masks(tmp_path / "extra", count=4, side=32, seed=12)
    images = sorted((extra / "images").glob("*.png"))[:4]
    targets = []
    for image in images:
        mask = np.asarray(Image.open(extra / "masks" / image.name))
        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
        targets.append({"mask": base64.b64encode(buf.getvalue()).decode()})
    decision = around_the_loop(client, ds, 32, images, targets)
    assert decision["scores"]["champion"]["metric"] == "mean_iou"


def test_the_cleaner_suggests_masks_and_the_cli_applies_them(client: Client, stack: Stack, tmp_path: Path) -> None:
    """`fitcycle clean JOB --edits FILE` on a segmentation model, then `fitcycle datasets version --edits FILE`:
    the masks the out-of-fold models drew replace the most doubted items' masks."""
    from tests.platform.test_cli_remote import run

    folder = write_silhouette_masks(tmp_path / "s", count=40, side=32, seed=6)
    ds = client.upload("scenes-clean", make_zip(folder, tmp_path / "s.zip"), labels="masks", void="void").json()
    first = client.wait(client.submit(kind="fine_tune", dataset_id=ds["id"], size=32, **TINY)["id"])
    interp = client.wait(
        client.submit(kind="interpret", dataset_id=ds["id"], parent_job_id=first["id"], folds=2, cleaner_epochs=1)["id"]
    )
    assert interp["state"] == "succeeded", interp["error"]
    edits = tmp_path / "edits.json"
    shown = run(stack, client.key, "clean", interp["id"], "--limit", "3", "--edits", str(edits))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:4] == ["ITEM", "SPLIT", "GIVEN", "SUGGESTED"] and len(lines) == 4
    assert all("(a mask)" in line for line in lines[1:])
    relabel = json.loads(edits.read_text())["relabel"]
    assert 1 <= len(relabel) <= 3 and all(set(r) == {"item", "mask"} for r in relabel)
    cut = run(stack, client.key, "datasets", "version", ds["id"], "--edits", str(edits))
    assert cut.returncode == 0 and f'"relabelled": {len(relabel)}' in cut.stdout, cut.stderr
