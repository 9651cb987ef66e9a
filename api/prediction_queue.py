"""The prediction log, written behind the answer: a predict request stores its kept input (on its own thread:
`kept`), queues its row here and answers at once; one writer per API process writes the queued rows in order, a
batch per transaction, so a request pays for no database write of its own, and one project's uploads never hold
up another project's answers.

Bounded three ways: at most MAX_ENTRIES answers and MAX_BYTES of kept files wait, and none waits longer than
MAX_AGE_SECONDS. A request that finds the queue full, or its oldest answer that old, waits for room before it
answers (back-pressure: nothing is dropped); one that waits PUT_TIMEOUT_SECONDS is a 503, its answer neither sent
nor logged. So a crash (SIGKILL, a lost machine) loses at most one second's answers: once the oldest unwritten
answer is a second old, no other is sent until it is written. Shutdown drains the queue.

A prediction this process answered is readable as soon as its id is known: a read waits for its row (`logged`).
Prediction ids are time-ordered (UUIDv7), so a read on another replica of an id minted a moment ago waits, at most
MAX_AGE_SECONDS past its minting, for the answering replica's writer."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from api.errors import Problem
from core.db import domain, repos
from core.db.outage import is_outage
from core.db.session import session_scope
from core.storage.base import ObjectStore, StoreUnavailable

log = logging.getLogger("fitcycle.predictions")

MAX_ENTRIES = 256  # answers waiting to be written (about a second's worth at the rates one API process reaches)
MAX_BYTES = 64 * 1024**2  # kept inputs and masks waiting to be written
MAX_AGE_SECONDS = 1.0  # the oldest unwritten answer's age at which new answers wait: the crash-loss bound
MAX_BATCH = 64  # answers written in one transaction
PUT_TIMEOUT_SECONDS = 30.0  # how long a request waits for room before its answer is refused (503)
RETRY_AFTER_SECONDS = 5
DRAIN_SECONDS = 60.0  # how long shutdown waits for the queue to be written
CLOCK_SKEW_SECONDS = 0.5  # between replicas' clocks, allowed for when a read waits for another replica's answer


@dataclass(frozen=True)
class LoggedAnswer:
    """One answer to log: its objects (kept input, the masks it carries), written before its row."""

    record: domain.PredictionRecord
    objects: list[tuple[str, bytes, str]] = field(default_factory=list)  # (key, data, content type)

    @property
    def size(self) -> int:
        return sum(len(data) for _, data, _ in self.objects)


def write_answers(store: ObjectStore, sessions: sessionmaker[Session], batch: list[LoggedAnswer]) -> None:
    """Write a batch: every object first, then every row in one transaction (a row never names a missing object)."""
    for answer in batch:
        for key, data, content_type in answer.objects:
            store.put_bytes(key, data, content_type)
    with session_scope(sessions) as s:
        repos.record_predictions(s, [answer.record for answer in batch])


def queued_entry(
    state: Any,
    record: domain.PredictionRecord,
    objects: list[tuple[str, bytes, str]],
) -> LoggedAnswer:
    """What to queue for one answer: its row (its filename made printable: PostgreSQL refuses NUL in text, and
    one such row would fail its batch), once its objects are stored — now, on the request's own thread: the
    project that keeps its inputs pays for their upload, and the shared writer only writes rows, so no project's
    uploads hold up another's answers. The row never names a missing object."""
    for key, data, content_type in objects:
        state.store.put_bytes(key, data, content_type)
    return LoggedAnswer(dataclasses.replace(record, filename=printable(record.filename)))


def printable(text: str) -> str:
    """Text a database column takes: PostgreSQL refuses NUL in text, and one such row would fail its batch."""
    return text.replace("\x00", "\ufffd")


def new_prediction_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits. Sorts by minting time, and says it."""
    value = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | secrets.randbits(12) << 64
    value |= 0b10 << 62 | secrets.randbits(62)
    return str(uuid.UUID(int=value))


def minted_at(prediction_id: str) -> float | None:
    """When a UUIDv7 prediction id was minted (Unix seconds); None for any other string."""
    try:
        parsed = uuid.UUID(prediction_id)
    except ValueError:
        return None
    return (parsed.int >> 80) / 1000 if parsed.version == 7 else None


@dataclass
class _Queued:
    seq: int
    answer: LoggedAnswer
    size: int
    since: float  # time.monotonic() when queued


class PredictionQueue:
    """Answers waiting to be logged, in order, and the one writer that writes them (`run`, a task of the API's
    lifetime). `write` writes one batch, in a threadpool thread."""

    def __init__(
        self,
        write: Callable[[list[LoggedAnswer]], None],
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        max_age: float = MAX_AGE_SECONDS,
        max_batch: int = MAX_BATCH,
        put_timeout: float = PUT_TIMEOUT_SECONDS,
    ) -> None:
        self.write = write
        self.max_entries, self.max_bytes, self.max_age = max_entries, max_bytes, max_age
        self.max_batch, self.put_timeout = max_batch, put_timeout
        self._queued: deque[_Queued] = deque()  # queued and not yet written, the batch being written included
        self._pending: dict[str, int] = {}  # prediction id -> its seq, while queued
        self._bytes = 0
        self._seq = 0  # of the last answer queued
        self._written = 0  # every answer up to this seq is written
        self._changed = asyncio.Condition()
        self._closing = False
        self._stopped = False

    @property
    def depth(self) -> int:
        """Answers queued and not yet written."""
        return len(self._queued)

    def _has_room(self, size: int) -> bool:
        if not self._queued:
            return True  # one answer always fits, however large
        return (
            len(self._queued) < self.max_entries
            and self._bytes + size <= self.max_bytes
            and time.monotonic() - self._queued[0].since < self.max_age
        )

    async def put(self, answer: LoggedAnswer) -> None:
        """Queue an answer, once there is room: until then the caller waits (503 after `put_timeout`)."""
        size = answer.size
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._stopped or self._has_room(size)), self.put_timeout
                )
            except TimeoutError:
                raise self._refusal(
                    f"the prediction log has not kept up for {self.put_timeout:.0f} s (the database or the object "
                    "store is slow or away); this answer was not logged"
                ) from None
            if self._stopped:
                raise self._refusal("the API is shutting down; this answer was not logged")
            self._seq += 1
            self._queued.append(_Queued(self._seq, answer, size, time.monotonic()))
            self._pending[answer.record.id] = self._seq
            self._bytes += size
            self._changed.notify_all()

    @staticmethod
    def _refusal(detail: str) -> Problem:
        return Problem(
            503,
            "Service Unavailable",
            f"{detail}; try again in {RETRY_AFTER_SECONDS} s",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def written(self, prediction_id: str | None = None, timeout: float = PUT_TIMEOUT_SECONDS) -> bool:
        """Wait until the answer `prediction_id` (None: every answer queued so far) is written, when this process
        queued it, for at most `timeout` seconds (then the reader goes on and finds what the database has). Returns
        whether there was anything to wait for."""
        async with self._changed:
            seq = self._seq if prediction_id is None else self._pending.get(prediction_id)
            if seq is None or self._written >= seq:
                return False
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._written >= seq), timeout)
            except TimeoutError:
                log.warning("prediction %s is still waiting to be written after %.0f s", prediction_id, timeout)
            return True

    async def run(self) -> None:
        """The writer: write what is queued, in order, a batch at a time, until closed and drained."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._queued) or self._closing)
                if not self._queued:
                    self._stopped = True
                    self._changed.notify_all()
                    return
                batch = list(itertools.islice(self._queued, self.max_batch))
            await self._write_all([q.answer for q in batch])
            async with self._changed:
                for _ in batch:
                    done = self._queued.popleft()
                    self._bytes -= done.size
                    self._pending.pop(done.answer.record.id, None)
                self._written = batch[-1].seq
                self._changed.notify_all()

    async def _write_all(self, batch: list[LoggedAnswer]) -> None:
        """Write a batch, waiting out a database or store outage (new answers wait meanwhile: the queue fills). An
        answer that cannot be written for another reason is written alone, and left out with its error logged."""
        delay = 0.1
        while True:
            try:
                await run_in_threadpool(self.write, batch)
                return
            except Exception as exc:
                if is_outage(exc) or isinstance(exc, StoreUnavailable | OSError):
                    log.warning(
                        "the prediction log cannot be written (%s); %d answers wait, retrying in %.1f s",
                        type(exc).__name__,
                        self.depth,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                if len(batch) > 1:
                    for one in batch:
                        await self._write_all([one])
                    return
                log.exception("prediction %s could not be logged (its answer was sent)", batch[0].record.id)
                return

    async def close(self, writer: asyncio.Task[None], timeout: float = DRAIN_SECONDS) -> None:
        """Shutdown: write what is queued (at most `timeout` seconds), then stop the writer."""
        async with self._changed:
            self._closing = True
            self._changed.notify_all()
        try:
            await asyncio.wait_for(writer, timeout)  # cancelled when it times out
        except TimeoutError:
            log.error("shutdown: %d answers were sent but could not be logged within %.0f s", self.depth, timeout)
            async with self._changed:
                self._stopped = True
                self._changed.notify_all()


async def logged(queue: PredictionQueue, sessions: sessionmaker[Session], project_id: str, prediction_id: str) -> None:
    """Before a prediction is read: wait for its row when this process queued it, or, for an id minted less than
    MAX_AGE_SECONDS (and CLOCK_SKEW_SECONDS) ago by another replica, until its row is in the database or that long
    after its minting has passed."""
    if await queue.written(prediction_id):
        return
    minted, now = minted_at(prediction_id), time.time()
    if minted is None or not now - MAX_AGE_SECONDS - CLOCK_SKEW_SECONDS <= minted <= now + CLOCK_SKEW_SECONDS:
        return  # not minted a moment ago (a made-up id may say any time)
    deadline = minted + MAX_AGE_SECONDS + CLOCK_SKEW_SECONDS
    pause = 0.05
    while time.time() < deadline:  # at most about 6 looks: a made-up id costs a few queries, not dozens
        if await run_in_threadpool(_exists, sessions, project_id, prediction_id):
            return
        await asyncio.sleep(min(pause, max(0.0, deadline - time.time())))
        pause *= 2


def _exists(sessions: sessionmaker[Session], project_id: str, prediction_id: str) -> bool:
    with session_scope(sessions) as s:
        return repos.prediction_exists(s, project_id, prediction_id)
