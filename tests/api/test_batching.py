"""Predict micro-batching (api/services/batching.py): concurrent single-image requests share forward passes and
get exactly the answers they would get alone; a bad image fails alone; a batcher leaves the cache with its model."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar, cast

import pytest
import torch
from PIL import Image

from api.errors import Problem
from api.services.batching import MicroBatcher
from api.services.predict import submit
from api.services.predictors import PredictorCache
from api.state import AppState
from core.config import Settings
from core.db import domain
from core.engine.export import export_bundle
from core.engine.inference import ImageInput, Predictor
from core.engine.tasks import Prediction
from core.engine.tasks.classification import ClassPrediction
from core.storage.base import COMPLETE, ObjectNotFound, download_prefix
from core.storage.local import LocalStore
from tests.engine.test_learner import make_learner

T = TypeVar("T")


class CountingPredictor(Predictor):
    """A Predictor that records how many images each forward pass held."""

    def __init__(self, bundle: Path) -> None:
        super().__init__(bundle)
        self.passes: list[int] = []
        self._passes_lock = threading.Lock()

    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        with self._passes_lock:
            self.passes.append(len(images))
        return super().forward(images)


class FailsOnWidth13(Predictor):
    """A Predictor whose forward pass fails for any batch holding an image 13 pixels wide."""

    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if any(img.width == 13 for img in images):
            raise ValueError("13 pixels wide")
        return super().forward(images)


@pytest.fixture(scope="module")
def bundle(fashion_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained resnet18 (so its BatchNorm running statistics are not the initial ones), exported."""
    learn = make_learner(fashion_folder)
    learn.fit_one_cycle(1, 5e-3)
    return export_bundle(learn, tmp_path_factory.mktemp("batching") / "export")


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(fashion_folder: Path) -> list[bytes]:
    """24 images: 32 px PNGs as trained, and others of other sizes, shapes, modes and formats (each is resized
    on its own before it joins a batch)."""
    paths = sorted(fashion_folder.rglob("*.png"))[::6][:24]
    out = []
    for i, path in enumerate(paths):
        if i % 4 == 0:
            out.append(path.read_bytes())
        else:
            with Image.open(path) as img:
                size, mode, fmt = [((50, 40), "RGB", "JPEG"), ((17, 64), "L", "PNG"), ((96, 96), "RGBA", "PNG")][i % 3]
                out.append(encoded(img.convert(mode).resize(size), fmt))
    return out


def concurrently(calls: Sequence[Callable[[], T]]) -> list[T | Exception]:
    """Run the calls in as many threads, released together; each call's answer or exception, in order."""
    results: list[T | Exception] = [ValueError("not run")] * len(calls)
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def probs(p: Prediction | Exception) -> list[float]:
    assert isinstance(p, ClassPrediction), p
    return p.probs


def test_the_predictor_is_in_eval_mode_and_batch_size_does_not_change_answers(
    bundle: Path, images: list[bytes]
) -> None:
    predictor = Predictor(bundle)
    assert not any(m.training for m in predictor.model.modules())  # BatchNorm uses its running statistics
    alone = [probs(predictor.predict(img)) for img in images]
    together = [probs(p) for p in predictor.predict_batch(images)]
    for a, t in zip(alone, together, strict=True):
        assert t == pytest.approx(a, abs=1e-6)


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(bundle: Path, images: list[bytes]) -> None:
    alone = [Predictor(bundle).predict(img) for img in images]
    predictor = CountingPredictor(bundle)
    batcher = MicroBatcher(predictor, window_s=0.2, max_batch=8)
    try:
        results = concurrently([partial(answer_of, batcher, img) for img in images])
    finally:
        batcher.close()
    for one, got in zip(alone, results, strict=True):
        assert isinstance(one, ClassPrediction) and isinstance(got, ClassPrediction)
        assert got.label == one.label and got.probs == pytest.approx(one.probs, abs=1e-6)
    assert sum(predictor.passes) == len(images) and max(predictor.passes) <= 8
    assert max(predictor.passes) > 1 and len(predictor.passes) < len(images)
    assert sum(n * k for n, k in batcher.batch_sizes.items()) == len(images)


def test_an_unreadable_image_fails_alone(bundle: Path, images: list[bytes]) -> None:
    alone = [probs(Predictor(bundle).predict(img)) for img in images[:10]]
    batcher = MicroBatcher(CountingPredictor(bundle), window_s=0.2, max_batch=32)
    truncated = images[0][:60]  # a PNG header and nothing after it
    inputs = [*images[:5], b"not an image", truncated, *images[5:10]]
    try:
        results = concurrently([partial(answer_of, batcher, img) for img in inputs])
    finally:
        batcher.close()
    assert isinstance(results[5], ValueError) and "not an image in a format we read" in str(results[5])
    assert isinstance(results[6], OSError)
    good = results[:5] + results[7:]
    for a, got in zip(alone, good, strict=True):
        assert probs(got) == pytest.approx(a, abs=1e-6)


def test_a_forward_pass_that_fails_is_retried_image_by_image(bundle: Path, images: list[bytes]) -> None:
    with Image.open(io.BytesIO(images[0])) as img:
        odd = encoded(img.resize((13, 30)), "PNG")
    alone = [probs(Predictor(bundle).predict(img)) for img in images[:6]]
    batcher = MicroBatcher(FailsOnWidth13(bundle), window_s=0.2, max_batch=32)
    try:
        results = concurrently([partial(answer_of, batcher, img) for img in [*images[:3], odd, *images[3:6]]])
    finally:
        batcher.close()
    assert isinstance(results[3], ValueError) and str(results[3]) == "13 pixels wide"
    for a, got in zip(alone, results[:3] + results[4:], strict=True):
        assert probs(got) == pytest.approx(a, abs=1e-6)


class Gated(CountingPredictor):
    """A CountingPredictor whose forward passes wait until `release` is set; `entered` is set by the first."""

    def __init__(self, bundle: Path) -> None:
        super().__init__(bundle)
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, images: Sequence[Image.Image]) -> torch.Tensor:
        self.entered.set()
        assert self.release.wait(60)
        return super().forward(images)


def test_a_cancelled_request_is_dropped_and_the_batcher_goes_on(bundle: Path, images: list[bytes]) -> None:
    """An async route awaits its image's future; one cancelled while the image waits (a server shutting down,
    a timeout) is left out of the forward pass, and the others are answered."""
    alone = [probs(Predictor(bundle).predict(img)) for img in images[:3]]
    predictor = Gated(bundle)
    batcher = MicroBatcher(predictor, window_s=0.0, max_batch=8)
    try:
        first = batcher.submit(images[0])
        assert predictor.entered.wait(60)  # the first forward pass is running: the next two wait for the next
        gone, kept = batcher.submit(images[1]), batcher.submit(images[2])
        assert gone.cancel()
        predictor.release.set()
        assert probs(first.result(timeout=60)) == pytest.approx(alone[0], abs=1e-6)
        assert probs(kept.result(timeout=60)) == pytest.approx(alone[2], abs=1e-6)
    finally:
        batcher.close()
    assert predictor.passes == [1, 1]  # the cancelled image took no part


class WrongCount(Predictor):
    """A Predictor that answers one image fewer than it is given."""

    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        return super().predict_batch(images)[1:]


def test_a_wrong_number_of_answers_is_an_error_for_each_request(bundle: Path, images: list[bytes]) -> None:
    """No request gets an answer that may be another image's; the batcher goes on."""
    batcher = MicroBatcher(WrongCount(bundle), window_s=0.2, max_batch=8)
    try:
        for f in [batcher.submit(img) for img in images[:3]]:
            with pytest.raises(RuntimeError, match="the model answered 0 of 1 images"):
                f.result(timeout=60)
        assert not batcher.closed
    finally:
        batcher.close()


class Stop(BaseException):
    """Not an Exception: a forward pass's errors are caught as Exception, this one reaches the batcher's loop."""


class Stops(Predictor):
    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        raise Stop


def test_a_batcher_whose_thread_fails_leaves_no_request_waiting(bundle: Path, images: list[bytes]) -> None:
    batcher = MicroBatcher(Stops(bundle), window_s=60.0, max_batch=3)  # one batch, once all three are queued
    futures = [batcher.submit(img) for img in images[:3]]
    for f in futures:
        with pytest.raises(Stop):
            f.result(timeout=60)
    assert batcher.closed  # PredictorCache.batcher makes the model a new one


def model_row(model_id: str) -> domain.Model:
    return domain.Model(
        id=model_id,
        project_id="p",
        job_id="j",
        arch="resnet18",
        classes=[],
        metrics={},
        bundle_prefix="models/export",
        created_at=datetime.now(UTC),
    )


def batcher_threads(model_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"predict-batcher-{model_id[:8]}"]


def answer_of(batcher: MicroBatcher, image: bytes) -> Prediction:
    return batcher.submit(image).result()


def test_a_batcher_leaves_the_cache_with_its_model(bundle: Path, images: list[bytes], tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    for f in bundle.iterdir():
        store.put_bytes(f"models/export/{f.name}", f.read_bytes())
    cache = PredictorCache(store, tmp_path / "cache", size=1)
    a, b = model_row("a"), model_row("b")
    first = cache.batcher(a, 0.001, 8)
    assert cache.batcher(a, 0.001, 8) is first  # one batcher per cached model
    expected = probs(first.submit(images[0]).result())
    cache.get(b)  # the cache holds one model: a leaves, and its batcher stops
    assert first.closed
    for t in batcher_threads("a"):
        t.join(timeout=10)
        assert not t.is_alive()
    assert probs(first.submit(images[0]).result()) == pytest.approx(
        expected, abs=1e-6
    )  # a late caller is still answered
    second = cache.batcher(b, 0.001, 8)
    assert second is not first and not second.closed
    cache.forget("b")
    assert second.closed


def test_a_zero_window_answers_without_a_batcher(bundle: Path, images: list[bytes], tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    for f in bundle.iterdir():
        store.put_bytes(f"models/export/{f.name}", f.read_bytes())
    cache = PredictorCache(store, tmp_path / "cache", size=2)
    expected = probs(Predictor(bundle).predict(images[1]))
    for window_ms, batched in ((0.0, False), (5.0, True)):
        state = cast(AppState, SimpleNamespace(settings=Settings(predict_batch_window_ms=window_ms), predictors=cache))
        model = model_row(f"m{window_ms}")
        assert probs(submit(state, model, images[1]).result()) == pytest.approx(expected, abs=1e-6)
        assert bool(batcher_threads(model.id)) == batched


class CountingStore(LocalStore):
    """A LocalStore that counts listings (one per download_prefix) and is slow to copy, so that downloads that
    run at the same time overlap."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listings = 0

    def list(self, prefix: str) -> list[str]:
        self.listings += 1
        return super().list(prefix)

    def get_file(self, key: str, path: Path) -> Path:
        time.sleep(0.01)
        return super().get_file(key, path)


def stored_bundle(bundle: Path, root: Path) -> CountingStore:
    store = CountingStore(root)
    for f in bundle.iterdir():
        store.put_bytes(f"models/export/{f.name}", f.read_bytes())
    store.listings = 0
    return store


def test_many_cold_requests_load_a_model_once(bundle: Path, images: list[bytes], tmp_path: Path) -> None:
    """100 clients at a model not yet loaded used to download it 100 times into one shared folder at once, and
    could leave a copy marked complete with files missing: every later request got a 422 naming a local path."""
    store = stored_bundle(bundle, tmp_path / "objects")
    cache = PredictorCache(store, tmp_path / "cache", size=2)
    model = model_row("cold")
    got = concurrently([partial(cache.get, model) for _ in range(16)])
    assert all(isinstance(p, Predictor) for p in got), got
    assert len({id(p) for p in got}) == 1
    assert store.listings == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cold"]  # no partial folder left behind


def test_concurrent_downloads_of_one_prefix_leave_one_whole_copy(bundle: Path, tmp_path: Path) -> None:
    """Threads (or processes: the API and an embedded worker share the cache) that copy the same prefix at once
    each download into a folder of their own; one copy wins, whole. A stale copy without its mark is replaced."""
    store = stored_bundle(bundle, tmp_path / "objects")
    target = tmp_path / "cache" / "m"
    target.mkdir(parents=True)
    (target / "manifest.json").write_text("{")  # a crash mid-copy, long ago: no .complete mark
    got = concurrently([partial(download_prefix, store, "models/export", target) for _ in range(8)])
    assert got == [target] * 8
    assert sorted(p.name for p in target.iterdir()) == sorted([COMPLETE, *(f.name for f in bundle.iterdir())])
    for f in bundle.iterdir():
        assert (target / f.name).read_bytes() == f.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["m"]
    Predictor(target)


def test_a_damaged_local_copy_is_downloaded_again(bundle: Path, images: list[bytes], tmp_path: Path) -> None:
    store = stored_bundle(bundle, tmp_path / "objects")
    model = model_row("damaged")
    expected = probs(PredictorCache(store, tmp_path / "cache", size=2).get(model).predict(images[0]))
    weights = next(p for p in (tmp_path / "cache" / "damaged").iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])  # torn on this disk, still marked complete
    fresh = PredictorCache(store, tmp_path / "cache", size=2)  # an API restarted
    assert probs(fresh.get(model).predict(images[0])) == pytest.approx(expected, abs=1e-6)
    assert weights.read_bytes() == (bundle / weights.name).read_bytes()


def test_a_stored_bundle_that_does_not_load_is_a_500_naming_the_model_not_a_path(bundle: Path, tmp_path: Path) -> None:
    store = stored_bundle(bundle, tmp_path / "objects")
    store.put_bytes("models/export/manifest.json", b'{"format": 1}')
    cache = PredictorCache(store, tmp_path / "cache", size=2)
    with pytest.raises(Problem) as caught:
        cache.get(model_row("broken"))
    assert caught.value.status == 500
    assert "broken" in caught.value.detail
    assert str(tmp_path) not in caught.value.detail and "/cache" not in caught.value.detail
    assert store.listings == 2  # the local copy discarded and fetched again, once
    # The requests that follow are refused at once, not each downloading the bundle twice more.
    got = concurrently([partial(cache.get, model_row("broken")) for _ in range(8)])
    assert all(isinstance(p, Problem) and p.status == 500 for p in got)
    assert store.listings == 2


def test_requests_waiting_on_a_cold_load_share_its_failure(tmp_path: Path) -> None:
    """A load that fails (here: nothing stored under the prefix) fails every request that waited for it, at
    once, instead of each trying again in turn (40 waiters x a 120 s store outage each, before)."""
    store = CountingStore(tmp_path / "objects")
    cache = PredictorCache(store, tmp_path / "cache", size=2)
    got = concurrently([partial(cache.get, model_row("missing")) for _ in range(12)])
    assert all(isinstance(e, ObjectNotFound) for e in got), got
    assert store.listings == 1
    with pytest.raises(ObjectNotFound):  # not remembered: the next request tries again
        cache.get(model_row("missing"))
    assert store.listings == 2
