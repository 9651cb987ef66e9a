"""Web UI sessions over HTTP (the app in process, on SQLite): signing in again ends the session it replaces,
expired sessions are purged, /sessions lists the key's sessions and signs it out everywhere (with the form's
CSRF token only), and a key keeps a bounded number of sessions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from core.config import Settings
from core.db import repos
from core.db.models import UiSessionRow, utcnow
from core.db.repos.keys import MAX_UI_SESSIONS_PER_KEY, hash_key
from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade
from tests.platform.services import postgres_database

SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


class App:
    def __init__(self, client: TestClient, url: str) -> None:
        self.client, self.sessions = client, make_sessionmaker(make_engine(url))
        with session_scope(self.sessions) as s:
            project = repos.get_or_create_project(s, "sessions")
            self.key, self.record = repos.create_api_key(s, project.id, name="laptop")
            self.other_key, self.other = repos.create_api_key(s, project.id, name="other")

    def browser(self) -> TestClient:
        """Another browser: its own cookie jar, the same app."""
        return TestClient(self.client.app, follow_redirects=False)

    def rows(self, key_id: str) -> int:
        with session_scope(self.sessions) as s:
            return int(s.scalar(select(func.count()).where(UiSessionRow.key_id == key_id)) or 0)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    settings = Settings(data_dir=tmp_path, database_url=url, loop_interval_seconds=0)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield App(client, url)


def csrf_of(browser: TestClient, path: str = "/signin") -> str:
    page = browser.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert found is not None
    return found.group(1)


def sign_in(browser: TestClient, key: str) -> str:
    res = browser.post("/signin", data={"key": key, "csrf": csrf_of(browser)}, headers=SAME_SITE)
    assert res.status_code == 303, res.text
    token = browser.cookies.get("fitcycle_session")
    assert token
    return token


def works(app: App, token: str) -> bool:
    """Whether the REST API takes this session token (from a browser that holds nothing else)."""
    fresh = app.browser()
    fresh.cookies.set("fitcycle_session", token)
    return fresh.get("/api/v1/datasets").status_code == 200


def test_signing_in_again_ends_the_session_it_replaces(app: App) -> None:
    browser = app.browser()
    first = sign_in(browser, app.key)
    assert works(app, first) and app.rows(app.record.id) == 1
    second = sign_in(browser, app.key)
    assert second != first
    assert not works(app, first) and works(app, second)
    assert app.rows(app.record.id) == 1  # the old row is gone, not just orphaned
    third = sign_in(browser, app.other_key)  # with another key, the old session still ends
    assert not works(app, second) and works(app, third)
    assert (app.rows(app.record.id), app.rows(app.other.id)) == (0, 1)


def test_a_sign_in_purges_expired_sessions(app: App) -> None:
    with session_scope(app.sessions) as s:
        past = utcnow() - timedelta(minutes=1)
        s.add_all(
            [UiSessionRow(token_hash=hash_key(f"fs_old{i}"), key_id=app.other.id, expires_at=past) for i in range(3)]
        )
    assert app.rows(app.other.id) == 3
    sign_in(app.browser(), app.key)
    assert app.rows(app.other.id) == 0 and app.rows(app.record.id) == 1


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_key_keeps_a_bounded_number_of_sessions(tmp_path: Path, backend: str) -> None:
    """The statements themselves, on both databases: the cap, the purge, the listing, the end of them all."""
    with postgres_database() as pg:
        url = f"sqlite:///{tmp_path / 'db.sqlite'}" if backend == "sqlite" else pg
        upgrade(url)
        engine = make_engine(url)
        with session_scope(make_sessionmaker(engine)) as s:
            project = repos.get_or_create_project(s, "bounded")
            _, key = repos.create_api_key(s, project.id)
            _, other = repos.create_api_key(s, project.id)
            s.add(UiSessionRow(token_hash=hash_key("fs_old"), key_id=other.id, expires_at=utcnow() - timedelta(1)))
            s.flush()
            tokens = [repos.create_ui_session(s, key.id, 1) for _ in range(MAX_UI_SESSIONS_PER_KEY + 3)]
            kept = s.scalars(select(UiSessionRow.token_hash).where(UiSessionRow.key_id == key.id)).all()
            assert len(kept) == MAX_UI_SESSIONS_PER_KEY
            assert hash_key(tokens[-1]) in kept and hash_key(tokens[0]) not in kept  # the oldest ended
            assert s.get(UiSessionRow, hash_key("fs_old")) is None  # purged by the sign-ins
            listed = repos.list_ui_sessions(s, key.id, tokens[-1])
            assert [x.current for x in listed] == [True] + [False] * (MAX_UI_SESSIONS_PER_KEY - 1)  # newest first
            assert repos.end_ui_sessions_of_key(s, key.id) == MAX_UI_SESSIONS_PER_KEY
            assert repos.list_ui_sessions(s, key.id) == []
        engine.dispose()


def test_the_sessions_page_lists_them_and_signs_out_everywhere(app: App) -> None:
    laptop, phone, elsewhere = app.browser(), app.browser(), app.browser()
    mine, theirs = sign_in(laptop, app.key), sign_in(phone, app.key)
    unrelated = sign_in(elsewhere, app.other_key)

    assert laptop.get("/sessions").status_code == 200
    page = laptop.get("/sessions").text
    assert page.count('aria-current="true"') == 1
    assert page.count("this browser") == 1 and page.count("another browser") == 1  # the other key's is not listed
    assert 'href="/sessions"' in laptop.get("/datasets").text  # linked from every page's navigation
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None

    # Refused without the form's token, and from another site: nothing ends.
    assert laptop.post("/sessions/signout-everywhere", data={"csrf": "x" * 40}, headers=SAME_SITE).status_code == 403
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert laptop.post("/sessions/signout-everywhere", data={"csrf": token.group(1)}, headers=cross).status_code == 403
    assert works(app, mine) and works(app, theirs)

    res = laptop.post("/sessions/signout-everywhere", data={"csrf": token.group(1)}, headers=SAME_SITE)
    assert res.status_code == 303 and res.headers["location"] == "/signin"
    assert not works(app, mine) and not works(app, theirs) and works(app, unrelated)
    assert app.rows(app.record.id) == 0
    assert laptop.get("/sessions").headers["location"] == "/signin?next=/sessions"  # the page needs a sign-in
