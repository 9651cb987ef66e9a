"""The first hour of a new user, over REST on the distributed stack: defaults that work (or a 422 at submit,
never a job that fails for a reason known then), the architectures this server can train, the docs offline,
deleting what one made (objects gone from S3, refused while something depends on it), and content types."""

from __future__ import annotations

from pathlib import Path

from tests.platform.stack import Stack


def test_the_all_defaults_job_trains_and_missing_weights_are_a_422_at_submit(stack: Stack, fashion_zip64: Path) -> None:
    client, _ = stack.new_project("first-hour")
    ds = client.upload("fashion", fashion_zip64).json()
    archs = {a["name"]: a for a in client.get("/architectures").json()["data"]}
    assert archs["efficientnet_lite0"] == {
        "name": "efficientnet_lite0",
        "imagenet_weights": True,
        "default": True,
        "layer_groups": 3,
    }
    missing = [name for name, a in archs.items() if not a["imagenet_weights"]]
    for name in missing[:2]:
        res = client.post("/jobs", json={"kind": "fine_tune", "dataset_id": ds["id"], "arch": name})
        assert res.status_code == 422, res.text
        body = res.json()
        assert body["field"] == "pretrained" and "efficientnet_lite0" in body["options"]
        assert "--pretrained" not in body["detail"] and '"pretrained": "none"' in body["detail"]

    job = client.submit(kind="fine_tune", dataset_id=ds["id"])  # nothing else: every default
    assert job["spec"]["arch"] == "efficientnet_lite0" and job["spec"]["pretrained"] == "imagenet"
    done = client.wait(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["model_id"]


def test_docs_work_offline(stack: Stack) -> None:
    http = stack.a.http
    server = stack.a.base.removesuffix("/api/v1")
    home = http.get(f"{server}/", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"] == "/signin"  # the web UI, for a browser
    page = http.get(f"{server}/docs").text
    assert "cdn" not in page.lower() and "/docs-assets/swagger-ui-bundle.js" in page
    js = http.get(f"{server}/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert "cdn" not in http.get(f"{server}/redoc").text.lower()
    assert (
        http.get(f"{server}/openapi.json").json()["paths"] == http.get(f"{server}/api/v1/openapi.json").json()["paths"]
    )


def test_delete_removes_objects_and_refuses_while_something_depends(stack: Stack, fashion_zip: Path) -> None:
    client, project_id = stack.new_project("deleter")
    store = stack.store()
    ds = client.upload("fashion", fashion_zip).json()
    v2 = client.upload("fashion", fashion_zip).json()
    assert v2["version"] == 2
    job = client.wait(
        client.submit(
            kind="stage1",
            dataset_id=ds["id"],
            dataset_version=1,
            arch="resnet18",
            pretrained="none",
            size=32,
            bs=16,
            epochs=1,
        )["id"]
    )
    assert job["state"] == "succeeded", job["error"]
    types = {a["name"]: a["content_type"] for a in client.get(f"/jobs/{job['id']}/artifacts").json()["data"]}
    assert types["metrics.json"] == "application/json" and types["plots/losses.png"] == "image/png"
    assert types["export/weights.safetensors"] == "application/octet-stream"
    assert not any(name.startswith("checkpoints/") for name in types)  # dropped once the export was stored

    # The dataset and the job are in use: refused, with the reason, and nothing removed.
    res = client.http.delete(f"/datasets/{ds['id']}")
    assert res.status_code == 409 and job["id"] in res.json()["detail"]
    res = client.http.delete(f"/jobs/{job['id']}")
    assert res.status_code == 409 and job["model_id"] in res.json()["detail"]
    assert store.list(f"projects/{project_id}/jobs/{job['id']}/")

    # Version 2 has no job: it goes alone, files and all.
    res = client.http.delete(f"/datasets/{ds['id']}", params={"version": 2})
    assert res.status_code == 200 and res.json()["objects"] > 100, res.text
    assert client.get(f"/datasets/{ds['id']}").json()["versions"] == [1]
    assert not store.list(f"projects/{project_id}/datasets/{ds['id']}/v2/")

    # Model, then job, then dataset: each answer says what went, and S3 holds nothing of it afterwards.
    res = client.http.delete(f"/models/{job['model_id']}")
    assert res.status_code == 200 and res.json()["bytes"] > 0, res.text
    assert client.get(f"/models/{job['model_id']}").status_code == 404
    assert not store.list(f"projects/{project_id}/jobs/{job['id']}/attempts/{job['attempts']}/export/")
    assert client.http.delete(f"/jobs/{job['id']}").status_code == 200
    assert not store.list(f"projects/{project_id}/jobs/{job['id']}/")
    assert client.get(f"/jobs/{job['id']}").status_code == 404
    assert client.http.delete(f"/datasets/{ds['id']}").status_code == 200
    assert not store.list(f"projects/{project_id}/")
    assert client.get("/datasets").json()["count"] == 0
