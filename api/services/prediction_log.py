"""The prediction log's writes, in groups: each request still waits until its own row is committed (so the
prediction_id it answers exists at once, for feedback or a lookup), but rows that arrive while a commit is under
way share the next INSERT and commit. Under load that is one transaction per group instead of one per request;
alone, a request pays one hand-over between threads.

One thread per API process takes the waiting rows (at most `max_rows`), writes them, and hands each request its
outcome. When a group fails, its rows are written again one at a time, so that only a row that fails by itself
(its project deleted meanwhile, say) fails its request. In a database outage the whole group fails at once with
the outage's error, which the API answers 503."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from core.db import repos
from core.db.outage import is_outage
from core.db.session import session_scope

log = logging.getLogger("fitcycle.api")

_STOP = None


class PredictionLog:
    """Group-committed prediction rows; `record` blocks until its row is committed or has failed."""

    def __init__(self, sessions: sessionmaker[Session], max_rows: int = 64) -> None:
        self.sessions, self.max_rows = sessions, max(1, max_rows)
        self.group_sizes: dict[int, int] = {}  # rows per commit -> how many commits (read by tests and benches)
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], Future[None]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def record(self, **values: Any) -> None:
        """Write one predictions row (the fields of repos.record_predictions' rows); returns once it is
        committed, raises what its write raised."""
        done: Future[None] = Future()
        with self._lock:
            if self._closed:
                queued = False
            else:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
                    self._thread.start()
                self._queue.put((values, done))
                queued = True
        if not queued:  # closing: write it here
            self._write([(values, done)])
        done.result()

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            group, stop = [first], False
            while len(group) < self.max_rows:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                group.append(item)
            self._write(group)
            if stop:
                return

    def _write(self, group: list[tuple[dict[str, Any], Future[None]]]) -> None:
        try:
            with session_scope(self.sessions) as s:
                repos.record_predictions(s, [values for values, _ in group])
        except Exception as exc:
            if len(group) == 1 or is_outage(exc):  # the database is away: every row of the group fails with it
                for _, done in group:
                    done.set_exception(exc)
                return
            log.info(
                "a group of %d prediction rows failed (%s); writing them one at a time", len(group), type(exc).__name__
            )
            for item in group:
                self._write([item])
            return
        self.group_sizes[len(group)] = self.group_sizes.get(len(group), 0) + 1
        for _, done in group:
            done.set_result(None)
