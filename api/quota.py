"""A project's storage quota (FITCYCLE_MAX_STORED_BYTES), checked before anything is written: dataset
versions, job artifacts, kept predict inputs (with the masks an answer carries) and feedback masks all count.

Uploads, cuts and jobs ask the database each time (`fresh`). The predict path is too hot for a sum over the
prediction log on every request, so it reads a total at most FRESH_SECONDS old and adds what this process has
written since: a project at its quota is refused within a moment on every replica, and one that has room pays
one query per FRESH_SECONDS, not one per image."""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session, sessionmaker

from api.errors import Problem
from core.db import repos
from core.db.session import session_scope

FRESH_SECONDS = 2.0


class StoredBytes:
    """What each project stores, as this process last read it plus what it wrote since."""

    def __init__(self, sessions: sessionmaker[Session], quota: int) -> None:
        self.sessions = sessions
        self.quota = quota
        self._known: dict[str, tuple[float, int]] = {}  # project id -> (when read, bytes)
        self._lock = threading.Lock()

    def used(self, project_id: str, fresh: bool = False) -> int:
        now = time.monotonic()
        with self._lock:
            known = self._known.get(project_id)
        if not fresh and known is not None and now - known[0] < FRESH_SECONDS:
            return known[1]
        with session_scope(self.sessions) as s:
            used = repos.stored_bytes(s, project_id)
        with self._lock:
            self._known[project_id] = (now, used)
            if len(self._known) > 10_000:  # idle projects' old totals
                self._known = {k: v for k, v in self._known.items() if now - v[0] < FRESH_SECONDS}
        return used

    def check(self, project_id: str, adding: int, fresh: bool = True) -> None:
        """413 when `adding` more bytes would take the project past its quota."""
        used = self.used(project_id, fresh)
        if used + adding > self.quota:
            raise Problem(
                413,
                "Storage quota exceeded",
                f"this project stores {used:,} bytes; {adding:,} more would pass its quota of {self.quota:,} "
                "(FITCYCLE_MAX_STORED_BYTES); delete old dataset versions, jobs or predictions (DELETE "
                "/predictions?before=...), set a retention (PATCH /project input_retention_days), or ask for a "
                "larger quota",
            )

    def wrote(self, project_id: str, n_bytes: int) -> None:
        """Count bytes this process just stored for the project (until the next read from the database)."""
        with self._lock:
            known = self._known.get(project_id)
            if known is not None:
                self._known[project_id] = (known[0], known[1] + n_bytes)

    def forget(self, project_id: str) -> None:
        """Read the project's total from the database next time (after a delete freed room)."""
        with self._lock:
            self._known.pop(project_id, None)
