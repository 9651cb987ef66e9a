"""Models are loaded once and cached (LRU); inference runs on CPU. A cached model may have a micro-batcher
(api/services/batching.py), which leaves the cache with it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from api.services.batching import MicroBatcher
from core.db import domain
from core.engine.inference import Backend, Predictor
from core.storage.base import ObjectStore, download_prefix


@dataclass
class _Loaded:
    predictor: Predictor
    batcher: MicroBatcher | None = None

    def drop(self) -> None:
        """Leaving the cache: its batcher answers what it holds and stops."""
        if self.batcher is not None:
            self.batcher.close()


class PredictorCache:
    """At most `size` Predictors in memory, most recently used kept."""

    def __init__(self, store: ObjectStore, folder: Path, size: int, backend: Backend = "onnx") -> None:
        self.store, self.folder, self.size = store, folder, max(1, size)
        self.backend = backend  # Settings.predictor: ONNX Runtime where a bundle has model.onnx, or PyTorch
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: domain.Model) -> Predictor:
        with self._lock:
            if model.id in self._cache:
                self._cache.move_to_end(model.id)
                return self._cache[model.id].predictor
        bundle = download_prefix(self.store, model.bundle_prefix, self.folder / model.id)
        predictor = Predictor(bundle, device="cpu", backend=self.backend)
        with self._lock:
            if model.id in self._cache:  # another request loaded it meanwhile: one copy (and one batcher) per model
                self._cache.move_to_end(model.id)
                return self._cache[model.id].predictor
            self._cache[model.id] = _Loaded(predictor)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)[1].drop()
        return predictor

    def batcher(self, model: domain.Model, window_s: float, max_batch: int) -> MicroBatcher:
        """The model's micro-batcher (made on first use with these settings), loading the model if needed."""
        predictor = self.get(model)
        with self._lock:
            loaded = self._cache.get(model.id)
            if loaded is not None and loaded.predictor is predictor:
                if loaded.batcher is None:
                    loaded.batcher = MicroBatcher(predictor, window_s, max_batch, name=model.id[:8])
                return loaded.batcher
        unbatched = MicroBatcher(predictor, window_s, max_batch)  # evicted just now: answer in the caller's thread
        unbatched.close()
        return unbatched

    def forget(self, model_id: str) -> None:
        """Drop a deleted model from memory and its local bundle copy from disk."""
        import shutil

        with self._lock:
            loaded = self._cache.pop(model_id, None)
        if loaded is not None:
            loaded.drop()
        shutil.rmtree(self.folder / model_id, ignore_errors=True)
