"""What the API process holds for its lifetime: settings, database, store, broker, predictor cache, the lookups
it keeps a moment (callers, models) and the prediction log's write-behind queue."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.budget import BytesCache, CpuBudget
from api.errors import Problem
from api.lookup_cache import Change, Invalidations, TimedCache
from api.prediction_queue import PredictionQueue, write_answers
from api.quota import StoredBytes
from api.ratelimit import RateLimiter, make_rate_limiter
from api.services.predictors import PredictorCache
from core.config import Settings
from core.db import domain
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
    explain_budget: CpuBudget = field(init=False)  # explained predictions: Grad-CAM on PyTorch
    renders: BytesCache[tuple[str, int, int, float | None]] = field(init=False)
    callers: TimedCache[tuple[str, str], domain.Caller] = field(init=False)  # (kind, hash of the secret) -> caller
    models: TimedCache[tuple[str, str], domain.Model] = field(init=False)  # (project id, model id) -> its row
    invalidations: Invalidations = field(init=False)
    prediction_queue: PredictionQueue = field(init=False)
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
            self.settings.render_cpu_seconds,
            self.settings.render_cpu_seconds / 60,
            "show_batch pictures",
            " (or ask for the default picture, which is kept)",
        )
        s = self.settings.explain_cpu_seconds
        self.explain_budget = CpuBudget(s, s / 60, "heatmaps", " (or ask without explain)")
        self.renders = BytesCache(max_entries=256, max_bytes=64 * 1024**2)
        self.callers = TimedCache(self.settings.lookup_cache_seconds)
        self.models = TimedCache(self.settings.lookup_cache_seconds)
        listeners: list[Callable[[list[Change]], None]] = [self.callers.drop, self.models.drop, self._forget_deleted]
        self.invalidations = Invalidations(self.settings.celery_broker_url, listeners)
        self.lookups_heard(self.invalidations.subscribed)
        self.prediction_queue = PredictionQueue(partial(write_answers, self.store, self.sessions))

    def lookups_heard(self, heard: bool) -> None:
        """Keep callers and models only while every change to them is heard (the fleet: while subscribed)."""
        self.callers.enable(heard)
        self.models.enable(heard)

    def _forget_deleted(self, changes: list[Change]) -> None:
        """A model deleted on any replica leaves this one's memory and disk too."""
        for what, which in changes:
            if what == "model":
                self.predictors.forget(which)

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
