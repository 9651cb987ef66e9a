"""The same flow on the embedded default, through `fitcycle serve`: SQLite, a local object store and
Celery's filesystem broker under one data dir — no server installed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.platform.conftest import ImageServer
from tests.platform.services import Client, fitcycle, free_port, start, wait_for
from tests.platform.test_e2e_distributed import course_flow


@pytest.mark.slow
def test_fitcycle_serve_runs_the_course_flow(tmp_path: Path, fashion_zip64: Path, image_server: ImageServer) -> None:
    data_dir = tmp_path / "fitcycle"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCYCLE_")}
    env.update(
        PYTHONUNBUFFERED="1",
        FITCYCLE_REPORT_EVERY_N_BATCHES="1",
        FITCYCLE_URL_FETCH_ALLOW_HOSTS=json.dumps([image_server.base.removeprefix("http://")]),
    )
    key = fitcycle("keys", "create", "--project", "laptop", "--data-dir", str(data_dir), env=env).splitlines()[-1]
    port = free_port()
    serve = start("serve", ["serve", "--data-dir", str(data_dir), "--port", str(port)], env, tmp_path)
    try:
        client = Client(f"http://127.0.0.1:{port}/api/v1", key)
        wait_for(lambda: client.get("/health").status_code == 200, 90, "fitcycle serve to answer /health")
        health = client.get("/health").json()
        assert health["checks"] == {"database": "ok", "store": "ok", "broker": "ok"}
        stage2 = course_flow(client, fashion_zip64, image_server)
        # Everything lives under the one data dir.
        assert (data_dir / "fitcycle.db").is_file()
        assert any((data_dir / "objects").rglob("weights.safetensors"))
        assert (data_dir / "broker" / "queue").is_dir()
        assert stage2["state"] == "succeeded"
    except BaseException:
        print(serve.tail(8000))
        raise
    finally:
        serve.stop()
