"""What the API process holds for its lifetime: settings, database, store, broker, predictor cache."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.budget import BytesCache, CpuBudget
from api.errors import Problem
from api.quota import StoredBytes
from api.ratelimit import RateLimiter, make_rate_limiter
from api.services.predictors import PredictorCache
from core.config import Settings
from core.storage.base import ObjectStore


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    celery: Celery
    predictors: PredictorCache = field(init=False)
    rate_limiter: RateLimiter = field(init=False)
    stored: StoredBytes = field(init=False)
    render_budget: CpuBudget = field(init=False)
    renders: BytesCache[tuple[str, int, int, float | None]] = field(init=False)
    _streams: Counter[str] = field(init=False, default_factory=Counter)
    _streams_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.predictors = PredictorCache(
            self.store,
            self.settings.cache_dir / "bundles",
            self.settings.predictor_cache_size,
            backend=self.settings.predictor,
        )
        self.rate_limiter = make_rate_limiter(self.settings.celery_broker_url, self.settings.requests_per_minute)
        self.stored = StoredBytes(self.sessions, self.settings.max_stored_bytes)
        self.render_budget = CpuBudget(
            self.settings.render_cpu_seconds, self.settings.render_cpu_seconds / 60, "show_batch pictures"
        )
        self.renders = BytesCache(max_entries=256, max_bytes=64 * 1024**2)

    def hold_event_stream(self, project_id: str) -> Callable[[], None]:
        """Take one of the project's open event streams (counted in this API process), or 429 when all are
        taken; returns the release, which is safe to call more than once."""
        with self._streams_lock:
            if self._streams[project_id] >= self.settings.max_event_streams:
                raise Problem(
                    429,
                    "Too many event streams",
                    f"this project already has {self.settings.max_event_streams} open event streams "
                    "(FITCYCLE_MAX_EVENT_STREAMS); close one, or poll GET /jobs/{id}",
                )
            self._streams[project_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._streams_lock:
                if not released:
                    released = True
                    self._streams[project_id] -= 1

        return release
