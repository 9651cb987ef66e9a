"""What the API process holds for its lifetime: settings, database, store, broker, predictor cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

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

    def __post_init__(self) -> None:
        self.predictors = PredictorCache(
            self.store, self.settings.cache_dir / "bundles", self.settings.predictor_cache_size
        )
