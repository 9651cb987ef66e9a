"""Lookups kept a moment (api/lookup_cache.py): a kept value lasts its time and no longer, a change it depends on
drops it at once, and a read that a change overtook is not kept. Embedded (one API process on SQLite, no Redis),
a revocation or a project's new settings are seen by the very next request. (Two processes of a fleet:
tests/platform/test_replicas.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fastapi.testclient import TestClient

from api.lookup_cache import TimedCache
from api.main import create_app
from core.config import Settings
from core.db import repos
from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade


def test_a_kept_value_lasts_its_time_and_goes_with_what_it_depends_on() -> None:
    cache: TimedCache[str, str] = TimedCache(ttl=0.2)
    cache.put("k1", "caller 1", [("key", "1"), ("project", "p")], cache.generation())
    cache.put("k2", "caller 2", [("key", "2"), ("project", "q")], cache.generation())
    assert cache.get("k1") == "caller 1" and cache.get("k2") == "caller 2"
    cache.drop([("key", "1")])
    assert cache.get("k1") is None and cache.get("k2") == "caller 2"
    time.sleep(0.25)
    assert cache.get("k2") is None  # its time is up


def test_a_read_overtaken_by_a_change_is_not_kept() -> None:
    cache: TimedCache[str, str] = TimedCache(ttl=5)
    since = cache.generation()  # a lookup starts reading the database...
    cache.drop([("key", "1")])  # ...the key is revoked meanwhile...
    cache.put("k1", "the caller as it was", [("key", "1")], since)  # ...so what it read is not kept
    assert cache.get("k1") is None
    cache.enable(False)  # not hearing changes (a fleet process not subscribed): nothing is kept
    cache.put("k1", "caller", [("key", "1")], cache.generation())
    assert cache.get("k1") is None
    cache.enable(True)
    cache.put("k1", "caller", [("key", "1")], cache.generation())
    assert cache.get("k1") == "caller"


def test_embedded_a_revocation_and_new_settings_reach_the_next_request(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    with session_scope(make_sessionmaker(engine)) as s:
        project = repos.get_or_create_project(s, "embedded")
        admin, _ = repos.create_api_key(s, project.id, admin=True)
        member, record = repos.create_api_key(s, project.id)
    engine.dispose()
    settings = Settings(data_dir=tmp_path, database_url=url, loop_interval_seconds=0, webhook_poll_seconds=0)
    assert settings.lookup_cache_seconds == 1.0
    with TestClient(create_app(settings), base_url="http://testserver/api/v1") as api:
        as_admin, as_member = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {member}"}
        assert api.get("/datasets", headers=as_member).status_code == 200  # kept from here on
        assert api.get("/project", headers=as_member).json()["settings"]["keep_inputs"] is True
        assert api.patch("/project", json={"keep_inputs": False}, headers=as_admin).status_code == 200
        assert api.get("/project", headers=as_member).json()["settings"]["keep_inputs"] is False
        assert api.delete(f"/keys/{record.id}", headers=as_admin).status_code == 200
        refused = api.get("/datasets", headers=as_member)
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_a_pubsub_message_is_trusted_with_nothing() -> None:
    from api.lookup_cache import parse_changes

    model = "0190a8f2-1c2d-7e3f-8a4b-5c6d7e8f9a0b"
    assert parse_changes(json.dumps([["model", model], ["session", "a" * 64]])) == [
        ("model", model),
        ("session", "a" * 64),
    ]
    for forged in (
        [["model", "../.."]],  # a folder to delete, were it taken as a model id
        [["model", "/var/lib/fitcycle"]],
        [["model", ""]],
        [["table", model]],
        [["model", model, "extra"]],
        {"model": model},
        "not json",
    ):
        assert parse_changes(forged if isinstance(forged, str) else json.dumps(forged)) is None, forged
    assert parse_changes(json.dumps([["model", model]] * 2000)) is None  # over 64 KiB: not even parsed
