"""Models are loaded once and cached (LRU); inference runs on CPU. A cached model may have a micro-batcher
(api/services/batching.py), which leaves the cache with it."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from api.errors import Problem
from api.services.batching import MicroBatcher
from core.db import domain
from core.engine.errors import BundleError
from core.engine.inference import Backend, Predictor
from core.engine.text.bundle import TextPredictor
from core.engine.text.manifest import MANIFEST_FILE, is_text_manifest
from core.storage.base import ObjectStore, discard_copy, download_prefix

log = logging.getLogger("fitcycle.api")


AnyPredictor = Predictor | TextPredictor


@dataclass
class _Loaded:
    predictor: AnyPredictor
    batcher: MicroBatcher | None = None

    def drop(self) -> None:
        """Leaving the cache: its batcher answers what it holds and stops."""
        if self.batcher is not None:
            self.batcher.close()


BROKEN_FOR_SECONDS = 30.0  # how long a model whose stored bundle does not load is answered 500 without trying again


class PredictorCache:
    """At most `size` Predictors in memory, most recently used kept. A model that many requests ask for at once
    while it is not loaded is downloaded and loaded once: the others wait for it. A model whose stored bundle does
    not load is refused at once for BROKEN_FOR_SECONDS, not downloaded again by every request."""

    def __init__(self, store: ObjectStore, folder: Path, size: int, backend: Backend = "onnx") -> None:
        self.store, self.folder, self.size = store, folder, max(1, size)
        self.backend = backend  # Settings.predictor: ONNX Runtime where a bundle has model.onnx, or PyTorch
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, Future[AnyPredictor]] = {}  # model id -> the one load under way, which all wait on
        # model id -> (time.monotonic() until when, status, title, detail) of a model whose bundle does not load
        self._broken: dict[str, tuple[float, int, str, str]] = {}

    def _cached(self, model_id: str) -> AnyPredictor | None:
        """The cached Predictor (now the most recently used), if any; call with self._lock held."""
        loaded = self._cache.get(model_id)
        if loaded is None:
            return None
        self._cache.move_to_end(model_id)
        return loaded.predictor

    def get(self, model: domain.Model) -> Predictor:
        """The image model's Predictor (a text model's request to an image route: 422, saying where to send it)."""
        predictor = self.get_any(model)
        if isinstance(predictor, TextPredictor):
            route = "generate" if predictor.is_language_model else "predict-text"
            raise Problem(
                422, "Text model", f"model {model.id} answers texts: POST /api/v1/models/{model.id}/{route} with JSON"
            )
        return predictor

    def get_text(self, model: domain.Model) -> TextPredictor:
        """The text model's Predictor (an image model: 422)."""
        predictor = self.get_any(model)
        if not isinstance(predictor, TextPredictor):
            detail = f"model {model.id} answers images: POST /api/v1/models/{model.id}/predict"
            raise Problem(422, "Image model", detail)
        return predictor

    def get_any(self, model: domain.Model) -> AnyPredictor:
        """The model's Predictor. The first request for a cold model loads it; requests that come meanwhile wait
        for that load and get its outcome, Predictor or error alike."""
        with self._lock:
            predictor = self._cached(model.id)
            if predictor is not None:
                return predictor
            until, status, title, detail = self._broken.get(model.id, (0.0, 500, "", ""))
            if time.monotonic() < until:
                raise Problem(status, title, detail)
            pending = self._loading.get(model.id)
            loader = pending is None
            if pending is None:
                pending = self._loading[model.id] = Future()
        if not loader:
            try:
                return pending.result()
            except Problem as exc:  # a copy each: one exception object raised in many threads gathers their frames
                raise Problem(exc.status, exc.title, exc.detail) from None
        try:
            predictor = self._load(model)
        except BaseException as exc:
            with self._lock:
                del self._loading[model.id]
                if isinstance(exc, Problem):
                    self._broken[model.id] = (time.monotonic() + BROKEN_FOR_SECONDS, exc.status, exc.title, exc.detail)
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._loading[model.id]
            self._broken.pop(model.id, None)
            self._cache[model.id] = _Loaded(predictor)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)[1].drop()
        pending.set_result(predictor)
        return predictor

    def _load(self, model: domain.Model) -> AnyPredictor:
        """The model's Predictor from its local bundle copy, downloaded when missing. A copy that will not load
        (damaged on this disk) is discarded and downloaded again, once; a stored bundle that will not load is a
        500 that names the model, not a local path."""
        folder = self.folder / model.id
        for attempt in (1, 2):
            bundle = download_prefix(self.store, model.bundle_prefix, folder)
            try:
                if _is_text_bundle(bundle):
                    return TextPredictor(bundle, device="cpu")
                return Predictor(bundle, device="cpu", backend=self.backend)
            except BundleError as exc:
                reason = str(exc).replace(str(bundle), "the bundle")
                log.warning("model %s: its local bundle copy does not load (%s); attempt %d", model.id, reason, attempt)
                discard_copy(folder)
        raise Problem(500, "Model cannot be served", f"model {model.id}'s stored export bundle does not load: {reason}")

    def batcher(self, model: domain.Model, window_s: float, max_batch: int) -> MicroBatcher:  # images
        """The model's micro-batcher (made on first use with these settings), loading the model if needed."""
        predictor = self.get(model)
        with self._lock:
            loaded = self._cache.get(model.id)
            if loaded is not None and loaded.predictor is predictor:
                if loaded.batcher is None or loaded.batcher.closed:  # closed: its thread failed
                    loaded.batcher = MicroBatcher(predictor, window_s, max_batch, name=model.id[:8])
                return loaded.batcher
        unbatched = MicroBatcher(predictor, window_s, max_batch)  # evicted just now: answer in the caller's thread
        unbatched.close()
        return unbatched

    def forget(self, model_id: str) -> None:
        """Drop a deleted model from memory and its local bundle copy from disk (a model id is one path
        component: anything else names no model and is ignored)."""
        if not model_id or model_id in (".", "..") or "/" in model_id or "\\" in model_id or "\x00" in model_id:
            return
        with self._lock:
            loaded = self._cache.pop(model_id, None)
        if loaded is not None:
            loaded.drop()
        discard_copy(self.folder / model_id)


def _is_text_bundle(bundle: Path) -> bool:
    """Whether a downloaded bundle holds a text model (its manifest says so; an unreadable one is the loader's)."""
    import json

    try:
        return is_text_manifest(json.loads((bundle / MANIFEST_FILE).read_text()))
    except (OSError, ValueError):
        return False
