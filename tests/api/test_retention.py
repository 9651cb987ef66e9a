"""A project's retention (input_retention_days) deletes its old predictions with their kept inputs, and never one
whose correction still waits for a dataset version; other projects and recent predictions are untouched (the
fleet loop's retention step, run in process on SQLite with a local store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from api.main import create_app
from api.services.prediction_log import apply_retention
from core.config import Settings
from core.db import repos
from core.db.models import FeedbackRow, PredictionRow
from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade


def test_retention_keeps_waiting_corrections_and_other_projects(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    old, new = datetime.now(UTC) - timedelta(days=10), datetime.now(UTC) - timedelta(hours=1)
    with session_scope(sessions) as s:
        kept = repos.get_or_create_project(s, "kept")
        brief = repos.get_or_create_project(s, "brief")
        key, _ = repos.create_api_key(s, brief.id, admin=True)
        repos.update_project_settings(s, brief.id, {"input_retention_days": 7})
        rows = [
            ("old", brief.id, old),  # past retention: goes, with its input
            ("old-used", brief.id, old),  # its correction is in a version already: goes
            ("old-waiting", brief.id, old),  # its correction waits for a version: stays
            ("recent", brief.id, new),
            ("other", kept.id, old),  # no retention in that project
        ]
        s.execute(
            insert(PredictionRow),
            [
                {"id": i, "project_id": p, "model_id": "m", "source": "file", "answer": {}, "created_at": at}
                | {"input_key": f"projects/{p}/predictions/{i}.png", "stored_bytes": 3}
                for i, p, at in rows
            ],
        )
        s.execute(
            insert(FeedbackRow),
            [
                {"id": "f1", "project_id": brief.id, "prediction_id": "old-used", "target": {}, "key_id": "k"}
                | {"used_in": "v2"},
                {"id": "f2", "project_id": brief.id, "prediction_id": "old-waiting", "target": {}, "key_id": "k"},
            ],
        )
    settings = Settings(data_dir=tmp_path, database_url=url, loop_interval_seconds=0, webhook_poll_seconds=0)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as api:
        state = api.app.state.fitcycle  # type: ignore[attr-defined]
        for i, p, _ in rows:
            state.store.put_bytes(f"projects/{p}/predictions/{i}.png", b"png", "image/png")
        assert apply_retention(state) == 2
        with session_scope(sessions) as s:
            left = set(s.scalars(select(PredictionRow.id)))
            assert left == {"old-waiting", "recent", "other"}
            assert set(s.scalars(select(FeedbackRow.id))) == {"f2"}
            assert repos.stored_bytes(s, brief.id) == 6
        assert not state.store.exists(f"projects/{brief.id}/predictions/old.png")
        assert state.store.exists(f"projects/{brief.id}/predictions/old-waiting.png")
        assert state.store.exists(f"projects/{kept.id}/predictions/other.png")
        assert apply_retention(state) == 0  # nothing more to do
        shown = api.get("/api/v1/project").json()["settings"]
        assert shown["input_retention_days"] == 7
        assert api.patch("/api/v1/project", json={"input_retention_days": 0}).status_code == 422
