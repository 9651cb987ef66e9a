"""The prediction log's write-behind queue (api/prediction_queue.py), on SQLite and a local store: answers are
written in the order they were queued, each kept input before its row; a full queue, or one whose oldest answer
has waited its age bound, makes the next request wait rather than drop anything; a request that waits too long is
refused (503) with nothing logged; shutdown writes what is queued."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from api.errors import Problem
from api.prediction_queue import (
    LoggedAnswer,
    PredictionQueue,
    logged,
    minted_at,
    new_prediction_id,
    write_answers,
)
from core.db import domain, repos
from core.db.models import PredictionRow, utcnow
from core.db.session import make_engine, make_sessionmaker, session_scope, upgrade
from core.storage.local import LocalStore


@dataclass
class Log:
    """A real prediction log (SQLite, a local store) whose writer holds each batch until `gate` is open."""

    store: LocalStore
    sessions: sessionmaker[Session]
    project_id: str
    gate: threading.Event
    batches: list[list[str]]  # the ids of each batch written, in the order written
    write: Callable[[list[LoggedAnswer]], None]
    rows: Callable[[], list[str]]  # the ids in the database, in the order they were written

    def answer(self, n: int, size: int = 10) -> LoggedAnswer:
        prediction_id = new_prediction_id()
        key = f"projects/{self.project_id}/predictions/{prediction_id}.png"
        record = domain.PredictionRecord(
            id=prediction_id,
            project_id=self.project_id,
            model_id="m",
            name=None,
            source="file",
            filename=f"{n}.png",
            input_key=key,
            answer={"top": ["bag", 0.9]},
            uncertainty=0.1,
            created_at=utcnow(),
            stored_bytes=size,
        )
        return LoggedAnswer(record, [(key, bytes(size), "image/png")])


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        project = repos.get_or_create_project(s, "queued")
    store = LocalStore(tmp_path / "objects")
    gate, batches = threading.Event(), []

    def write(batch: list[LoggedAnswer]) -> None:
        assert gate.wait(30), "the test never opened the gate"
        write_answers(store, sessions, batch)
        batches.append([a.record.id for a in batch])

    def rows() -> list[str]:
        with session_scope(sessions) as s:  # SQLite's rowid: the order the rows were inserted in
            return list(s.scalars(select(PredictionRow.id).order_by(text("rowid"))))

    yield Log(store, sessions, project.id, gate, batches, write, rows)
    engine.dispose()


def test_a_full_queue_makes_the_next_answer_wait_and_drops_nothing(log: Log) -> None:
    async def scenario() -> None:
        queue = PredictionQueue(log.write, max_entries=3, max_age=60)
        writer = asyncio.create_task(queue.run())
        answers = [log.answer(n) for n in range(7)]
        for a in answers[:3]:
            await queue.put(a)  # room: at once
        assert queue.depth == 3
        fourth = asyncio.create_task(queue.put(answers[3]))
        await asyncio.sleep(0.2)
        assert not fourth.done() and queue.depth == 3  # waits for room: nothing is dropped, nothing overtakes

        log.gate.set()  # the store and the database take writes again
        await fourth
        for a in answers[4:]:
            await queue.put(a)
        await queue.written()  # every answer queued so far
        assert queue.depth == 0
        await queue.close(writer)

        ids = [a.record.id for a in answers]
        assert log.rows() == ids  # every answer, in the order answered
        assert [i for batch in log.batches for i in batch] == ids  # written in that order, once each
        assert all(log.store.exists(a.record.input_key or "") for a in answers)

    asyncio.run(scenario())


def test_an_answer_waits_once_the_oldest_unwritten_one_is_a_second_old(log: Log) -> None:
    """The crash-loss bound: with room left by count and bytes, answers still wait once the oldest unwritten one
    has waited max_age, so what a crash can lose was all sent within max_age."""

    async def scenario() -> None:
        queue = PredictionQueue(log.write, max_entries=100, max_age=0.3)
        writer = asyncio.create_task(queue.run())
        first = log.answer(0)
        await queue.put(first)
        started = time.monotonic()
        await queue.put(log.answer(1))  # the first is younger than max_age: room
        assert time.monotonic() - started < 0.3
        await asyncio.sleep(0.35)
        third = asyncio.create_task(queue.put(log.answer(2)))
        await asyncio.sleep(0.2)
        assert not third.done() and queue.depth == 2
        log.gate.set()
        await third
        await queue.close(writer)
        assert len(log.rows()) == 3

    asyncio.run(scenario())


def test_an_answer_that_waits_too_long_is_refused_and_not_logged(log: Log) -> None:
    async def scenario() -> None:
        queue = PredictionQueue(log.write, max_entries=1, put_timeout=0.3)
        writer = asyncio.create_task(queue.run())
        await queue.put(log.answer(0))
        late = log.answer(1)
        with pytest.raises(Problem) as refused:
            await queue.put(late)
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        assert "not logged" in refused.value.detail
        log.gate.set()
        await queue.close(writer)
        assert late.record.id not in log.rows() and len(log.rows()) == 1

    asyncio.run(scenario())


def test_shutdown_writes_what_is_queued(log: Log) -> None:
    async def scenario() -> None:
        queue = PredictionQueue(log.write)
        writer = asyncio.create_task(queue.run())
        answers = [log.answer(n) for n in range(5)]
        for a in answers:
            await queue.put(a)
        threading.Timer(0.2, log.gate.set).start()  # the writer is still held when shutdown begins
        await queue.close(writer)
        assert writer.done() and log.rows() == [a.record.id for a in answers]

    asyncio.run(scenario())


def test_a_read_waits_for_an_answer_another_replica_is_still_writing(log: Log) -> None:
    async def scenario() -> None:
        here = PredictionQueue(log.write)  # the replica asked: it queued nothing
        there = PredictionQueue(log.write)  # the replica that answered, its writer held a moment
        writer = asyncio.create_task(there.run())
        answer = log.answer(0)
        await there.put(answer)
        threading.Timer(0.3, log.gate.set).start()
        await logged(here, log.sessions, log.project_id, answer.record.id)
        assert log.rows() == [answer.record.id]  # the read goes on once the row is there
        await there.close(writer)

        started = time.monotonic()  # ids not minted a moment ago are not waited for
        made_up = str(uuid.UUID(int=(int(time.time() * 1000) + 86_400_000) << 80 | 0x7 << 76 | 0b10 << 62))
        for other in (made_up, str(uuid.uuid4()), "not-an-id"):
            await logged(here, log.sessions, log.project_id, other)
        assert time.monotonic() - started < 0.5

    asyncio.run(scenario())


def test_prediction_ids_say_when_they_were_minted() -> None:
    before = time.time()
    ids = [new_prediction_id() for _ in range(50)]
    assert all(uuid.UUID(i).version == 7 and len(i) == 36 for i in ids)
    assert all(before - 0.01 <= (minted_at(i) or 0) <= time.time() + 0.01 for i in ids)
    assert len(set(ids)) == 50
    assert minted_at(str(uuid.uuid4())) is None and minted_at("not-an-id") is None
