"""Bad input over REST: each is a clear 4xx problem detail, and nothing stored is lost or left behind."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.platform.stack import ImageServer, Stack


def png_bytes(size: tuple[int, int] = (32, 32), value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, "PNG")
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
    return path


def good_members(n: int = 6) -> dict[str, bytes]:
    return {
        **{f"cats/{i}.png": png_bytes(value=40 + i) for i in range(n)},
        **{f"dogs/{i}.png": png_bytes(value=200 - i) for i in range(n)},
    }


@pytest.fixture(scope="module")
def stored_before(stack: Stack, fashion_zip: Path) -> tuple[dict, list[str]]:
    """A dataset that must survive every bad upload untouched, and the objects stored at that point."""
    res = stack.a.upload("keep-me", fashion_zip)
    assert res.status_code == 201, res.text
    return res.json(), stack.store().list(f"projects/{stack.project_a}/datasets/")


def assert_nothing_changed(stack: Stack, stored_before: tuple[dict, list[str]]) -> None:
    kept, keys = stored_before
    assert stack.store().list(f"projects/{stack.project_a}/datasets/") == keys
    again = stack.a.get(f"/datasets/{kept['id']}").json()
    assert again["version"] == kept["version"] and again["counts"] == kept["counts"]


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        (
            "zip-slip",
            lambda p: write_zip(p / "a.zip", {**good_members(), "../../evil.png": png_bytes()}),
            "escapes the dataset folder",
        ),
        (
            "absolute",
            lambda p: write_zip(p / "a.zip", {**good_members(), "/etc/evil.png": png_bytes()}),
            "absolute path",
        ),
        (
            "zip-symlink",
            lambda p: write_zip(p / "a.zip", good_members(), {"cats/link.png": "/etc/passwd"}),
            "symbolic link",
        ),
        (
            "zip-bomb",
            lambda p: write_zip(p / "a.zip", {**good_members(), "cats/zeros.csv": bytes(40 * 1024**2)}),
            "expands more than 200:1",
        ),
        (
            "over-the-extracted-cap",  # incompressible, so the ratio cap passes and the byte cap (30 MB) stops it
            lambda p: write_zip(p / "a.zip", {**good_members(), "cats/noise.csv": os.urandom(31 * 1024**2)}),
            "expands past",
        ),
        ("not-an-archive", lambda p: (p / "a.rar").write_bytes(b"Rar!") and p / "a.rar", "is not a .zip, .tar"),
        (
            "corrupt-zip",
            lambda p: (p / "a.zip").write_bytes(b"PK\x03\x04 nonsense") and p / "a.zip",
            "not a readable zip",
        ),
        ("one-class", lambda p: write_zip(p / "a.zip", {f"cats/{i}.png": png_bytes() for i in range(5)}), "at least 2"),
    ],
)
def test_bad_archives_are_refused_and_leave_nothing(
    stack: Stack, stored_before: tuple[dict, list[str]], tmp_path: Path, name: str, make: object, message: str
) -> None:
    archive = make(tmp_path)  # type: ignore[operator]
    res = stack.a.upload("keep-me", archive)
    assert 400 <= res.status_code < 500, res.text
    assert res.headers["content-type"] == "application/problem+json"
    assert message in res.json()["detail"]
    assert_nothing_changed(stack, stored_before)


def test_tar_links_are_refused(stack: Stack, stored_before: tuple[dict, list[str]], tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in good_members().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("cats/escape.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        tf.addfile(link)
    res = stack.a.upload("keep-me", path)
    assert res.status_code == 422 and "is a link" in res.json()["detail"]
    assert_nothing_changed(stack, stored_before)


def test_bad_images_are_reported_and_the_rest_kept(stack: Stack, tmp_path: Path) -> None:
    good = png_bytes()
    members = {
        **good_members(),
        "cats/truncated.png": good[: len(good) // 2],
        "dogs/bomb.png": png_bytes((9000, 9000), 0),
        "dogs/notes.exe": b"MZ",
    }
    res = stack.a.upload("mixed", write_zip(tmp_path / "mixed.zip", members))
    assert res.status_code == 201, res.text
    rejected = {r["key"]: r["reason"] for r in res.json()["rejected"]}
    assert "unreadable image" in rejected["cats/truncated.png"]
    assert "pixel limit" in rejected["dogs/bomb.png"]
    assert "not allowed" in rejected["dogs/notes.exe"]
    assert res.json()["n_items"] == 12


def test_csv_naming_missing_files(stack: Stack, tmp_path: Path) -> None:
    members = {f"img/{i}.png": png_bytes(value=20 * i) for i in range(8)}
    rows = "name,label\n" + "".join(f"img/{i}.png,{'a' if i % 2 else 'b'}\n" for i in range(8))
    members["labels.csv"] = (rows + "img/missing.png,a\n").encode()
    res = stack.a.upload("csv", write_zip(tmp_path / "c.zip", members), labels="csv", csv="labels.csv")
    assert res.status_code == 201, res.text
    assert res.json()["rejected"] == [{"key": "img/missing.png", "reason": "labels.csv row 10: file not found"}]
    res = stack.a.upload("csv", write_zip(tmp_path / "c.zip", members), labels="csv", csv="nope.csv")
    assert res.status_code == 422 and "csv: no file 'nope.csv' in the dataset" in res.json()["detail"]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"arch": "vgg99"}, "arch", "unknown architecture 'vgg99'"),
        ({"lr": -0.1}, "lr", "learning rate must be in (0, 10)"),
        ({"lr": [0.1, 0.001]}, "lr", "[low, high]"),
        ({"kind": "dance"}, "kind", "Input should be"),
        ({"bs": 0}, "bs", "greater than or equal to 1"),
        ({"transforms": {"max_spin": 3}}, "transforms", "unknown transform settings ['max_spin']"),
        ({"kind": "stage2"}, "parent_job_id", "continues from"),
        ({"lr": "auto"}, "lr", "a stage1 job takes one number or [low, high] or 'find'; got 'auto'"),
        ({"kind": "lr_find", "lr": 0.01}, "lr", "a lr_find job takes no lr (leave it out); got one number"),
        ({"kind": "fine_tune", "lr": [1e-4, 1e-2], "plan": [{"size": 32}]}, "lr", "not a range"),
        ({"pretrained": "nonexistent-model"}, "pretrained", "neither 'imagenet', 'none' nor the id of a model"),
    ],
)
def test_invalid_job_specs_are_422_with_the_field(
    stack: Stack, stored_before: tuple[dict, list[str]], change: dict, field: str, message: str
) -> None:
    spec = {"kind": "stage1", "dataset_id": stored_before[0]["id"], "arch": "resnet18", "pretrained": "none", **change}
    res = stack.a.post("/jobs", json=spec)
    assert res.status_code == 422, res.text
    assert field in res.text and message in res.json()["detail"]


@pytest.fixture(scope="module")
def trained(stack: Stack, stored_before: tuple[dict, list[str]]) -> dict:
    """A finished job of project A, with its model."""
    job = stack.a.submit(
        kind="fine_tune",
        dataset_id=stored_before[0]["id"],
        arch="resnet18",
        pretrained="none",
        size=32,
        bs=16,
        freeze_epochs=0,
        epochs=1,
        lr=5e-3,
    )
    done = stack.a.wait(job["id"])
    assert done["state"] == "succeeded", done["error"]
    return done


def test_each_kinds_rest_default_lr_is_the_registrys(
    stack: Stack, stored_before: tuple[dict, list[str]], trained: dict
) -> None:
    """A job that names no lr records its kind's default (core/jobs/kinds/; the CLI's and the README's are
    checked against the same declaration in tests/jobs/test_kinds.py). Each job is cancelled at once."""
    from core.jobs.kinds import KINDS

    listed = {k["name"]: k for k in stack.a.get("/job-kinds").json()["data"]}
    assert set(listed) == set(KINDS)
    base = {"dataset_id": stored_before[0]["id"], "size": 32, "bs": 16, "epochs": 1}
    for name, kind in KINDS.items():
        assert listed[name]["lr"] == kind.lr and set(listed[name]["lr_forms"]) == set(kind.lr_forms)
        if not kind.images:  # a text-only kind's default is checked on texts (tests/platform/test_text_rest.py)
            continue
        extra = {"parent_job_id": trained["id"]} if kind.parent else {"pretrained": "none", "arch": "resnet18"}
        if kind.defaults_from_champion:
            extra = {"from_model": trained["model_id"]}
        res = stack.a.post("/jobs", json={"kind": name, **base, **extra})
        if kind.internal:  # a dry run's probe: queued by the service for dry_run, never by name
            assert res.status_code == 422 and "dry_run" in res.json()["detail"], res.text
            continue
        assert res.status_code == 202, res.text
        job = res.json()
        stack.a.post(f"/jobs/{job['id']}/cancel")
        if kind.defaults_from_champion:  # over REST its rates come from the champion it starts from
            assert "lr" in job["spec"]["retrain_defaults"]["fields"]
        else:
            assert job["spec"].get("lr") == kind.lr, (name, job["spec"])


def test_a_key_sees_only_its_own_project(stack: Stack, stored_before: tuple[dict, list[str]], trained: dict) -> None:
    dataset, job, done = stored_before[0], trained, trained
    b = stack.b
    answered = stack.a.post(f"/models/{done['model_id']}/predict", files={"file": ("x.png", png_bytes())})
    assert answered.status_code == 200, answered.text
    prediction = answered.json()["prediction_id"]
    name = stack.a.get(f"/models/{done['model_id']}").json()["name"]
    assert stack.a.get(f"/predictions/{prediction}/heatmap").status_code in (200, 422)  # A's own: found
    for path in [
        f"/datasets/{dataset['id']}",
        f"/jobs/{job['id']}",
        f"/jobs/{job['id']}/metrics",
        f"/jobs/{job['id']}/artifacts",
        f"/jobs/{job['id']}/artifacts/metrics.json",
        f"/models/{done['model_id']}",
        f"/models/{done['model_id']}/bundle",
        f"/models/{done['model_id']}/drift",
        f"/registry/{name}/drift",
        f"/predictions/{prediction}/heatmap",
        f"/predictions/{prediction}/image",
    ]:
        res = b.get(path)
        assert res.status_code == 404, path
        assert "in this project" in res.json()["detail"]
    assert b.post("/jobs", json={"kind": "stage1", "dataset_id": dataset["id"]}).status_code == 404
    assert b.post(f"/models/{done['model_id']}/predict", files={"file": ("x.png", png_bytes())}).status_code == 404
    assert b.post(f"/jobs/{job['id']}/cancel").status_code == 404
    assert b.get("/datasets").json()["count"] == 0 and b.get("/jobs").json()["count"] == 0
    assert stack.a.get("/datasets", headers={"Authorization": "Bearer fc_not-a-key"}).status_code == 401


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "{server}/to-metadata",
    ],
)
def test_ssrf_urls_are_refused(stack: Stack, image_server: ImageServer, trained: dict, url: str) -> None:
    res = stack.a.post(f"/models/{trained['model_id']}/predict-url", json={"url": url.format(server=image_server.base)})
    assert res.status_code == 400, res.text
    assert res.json()["title"] in ("URL refused", "Bad URL")


def test_a_url_that_is_not_http_is_an_invalid_body(stack: Stack, trained: dict) -> None:
    """Like any other field of a body, a url of the wrong shape is a 422 that names it (never fetched)."""
    res = stack.a.post(f"/models/{trained['model_id']}/predict-url", json={"url": "file:///etc/passwd"})
    assert res.status_code == 422, res.text
    assert res.json()["errors"][0]["field"] == "url"
