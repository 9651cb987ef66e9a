"""GET /feedback comes in pages (limit and offset, as GET /jobs; count is the total, counted in SQL), the CLI
pages through it, and the playground's count reads a COUNT, not the history (the app in process, on SQLite)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from api.main import create_app
from cli.remote import _all_feedback
from core.config import Settings
from core.db import repos
from core.db.models import FeedbackRow, PredictionRow
from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade

N = 520  # more than one of the CLI's pages (500)


@dataclass
class Served:
    api: TestClient
    key: str
    token: str
    ids: list[str]  # every feedback id; the first 20 are on name "b" and used


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("feedback_pages")
    url = f"sqlite:///{tmp / 'db.sqlite'}"
    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    with session_scope(sessions) as s:
        project = repos.get_or_create_project(s, "pages")
        key, record = repos.create_api_key(s, project.id)
        other = repos.get_or_create_project(s, "elsewhere")
        token = repos.create_ui_session(s, record.id, 1)
        predictions: list[dict[str, Any]] = [
            {
                "id": f"p{i:04d}",
                "project_id": other.id if i >= N else project.id,
                "model_id": "m",
                "name": "b" if i < 20 else "a",
                "source": "file",
                "answer": {},
            }
            for i in range(N + 5)
        ]
        s.execute(insert(PredictionRow), predictions)
        feedback = [
            {
                "id": f"f{i:04d}",
                "project_id": p["project_id"],
                "prediction_id": p["id"],
                "target": {"label": "x"},
                "key_id": record.id,
                "used_in": "v" if i < 20 else None,
            }
            for i, p in enumerate(predictions)
        ]
        s.execute(insert(FeedbackRow), feedback)
    settings = Settings(data_dir=tmp, database_url=url, loop_interval_seconds=0)
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings), base_url="http://testserver/api/v1", headers=headers) as api:
        yield Served(api, key, token, [f"f{i:04d}" for i in range(N)])


def test_feedback_comes_in_pages_with_the_total(served: Served) -> None:
    first = served.api.get("/feedback").json()
    assert first["count"] == N and len(first["data"]) == 100  # the default page, as GET /jobs
    seen: list[str] = []
    for offset in range(0, N, 200):
        page = served.api.get("/feedback", params={"limit": 200, "offset": offset}).json()
        assert page["count"] == N
        seen += [f["id"] for f in page["data"]]
    assert sorted(seen) == served.ids and len(set(seen)) == N  # no row twice, none missing, no other project's
    assert [f["id"] for f in first["data"]] == seen[:100]  # the same order, page after page
    assert served.api.get("/feedback", params={"offset": N}).json() == {"data": [], "count": N}


def test_the_filters_count_what_they_list(served: Served) -> None:
    unused = served.api.get("/feedback", params={"unused": True, "limit": 5}).json()
    assert unused["count"] == N - 20 and all(f["used_in"] is None for f in unused["data"])
    named = served.api.get("/feedback", params={"name": "b", "limit": 500}).json()
    assert named["count"] == 20 and len(named["data"]) == 20


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"offset": -1}])
def test_a_page_is_bounded(served: Served, params: dict[str, int]) -> None:
    assert served.api.get("/feedback", params=params).status_code == 422


def test_the_cli_pages_through_all_of_it(served: Served) -> None:
    listed = _all_feedback(cast(httpx.Client, served.api), {"unused": False})  # a TestClient: httpx's or httpx2's
    assert sorted(f["id"] for f in listed) == served.ids  # every one, once


def test_the_playground_counts_the_feedback(served: Served) -> None:
    page = TestClient(served.api.app, cookies={"fitcycle_session": served.token}).get("/playground")
    assert page.status_code == 200, page.text
    found = re.search(r"<strong data-feedback-count>(\d+)</strong>", page.text)
    assert found is not None and int(found.group(1)) == N
