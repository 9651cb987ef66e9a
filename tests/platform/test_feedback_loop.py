"""The feedback loop on the real stack: a model joins its name's registry as champion; predictions by name are
logged with their uncertainty; feedback (checked, idempotent) becomes a new dataset version that keeps every
old item's split; a retrain is scored against the champion on the same validation items and the gate decides;
a scrambled retrain is refused; promotion by hand and rollback are recorded; a new class from feedback gets
its own row in the retrained head."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.datasets.samples import write_sample
from tests.platform.services import Client
from tests.platform.stack import Stack, make_zip

CLASSES = ["trouser", "bag", "sneaker", "dress"]


def train(c: Client, dataset_id: str, **spec: Any) -> dict[str, Any]:
    base = {"arch": "resnet18", "pretrained": "none", "size": 32, "bs": 16, "freeze_epochs": 0, "epochs": 3}
    job = c.wait(c.submit(dataset_id=dataset_id, **(base | spec))["id"])
    assert job["state"] == "succeeded", job["error"]
    return job


def predict(c: Client, name: str, image: Path) -> dict[str, Any]:
    res = c.post(f"/registry/{name}/predict", files={"file": (image.name, image.read_bytes())})
    assert res.status_code == 200, res.text
    return dict(res.json())


@pytest.fixture(scope="module")
def loop(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Project 'loop': fashion v1 (4 classes x 40 at 32 px), its first model, and 24 new images to predict."""
    tmp = tmp_path_factory.mktemp("loop")
    c, _ = stack.new_project("loop")
    folder = write_sample("fashion-mnist", tmp / "v1", per_class=40, size=32, classes=CLASSES)
    res = c.upload("fashion", make_zip(folder, tmp / "v1.zip"))
    assert res.status_code == 201, res.text
    ds = res.json()
    job = train(c, ds["id"], kind="fine_tune")
    fresh = write_sample("fashion-mnist", tmp / "new", per_class=46, size=32, classes=CLASSES)
    new = [p for cls in CLASSES for p in sorted((fresh / cls).glob("*.png"))[40:46]]  # not in v1
    return {"c": c, "ds": ds, "job": job, "new": new, "tmp": tmp}


def test_predictions_feedback_versions_retrain_and_the_gate(loop: dict[str, Any], step: Callable[[str], None]) -> None:
    c, ds, job = loop["c"], loop["ds"], loop["job"]
    registry = c.get("/registry/fashion").json()
    assert registry["champion_id"] == job["model_id"] and registry["challenger_id"] is None
    assert [(m["version"], m["name"]) for m in registry["models"]] == [(1, "fashion")]
    assert job["result"]["name"] == "fashion" and job["result"]["version"] == 1

    step("predict by name")
    # Predict by name: every answer is logged, with its id and uncertainty; the queue orders by it.
    answers = {p: predict(c, "fashion", p) for p in loop["new"]}
    assert all(a["prediction_id"] for a in answers.values())
    queue = c.get("/predictions", params={"name": "fashion", "order": "uncertainty", "limit": 100}).json()["data"]
    assert len(queue) == len(answers) and all(p["has_input"] and p["source"] == "name" for p in queue)
    assert [p["uncertainty"] for p in queue] == sorted((p["uncertainty"] for p in queue), reverse=True)
    top = queue[0]["answer"]["predictions"]
    assert queue[0]["uncertainty"] == pytest.approx(1 - (top[0][1] - top[1][1]), abs=1e-6)

    step("feedback")
    # Feedback: checked like an upload's target, stored once per Idempotency-Key.
    first_path, first_answer = next(iter(answers.items()))
    first = first_answer["prediction_id"]
    bad = c.post(f"/predictions/{first}/feedback", json={"points": [[1, 2]]})
    assert bad.status_code == 422 and "label" in bad.json()["detail"]
    two = c.post(f"/predictions/{first}/feedback", json={"label": "bag", "correct": True})
    assert two.status_code == 422 and "exactly one" in two.json()["detail"]
    assert c.post("/predictions/nope/feedback", json={"label": "bag"}).status_code == 404
    step("label typos and taking feedback back")
    # A label outside the classes is taken for a typo unless it says it is new; unused feedback can be taken back.
    typo = c.post(f"/predictions/{first}/feedback", json={"label": "bagg"})
    assert typo.status_code == 422 and typo.json()["title"] == "Unknown class", typo.text
    assert "'bagg' is not one of the classes" in typo.json()["detail"] and "new_class" in typo.json()["detail"]
    meant = c.post(f"/predictions/{first}/feedback", json={"label": "bagg", "new_class": True})
    assert meant.status_code == 201, meant.text
    assert c.http.delete(f"/feedback/{meant.json()['id']}").status_code == 204
    assert c.http.delete(f"/feedback/{meant.json()['id']}").status_code == 404
    for path, answer in answers.items():
        headers = {"Idempotency-Key": f"fb-{answer['prediction_id']}"}
        res = c.post(
            f"/predictions/{answer['prediction_id']}/feedback", json={"label": path.parent.name}, headers=headers
        )
        assert res.status_code == 201, res.text
    again = c.post(
        f"/predictions/{first}/feedback", json={"label": "dress"}, headers={"Idempotency-Key": f"fb-{first}"}
    )
    assert again.status_code == 200 and again.json()["target"] == {"label": first_path.parent.name}  # the stored one
    assert len(c.get("/feedback", params={"name": "fashion"}).json()["data"]) == len(answers)

    step("version with the feedback")
    # A version with the feedback: old items keep their split, the 24 new ones are added.
    v2 = c.post(f"/datasets/{ds['id']}/versions", json={"add_feedback": "all", "note": "24 corrected predictions"})
    assert v2.status_code == 201, v2.text
    v2 = v2.json()
    assert (v2["version"], v2["parent_version"], v2["split"]) == (2, 1, "pinned")
    assert v2["changes"]["added"] == v2["changes"]["feedback"] == len(answers) and v2["n_items"] == 160 + len(answers)
    used = c.get("/feedback", params={"name": "fashion"}).json()["data"][0]
    assert c.http.delete(f"/feedback/{used['id']}").status_code == 409  # part of v2 now
    nothing = c.post(f"/datasets/{ds['id']}/versions", json={"add_feedback": "all"})
    assert nothing.status_code == 422 and "nothing to change" in nothing.json()["detail"]  # all feedback is used
    old = {
        i["key"]: i["valid"]
        for i in c.get(f"/datasets/{ds['id']}/items", params={"version": 1, "limit": 1000}).json()["data"]
    }
    new = {
        i["key"]: i["valid"]
        for i in c.get(f"/datasets/{ds['id']}/items", params={"version": 2, "limit": 1000}).json()["data"]
    }
    job_split = c.get(f"/jobs/{job['id']}/artifacts/metrics.json").json()["counts"]
    assert sum(old.values()) == sum(v["valid"] for v in job_split.values())  # what v1's job validated on
    assert all(new[k] == v for k, v in old.items() if k in new)
    diff = c.get(f"/datasets/{ds['id']}/versions/2/diff").json()
    assert diff["counts"]["added"] == len(answers) and diff["against"] == 1 and not diff["removed"]

    step("retrain and promote")
    # Retrain: scored against the champion on v2's validation items; a permissive policy promotes it. Its defaults
    # follow the course's rule: the champion's last stage (3 epochs at 2e-3, unfrozen) x1.5, 2 epochs more.
    assert (
        c.http.put("/registry/fashion/policy", json={"min_improvement": -1.0, "max_class_drop": 1.0}).status_code == 200
    )
    retrain = c.wait(c.submit(kind="retrain", dataset_id=ds["id"])["id"])
    assert retrain["state"] == "succeeded", retrain["error"]
    spec = retrain["spec"]
    assert spec["from_model_id"] == job["model_id"] and (spec["freeze_epochs"], spec["epochs"]) == (0, 5)
    assert spec["lr"] == [pytest.approx(3e-3), pytest.approx(3e-3)] and "x1.5" in spec["retrain_defaults"]["from"]
    decision = retrain["result"]["decision"]
    assert decision["action"] == "promoted" and decision["scores"]["champion"]["metric"] == "accuracy"
    n_valid = sum(new.values())
    assert decision["scores"]["challenger"]["n_items"] == decision["scores"]["champion"]["n_items"] == n_valid
    assert c.get("/registry/fashion").json()["champion_id"] == retrain["model_id"]

    step("a worse retrain refused")
    # A retrain on scrambled training labels is refused by a gate that asks for an improvement; the champion keeps
    # answering. (min_improvement null: back to its default; min_feedback null: no retraining on its own.)
    assert (
        c.http.put("/registry/fashion/policy", json={"min_improvement": 0.01, "max_class_drop": 0.05}).status_code
        == 200
    )
    assert c.http.put("/registry/fashion/policy", json={"min_feedback": 5}).json()["retrains_on_feedback"]
    off = c.http.put("/registry/fashion/policy", json={"min_feedback": None}).json()
    assert not off["retrains_on_feedback"] and off["policy"]["min_feedback"] is None
    assert off["policy"]["min_improvement"] == 0.01
    rng = random.Random(3)
    scrambled = [{"item": k, "label": rng.choice(CLASSES)} for k, v in new.items() if not v]
    v3 = c.post(f"/datasets/{ds['id']}/versions", json={"relabel": scrambled, "note": "scrambled"})
    assert v3.status_code == 201 and v3.json()["changes"]["relabelled"] == len(scrambled)
    bad_job = c.wait(c.submit(kind="retrain", dataset_id=ds["id"], epochs=3, lr=3e-3)["id"])
    assert bad_job["state"] == "succeeded", bad_job["error"]
    refused = bad_job["result"]["decision"]
    assert refused["action"] == "rejected", refused
    registry = c.get("/registry/fashion").json()
    assert registry["champion_id"] == retrain["model_id"] and registry["challenger_id"] == bad_job["model_id"]
    answered = predict(c, "fashion", loop["new"][0])
    logged = c.get("/predictions", params={"name": "fashion", "order": "recent", "limit": 1}).json()["data"][0]
    assert logged["id"] == answered["prediction_id"] and logged["model_id"] == retrain["model_id"]

    step("promote and roll back by hand")
    # By hand: promote the refused one, then roll back; both recorded with who and why.
    res = c.post("/registry/fashion/promote", json={"model_id": bad_job["model_id"], "reason": "try it"})
    assert res.status_code == 200 and res.json()["champion_id"] == retrain["model_id"]
    res = c.post("/registry/fashion/promote", json={"model_id": retrain["model_id"], "reason": "roll back"})
    assert res.status_code == 200 and c.get("/registry/fashion").json()["champion_id"] == retrain["model_id"]
    decisions = c.get("/registry/fashion/decisions").json()["data"]
    assert [d["action"] for d in decisions] == ["promoted", "promoted", "rejected", "manual", "manual"]
    assert decisions[0]["reason"].startswith("the first model of the name")
    assert decisions[-1]["reason"] == "roll back" and decisions[-1]["actor"].startswith("key ")
    assert c.post("/registry/fashion/promote", json={"model_id": "nope"}).status_code == 422


def test_a_new_class_from_feedback_gets_its_own_row(loop: dict[str, Any], stack: Stack) -> None:
    c, ds = loop["c"], loop["ds"]
    shirts = write_sample("fashion-mnist", loop["tmp"] / "shirts", per_class=20, size=32, classes=["shirt"])
    for image in sorted((shirts / "shirt").glob("*.png")):
        answer = predict(c, "fashion", image)
        body = {"label": "shirt", "new_class": True}
        assert c.post(f"/predictions/{answer['prediction_id']}/feedback", json=body).status_code == 201
    version = c.post(f"/datasets/{ds['id']}/versions", json={"add_feedback": "all", "from_version": 2}).json()
    assert "shirt" in version["classes"] and version["changes"]["new_classes"] == ["shirt"]
    assert (
        c.http.put("/registry/fashion/policy", json={"min_improvement": -1.0, "max_class_drop": 1.0}).status_code == 200
    )
    champion = c.get("/registry/fashion").json()["champion_id"]
    one_epoch = {"freeze_epochs": 0, "epochs": 1, "lr": 1e-3}
    job = c.wait(c.submit(kind="retrain", dataset_id=ds["id"], **one_epoch)["id"])
    assert job["state"] == "succeeded", job["error"]
    model = c.get(f"/models/{job['model_id']}").json()
    assert model["classes"] == sorted([*CLASSES, "shirt"]) and model["version"] == 4
    answer = predict(c, "fashion", sorted((shirts / "shirt").glob("*.png"))[0])
    assert "shirt" in dict(answer["predictions"])  # the champion answers with the new class among its own

    # The head's old rows are worth keeping: after the same one epoch, the retrain knows the old classes
    # better than the champion's body under a fresh 5-class head (same data, version, validation items).
    fresh = c.wait(
        c.submit(kind="fine_tune", dataset_id=ds["id"], pretrained=champion, name="fresh-head", **one_epoch)["id"]
    )
    assert fresh["state"] == "succeeded", fresh["error"]

    def old_class_recall(model_job: dict[str, Any]) -> float:
        seen = c.wait(c.submit(kind="interpret", dataset_id=ds["id"], parent_job_id=model_job["id"], folds=0)["id"])
        assert seen["state"] == "succeeded", seen["error"]
        return sum(seen["result"]["per_class"][k]["recall"] for k in CLASSES) / len(CLASSES)

    kept, started = old_class_recall(job), old_class_recall(fresh)
    print(f"new class: old classes' mean recall after one epoch: kept rows {kept:.3f}, fresh head {started:.3f}")
    assert kept > started


def test_the_cli_walks_the_loop(loop: dict[str, Any], stack: Stack) -> None:
    """registry list/show/predict, predictions list, feedback send, datasets version/versions, as a user types them."""
    from tests.platform.test_cli_remote import run

    c, ds, key = loop["c"], loop["ds"], loop["c"].key
    listing = run(stack, key, "registry", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "VERSIONS", "CHAMPION", "CHALLENGER"] and listing[1].startswith("fashion")
    champion = c.get("/registry/fashion").json()["champion_id"]
    image = loop["new"][1]
    said = run(stack, key, "registry", "predict", "fashion", str(image))
    assert said.returncode == 0, said.stderr
    line = json.loads(said.stdout)
    assert line["path"] == str(image) and len(line["predictions"]) <= 5 and line["prediction_id"]
    queue = run(stack, key, "predictions", "list", "--name", "fashion", "--unlabelled").stdout.splitlines()
    assert queue[0].split()[:3] == ["PREDICTION", "UNCERTAINTY", "ANSWER"]
    assert any(row.startswith(line["prediction_id"]) for row in queue[1:])  # no feedback on it yet
    sent = run(stack, key, "feedback", "send", line["prediction_id"], "--correct")
    assert sent.returncode == 0 and '"label"' in sent.stdout, sent.stderr
    bad = run(stack, key, "feedback", "send", line["prediction_id"], "--points", "[[1, 2]]")
    assert bad.returncode == 2 and "422" in bad.stderr and "label" in bad.stderr
    cut = run(stack, key, "datasets", "version", ds["id"], "--add-feedback", "all", "--note", "from the CLI")
    assert cut.returncode == 0 and '"added": 1' in cut.stdout, cut.stderr
    versions = run(stack, key, "datasets", "versions", ds["id"]).stdout.splitlines()
    assert versions[0].split() == ["VERSION", "FROM", "ITEMS", "CLASSES", "NOTE"] and "from the CLI" in versions[-1]
    shown = json.loads(run(stack, key, "registry", "show", "fashion").stdout)
    assert shown["champion_id"] == champion and len(shown["models"]) == len({m["id"] for m in shown["models"]})
