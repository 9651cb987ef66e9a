"""Services refuse to start on a database that is not at the migrations' head; `fitcycle db upgrade` fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.config import Settings
from core.db.session import DatabaseNotMigrated, current_revision, head_revision, make_engine, upgrade


def test_api_refuses_an_unmigrated_database_until_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    settings = Settings(data_dir=tmp_path, database_url=url)
    with pytest.raises(DatabaseNotMigrated, match="fitcycle db upgrade"), TestClient(create_app(settings)):
        pass
    upgrade(url)
    assert current_revision(make_engine(url)) == head_revision()
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/health").json()["checks"]["database"] == "ok"
        assert client.get("/api/v1/jobs").status_code == 401
