"""The prediction log (api/services/prediction_log.py) on a real PostgreSQL: rows that arrive together share one
commit, each request returns only once its own row is committed, and a row that fails fails only its request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from api.services.prediction_log import PredictionLog
from core.db import repos
from core.db.models import PredictionRow
from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade
from tests.platform.services import postgres_database


@pytest.fixture(scope="module")
def sessions() -> Iterator[sessionmaker[Session]]:
    with postgres_database() as url:
        upgrade(url)
        engine = make_engine(url)
        with session_scope(make_sessionmaker(engine)) as s:
            repos.get_or_create_project(s, "p")
        yield make_sessionmaker(engine)
        engine.dispose()


def project_id(sessions: sessionmaker[Session]) -> str:
    with session_scope(sessions) as s:
        return repos.get_or_create_project(s, "p").id


def row(project: str, i: int) -> dict[str, Any]:
    return dict(
        id=repos.new_id(),
        project_id=project,
        model_id="m",
        name=None,
        source="file",
        filename=f"{i}.png",
        input_key=None,
        answer={"top": ["a", 0.9]},
        uncertainty=0.1,
    )


def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def stored(sessions: sessionmaker[Session], ids: list[str]) -> int:
    with session_scope(sessions) as s:
        return int(s.scalar(select(func.count()).where(PredictionRow.id.in_(ids))) or 0)


def test_rows_that_arrive_together_share_a_commit_and_each_returns_committed(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = project_id(sessions)
    log = PredictionLog(sessions)
    real = repos.record_predictions
    first_write = threading.Event()

    def slow_first(s: Session, rows: list[dict[str, Any]]) -> None:  # the first commit takes a while...
        if not first_write.is_set():
            first_write.set()
            time.sleep(0.3)
        real(s, rows)

    monkeypatch.setattr(repos, "record_predictions", slow_first)
    rows = [row(project, i) for i in range(32)]
    seen: list[int] = []  # how many of the rows were committed when each record() returned

    def record(values: dict[str, Any]) -> None:
        log.record(**values)
        seen.append(stored(sessions, [values["id"]]))

    first = threading.Thread(target=record, args=(rows[0],))
    first.start()
    assert first_write.wait(10)
    others = [threading.Thread(target=record, args=(r,)) for r in rows[1:]]  # ...while the others arrive
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(timeout=30)
    assert seen == [1] * 32  # every request saw its own row at once
    assert stored(sessions, [r["id"] for r in rows]) == 32
    assert log.group_sizes == {1: 1, 31: 1}  # 2 commits, not 32
    log.close()


def test_a_row_that_fails_fails_only_its_own_request(sessions: sessionmaker[Session]) -> None:
    project = project_id(sessions)
    log = PredictionLog(sessions)
    rows = [row(project, i) for i in range(8)]
    rows[3]["project_id"] = "no-such-project"  # a foreign key violation: the project is gone
    outcomes: dict[int, BaseException | None] = {}
    start = threading.Barrier(len(rows))

    def record(i: int) -> None:
        start.wait()
        try:
            log.record(**rows[i])
            outcomes[i] = None
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=record, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert isinstance(outcomes.pop(3), IntegrityError)
    assert list(outcomes.values()) == [None] * 7
    assert stored(sessions, [r["id"] for i, r in enumerate(rows) if i != 3]) == 7
    log.close()


def test_after_close_a_late_row_is_still_written(sessions: sessionmaker[Session]) -> None:
    project = project_id(sessions)
    log = PredictionLog(sessions)
    early, late = row(project, 0), row(project, 1)
    log.record(**early)
    log.close()
    log.record(**late)  # a request that was still running when the API began to stop
    assert stored(sessions, [early["id"], late["id"]]) == 2


def test_in_a_database_outage_the_whole_group_fails_at_once(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not row by row: each row's own attempt would wait out another connect timeout on the one writer thread."""
    project = project_id(sessions)
    log = PredictionLog(sessions)
    calls: list[int] = []
    gate = threading.Event()

    def away(s: Session, rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        gate.wait(5)  # the first write holds the thread while the rest queue up behind it
        raise OperationalError("INSERT", {}, Exception("connection refused"))

    monkeypatch.setattr(repos, "record_predictions", away)
    errors: list[BaseException] = []

    def record(i: int) -> None:
        try:
            log.record(**row(project, i))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(10)]
    threads[0].start()
    until(lambda: bool(calls))
    for t in threads[1:]:
        t.start()
    until(lambda: log._queue.qsize() == 9)
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert len(errors) == 10 and all(isinstance(e, OperationalError) for e in errors)
    assert calls == [1, 9]  # two attempts in all: the group of nine failed together
    log.close()
