"""Dynamic micro-batching for predict: single-image requests for one model that arrive within a few milliseconds
of each other are answered by one forward pass (`Predictor.predict_batch`), each caller getting its own answer.

Callers decode their own image in a threadpool thread (an unreadable image fails alone, in its own request,
before it joins a batch) and get a future, which an async route awaits without holding a thread. One thread per
model takes the oldest waiting image, gathers more until `window_s` after that image arrived or until `max_batch`
are in hand, and answers them all. While a batch runs, the next one gathers, so under load batches form without
waiting for the window."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from api.metrics import PREDICT_BATCH_IMAGES
from core.engine.images import open_rgb
from core.engine.inference import ImageInput, Predictor
from core.engine.tasks import Prediction

log = logging.getLogger("fitcycle.api")


@dataclass
class _Request:
    image: Image.Image
    arrived: float  # time.monotonic() when it was queued
    answer: Future[Prediction] = field(default_factory=Future)


class MicroBatcher:
    """One model's batcher, with a thread of its own that starts with the first request and ends at `close()`."""

    def __init__(self, predictor: Predictor, window_s: float, max_batch: int, name: str = "") -> None:
        self.predictor, self.window_s, self.max_batch = predictor, max(0.0, window_s), max(1, max_batch)
        self.name = name
        self.batch_sizes: Counter[int] = Counter()  # forward passes by the number of images in them
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()  # None: stop
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, image: ImageInput) -> Future[Prediction]:
        """Decode the image here and queue it for the next batch; its answer comes in the future, so an async
        caller need not hold a thread while the batch forms and runs (a thread per waiting request would soon
        take every thread of the server's pool). An image that cannot be decoded raises here."""
        request = _Request(open_rgb(image), time.monotonic())
        with self._lock:
            if not self._closed:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=f"predict-batcher-{self.name}", daemon=True)
                    self._thread.start()
                self._queue.put(request)
                queued = True
            else:
                queued = False
        if not queued:  # the model left the cache while this request held it: answer it here, alone
            self._answer([request])
        return request.answer

    def close(self) -> None:
        """Stop taking requests; those already queued are still answered, then the thread ends."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)  # after every queued request: nothing is queued once closed

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    def _run(self) -> None:
        """Gather a batch, answer it, repeat until the stop mark. Should this thread fail in itself (not in a
        forward pass, whose errors go to the requests), the batcher closes and every waiting request gets the
        error: none waits forever, and the model's next requests get a new batcher (PredictorCache.batcher)."""
        batch: list[_Request] = []
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch, stop = self._gather(first)
                self._answer(batch)
                if stop:
                    return
        except BaseException as exc:
            with self._lock:
                self._closed = True
            while True:  # after the lock: nothing more is queued
                try:
                    request = self._queue.get_nowait()
                except queue.Empty:
                    break
                if request is not None:
                    batch.append(request)
            for r in batch:
                _fail(r, exc)
            log.error("the predict batcher of model %s stopped: %r", self.name, exc)

    def _gather(self, first: _Request) -> tuple[list[_Request], bool]:
        """`first` and what follows it until its window closes or the batch is full; True when the stop mark
        was taken. A request that waited through the previous batch has used its window up: no extra wait."""
        batch = [first]
        deadline = first.arrived + self.window_s
        while len(batch) < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                request = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if request is None:
                return batch, True
            batch.append(request)
        return batch, False

    def _answer(self, batch: list[_Request]) -> None:
        """Answer the requests whose callers still wait: a future cancelled by its caller (an async request
        whose client went away) is dropped, and the others can no longer be cancelled."""
        waiting = [r for r in batch if r.answer.set_running_or_notify_cancel()]
        if waiting:
            self._forward(waiting)

    def _forward(self, batch: list[_Request]) -> None:
        """One forward pass for the batch; when it fails, each image again on its own, so that only the image
        that fails gets the error."""
        try:
            answers = self.predictor.predict_batch([r.image for r in batch])
            if len(answers) != len(batch):  # before any request gets an answer that may be another's
                raise RuntimeError(f"the model answered {len(answers)} of {len(batch)} images")
        except Exception as exc:
            if len(batch) == 1:
                batch[0].answer.set_exception(exc)
            else:
                for r in batch:
                    self._forward([r])
            return
        with self._lock:
            self.batch_sizes[len(batch)] += 1
        PREDICT_BATCH_IMAGES.observe(len(batch))
        for r, a in zip(batch, answers, strict=True):
            r.answer.set_result(a)


def _fail(request: _Request, exc: BaseException) -> None:
    """Give a request the error, unless it has its answer already or its caller cancelled it."""
    if request.answer.done():
        return
    if request.answer.running() or request.answer.set_running_or_notify_cancel():
        request.answer.set_exception(exc)
