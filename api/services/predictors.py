"""Models are loaded once and cached (LRU); inference runs on CPU."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from core.db import domain
from core.engine.inference import Predictor
from core.storage.base import ObjectStore, download_prefix


class PredictorCache:
    """At most `size` Predictors in memory, most recently used kept."""

    def __init__(self, store: ObjectStore, folder: Path, size: int) -> None:
        self.store, self.folder, self.size = store, folder, max(1, size)
        self._cache: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: domain.Model) -> Predictor:
        with self._lock:
            if model.id in self._cache:
                self._cache.move_to_end(model.id)
                return self._cache[model.id]
        bundle = download_prefix(self.store, model.bundle_prefix, self.folder / model.id)
        predictor = Predictor(bundle, device="cpu")
        with self._lock:
            self._cache[model.id] = predictor
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return predictor

    def forget(self, model_id: str) -> None:
        """Drop a deleted model from memory and its local bundle copy from disk."""
        import shutil

        with self._lock:
            self._cache.pop(model_id, None)
        shutil.rmtree(self.folder / model_id, ignore_errors=True)
