"""The fleet's weights store over REST (the app in process: SQLite, a local store): an admin key uploads fastai's
WikiText-103 files and lists them; a name keeps its first file (the same file again is a no-op, another one a 409,
from any project); a pickle with code, a random resnet under torchvision's name or its own, and a file over the cap
are refused with a problem that echoes nothing of the file; a member key cannot upload; GET /architectures and a
job's submit see what the store holds."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from fastapi.testclient import TestClient

from api.main import create_app
from core.config import Settings
from core.db import repos
from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade
from core.jobs.fleet_weights import WeightsRecord, store_weights
from core.storage.layout import fleet_weights_file
from tests.security.attacks import good_members, write_zip
from tests.weights_fixtures import write_itos, write_lstm_fwd

PREFIX = "/api/v1"
CAP = 50 * 1024**2  # above a resnet18 (45 MB)


@dataclass
class Fleet:
    admin: TestClient  # project A
    member: TestClient  # project A
    other: TestClient  # project B's admin
    files: Path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("weights")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    upgrade(url)
    with session_scope(make_sessionmaker(make_engine(url))) as s:
        a = repos.get_or_create_project(s, "a")
        admin, _ = repos.create_api_key(s, a.id, admin=True)
        member, _ = repos.create_api_key(s, a.id)
        b = repos.get_or_create_project(s, "b")
        other, _ = repos.create_api_key(s, b.id, admin=True)
    settings = Settings(
        data_dir=tmp,
        database_url=url,
        loop_interval_seconds=0,
        max_weights_bytes=CAP,
        fleet_weights_projects=["a", "b"],
    )
    app = create_app(settings)
    base = f"http://testserver{PREFIX}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TORCH_HOME", str(tmp / "torch"))  # no ImageNet file on this server: only the store's count
        with TestClient(app, base_url=base, headers={"Authorization": f"Bearer {admin}"}) as api:
            yield Fleet(
                api,
                TestClient(app, base_url=base, headers={"Authorization": f"Bearer {member}"}),
                TestClient(app, base_url=base, headers={"Authorization": f"Bearer {other}"}),
                tmp / "files",
            )


def post(client: TestClient, path: Path, name: str | None = None) -> Any:
    with path.open("rb") as f:
        return client.post("/weights", files={"file": (name or path.name, f)})


def problem(res: Any, status: int, *needles: str) -> str:
    assert res.status_code == status, res.text
    assert res.headers["content-type"] == "application/problem+json"
    detail: str = res.json()["detail"]
    assert all(n in detail for n in needles), detail
    return detail


def test_fastais_files_are_stored_once_for_the_whole_fleet(fleet: Fleet) -> None:
    fleet.files.mkdir(exist_ok=True)
    write_lstm_fwd(fleet.files / "lstm_fwd.pth")
    write_itos(fleet.files / "itos_wt103.pkl")
    assert fleet.admin.get("/architectures").json()["wt103_weights"] is False

    stored = post(fleet.admin, fleet.files / "lstm_fwd.pth")
    assert stored.status_code == 201, stored.text
    assert stored.json()["kind"] == "wt103_weights" and stored.json()["uploaded_by_this_project"]
    again = post(fleet.admin, fleet.files / "lstm_fwd.pth")  # the same file: nothing changes
    assert again.status_code == 200 and again.json() == stored.json()
    theirs = post(fleet.other, fleet.files / "lstm_fwd.pth")  # another project, the same file
    assert theirs.status_code == 200 and not theirs.json()["uploaded_by_this_project"]

    write_lstm_fwd(fleet.files / "lstm_fwd2.pth", seed=1)
    refused = post(fleet.other, fleet.files / "lstm_fwd2.pth", "lstm_fwd.pth")  # another file under that name
    problem(refused, 409, "already holds a different lstm_fwd.pth", stored.json()["sha256"][:12])

    (fleet.files / "bad" / "itos_wt103.pkl").parent.mkdir()
    (fleet.files / "bad" / "itos_wt103.pkl").write_bytes(pickle.dumps(["secret-word-xyz", os.system]))
    detail = problem(post(fleet.other, fleet.files / "bad" / "itos_wt103.pkl"), 422, "opcode STACK_GLOBAL")
    assert "never unpickled" in detail and "secret-word-xyz" not in detail
    assert post(fleet.admin, fleet.files / "itos_wt103.pkl").status_code == 201
    listed = fleet.member.get("/weights").json()  # any key lists
    assert [(w["name"], w["kind"]) for w in listed["data"]] == [
        ("itos_wt103.pkl", "wt103_vocab"),
        ("lstm_fwd.pth", "wt103_weights"),
    ]
    assert listed["data"][1]["sha256"] == stored.json()["sha256"] and listed["count"] == 2
    assert fleet.admin.get("/architectures").json()["wt103_weights"] is True


def test_a_random_resnet_is_refused_under_torchvisions_name_and_its_own(fleet: Fleet, tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    problem(post(fleet.admin, path, "resnet18-f37072fd.pth"), 422, "torchvision's begins f37072fd")
    own = f"resnet18-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth"
    res = post(fleet.admin, path, own)
    problem(res, 422, "not a file the weights store accepts", "resnet18-f37072fd.pth")
    assert res.json()["field"] == "file" and "resnet34-b627a593.pth" in res.json()["options"]
    assert not [w for w in fleet.admin.get("/weights").json()["data"] if w["name"].startswith("resnet18")]


def test_only_an_admin_key_uploads_and_the_size_is_capped(fleet: Fleet, tmp_path: Path) -> None:
    write_itos(tmp_path / "itos_wt103.pkl")
    problem(post(fleet.member, tmp_path / "itos_wt103.pkl"), 403, "admin")
    (tmp_path / "big").write_bytes(b"\0" * (CAP + 1))
    problem(post(fleet.admin, tmp_path / "big", "lstm_fwd.pth"), 413, "FITCYCLE_MAX_WEIGHTS_BYTES")


def test_architectures_and_jobs_see_imagenet_weights_in_the_store(fleet: Fleet, tmp_path: Path) -> None:
    def imagenet() -> dict[str, bool]:
        return {a["name"]: a["imagenet_weights"] for a in fleet.admin.get("/architectures").json()["data"]}

    assert imagenet()["resnet34"] is False and imagenet()["efficientnet_lite0"] is True
    # An upload that passed its checks, as the store keeps it (the real file cannot be downloaded here).
    store = fleet.admin.app.state.fitcycle.store  # type: ignore[attr-defined]
    (tmp_path / "w").write_bytes(b"weights")
    name = "resnet34-b627a593.pth"
    record = WeightsRecord(
        name,
        "imagenet",
        "resnet34",
        "b627a593" + "0" * 56,
        7,
        fleet_weights_file(name),
        "b627a593" + "0" * 56,
        7,
        "2025-01-01T00:00:00+00:00",
        "p",
        "k",
    )
    store_weights(store, record, tmp_path / "w")
    assert imagenet()["resnet34"] is True and imagenet()["resnet50"] is False

    with write_zip(tmp_path / "pets.zip", good_members(6)).open("rb") as f:
        ds = fleet.admin.post("/datasets", data={"name": "pets"}, files={"archive": ("pets.zip", f)}).json()
    refused = fleet.admin.post("/jobs", json={"kind": "fine_tune", "dataset_id": ds["id"], "arch": "resnet50"})
    problem(refused, 422, "no ImageNet weights for 'resnet50'", "fitcycle weights upload")
    assert "resnet34" in refused.json()["options"]
    job = fleet.admin.post("/jobs", json={"kind": "fine_tune", "dataset_id": ds["id"], "arch": "resnet34"})
    assert job.status_code == 202, job.text


def test_the_cli_uploads_and_lists(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import remote
    from cli.main import main

    monkeypatch.setattr(remote, "_client", lambda args: contextlib.nullcontext(fleet.admin))  # this app, in process
    write_itos(tmp_path / "itos_wt103.pkl")  # the same vocabulary the first test stored (or stores now)
    assert main(["weights", "upload", str(tmp_path / "itos_wt103.pkl"), "--key", "k"]) == 0
    assert "itos_wt103.pkl (wt103_vocab" in capsys.readouterr().out
    assert main(["weights", "list", "--key", "k"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "KIND", "ARCH", "SIZE", "SHA256", "UPLOADED"]
    assert "itos_wt103.pkl" in out
    (tmp_path / "evil.pth").write_bytes(b"x")
    assert main(["weights", "upload", str(tmp_path / "evil.pth"), "--key", "k"]) == 2
    assert "422 Weights refused: file: 'evil.pth' is not a file" in capsys.readouterr().err


def test_only_the_projects_an_operator_names_add_to_the_fleets_weights(fleet: Fleet) -> None:
    settings = fleet.admin.app.state.fitcycle.settings  # type: ignore[attr-defined]
    named = list(settings.fleet_weights_projects)
    settings.fleet_weights_projects = ["a"]
    try:
        problem(post(fleet.other, fleet.files / "lstm_fwd.pth"), 403, "FITCYCLE_FLEET_WEIGHTS_PROJECTS")
    finally:
        settings.fleet_weights_projects = named
