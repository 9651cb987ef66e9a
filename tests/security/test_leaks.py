"""Answers and logs name no secret and no server file: a failed job's error is one line (the traceback is an
artifact), /health says which part is down without its error text, printed URLs hide their passwords."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from cli.platform import masked_url
from core.config import Settings
from core.db.session import upgrade
from tests.platform.stack import Stack
from tests.security.attacks import good_members, write_zip


def test_a_crashed_job_says_one_line_and_keeps_its_traceback_as_an_artifact(stack: Stack, tmp_path: Path) -> None:
    client, project_id = stack.new_project("zeta")
    ds = client.upload("vanishing", write_zip(tmp_path / "a.zip", good_members())).json()
    store = stack.store()  # the images disappear under the job (its manifest stays: the submit's split check reads it)
    for key in store.list(f"projects/{project_id}/datasets/"):
        if not key.endswith("manifest.json"):
            store.delete(key)
    job = client.submit(kind="stage1", dataset_id=ds["id"], arch="resnet18", pretrained="none", size=32, epochs=1)
    done = client.wait(job["id"])
    assert done["state"] == "failed"
    error = done["error"]
    assert "\n" not in error and "Traceback" not in error and "/" not in error and "projects" not in error, error
    assert "error.txt" in error
    names = [a["name"] for a in client.get(f"/jobs/{job['id']}/artifacts").json()["data"]]
    assert "error.txt" in names
    assert "Traceback" in client.get(f"/jobs/{job['id']}/artifacts/error.txt").text


def test_health_names_the_part_that_is_down_but_not_its_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    settings = Settings(
        data_dir=tmp_path, database_url=url, storage="s3", s3_endpoint="127.0.0.1:9", s3_secret_key="hunter2-secret"
    )
    with TestClient(create_app(settings)) as client:
        res = client.get("/api/v1/health")
    assert res.status_code == 503
    assert res.json()["checks"]["store"] == "unavailable (see the server log)"
    assert "127.0.0.1:9" not in res.text and "hunter2" not in res.text


def test_printed_urls_hide_passwords() -> None:
    assert masked_url("postgresql+psycopg://fit:s3cret@db:5432/fit") == "postgresql+psycopg://fit:***@db:5432/fit"
    assert masked_url("redis://:pw@redis:6379/0") == "redis://:***@redis:6379/0"
    assert masked_url("sqlite:////data/fitcycle.db") == "sqlite:////data/fitcycle.db"
