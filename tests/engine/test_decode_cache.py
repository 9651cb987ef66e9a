"""The decode cache: an image whose resize is the same every epoch is read and resized once per job, and the
batches are bit for bit those of a loader that decodes every time; a random crop of a non-square image is not
cached; masks are cached with their images; loader workers fill one cache that the parent process sees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.datasets.samples import write_silhouette_masks
from core.engine import data as data_module
from core.engine.data import DataConfig, ImageDataLoaders
from core.engine.decode_cache import CacheBudget, DecodeCache
from core.engine.labelling import from_folder
from core.engine.masks import from_mask_rule
from core.engine.transforms import get_transforms


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    opened: list[Path] = []
    real = data_module.open_rgb

    def counting(path: Path) -> Image.Image:
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(data_module, "open_rgb", counting)
    return opened


def _epoch(dls: ImageDataLoaders, epoch: int, valid: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = dls.valid if valid else dls.train
    loader.set_epoch(epoch, 0, stream=1)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_square_images_are_decoded_once_and_batches_do_not_change(
    fashion_folder: Path, count_decodes: list[Path]
) -> None:
    items = from_folder(fashion_folder, valid_pct=0.25, seed=3)
    config = DataConfig(size=24, bs=16, augment=get_transforms(), seed=5)
    cached = ImageDataLoaders(items, config, stats=((0.5,) * 3, (0.25,) * 3))
    plain = ImageDataLoaders(
        items,
        DataConfig(size=24, bs=16, augment=get_transforms(), seed=5, decode_cache=None),
        stats=((0.5,) * 3, (0.25,) * 3),
    )
    n_train = len(items.indices(False))
    full_batches = (n_train // 16) * 16
    cached_decodes = []
    for epoch in range(3):
        before = len(count_decodes)
        got = _epoch(cached, epoch)
        cached_decodes.append(len(count_decodes) - before)
        before = len(count_decodes)
        want = _epoch(plain, epoch)
        assert len(count_decodes) - before == full_batches  # the plain loader decodes every epoch
        for (x, y), (x2, y2) in zip(got, want, strict=True):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    # The cached one decodes an image the first time an epoch draws it, never again.
    assert cached_decodes[0] == full_batches and sum(cached_decodes) <= n_train
    assert cached.train.dataset.cache is not None and cached.train.dataset.cache.nbytes == n_train * 3 * 24 * 24


def test_a_random_crop_of_a_non_square_image_is_decoded_every_epoch(tmp_path: Path, count_decodes: list[Path]) -> None:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(8):
            pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide, 30 high
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    items = from_folder(tmp_path, valid_pct=0.25, seed=3)
    dls = ImageDataLoaders(items, DataConfig(size=16, bs=4, seed=5), stats=((0.5,) * 3, (0.25,) * 3))
    n_valid = len(items.indices(True))
    crops = []
    for epoch in range(2):
        before = len(count_decodes)
        crops.append(_epoch(dls, epoch))
        assert len(count_decodes) - before == len(dls.train) * 4  # train: a new crop position each epoch
    before = len(count_decodes)
    _epoch(dls, 0, valid=True)
    _epoch(dls, 1, valid=True)
    assert len(count_decodes) - before == n_valid  # valid: a centred crop, decoded once
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(*crops, strict=True))


def test_masks_are_cached_with_their_images(tmp_path: Path, count_decodes: list[Path]) -> None:
    root = write_silhouette_masks(tmp_path / "masks", count=24, side=40, seed=2)
    items = from_mask_rule(root, void="void")
    cached = ImageDataLoaders(items, DataConfig(size=32, bs=6, seed=5), stats=((0.5,) * 3, (0.25,) * 3))
    plain = ImageDataLoaders(
        items, DataConfig(size=32, bs=6, seed=5, decode_cache=None), stats=((0.5,) * 3, (0.25,) * 3)
    )
    first, second = _epoch(cached, 0), _epoch(cached, 1)
    want = _epoch(plain, 1)
    assert cached.train.dataset.cache is not None and cached.train.dataset.cache.targets is not None
    for (x, y), (x2, y2) in zip(second, want, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2) and y.dtype == y2.dtype
    assert len(first) == len(second)


def test_loader_workers_fill_one_shared_cache(fashion_folder: Path) -> None:
    items = from_folder(fashion_folder, valid_pct=0.25, seed=3)
    dls = ImageDataLoaders(items, DataConfig(size=24, bs=16, seed=5, num_workers=2), stats=((0.5,) * 3, (0.25,) * 3))
    cache = dls.valid.dataset.cache
    assert cache is not None and cache.mapped
    _epoch(dls, 0, valid=True)  # the two forked workers decode; the parent never did
    assert bool(cache.filled.all())


def test_a_cache_over_budget_is_mapped_or_off() -> None:
    example = torch.zeros(8, 8, dtype=torch.int64)
    small = DecodeCache(10, 8, example, shared=False, budget=CacheBudget(memory_bytes=10**6, disk_bytes=10**6))
    assert small.enabled and not small.mapped
    mapped = DecodeCache(10, 8, None, shared=False, budget=CacheBudget(memory_bytes=100, disk_bytes=10**6))
    assert mapped.enabled and mapped.mapped
    mapped.put(3, torch.full((3, 8, 8), 7, dtype=torch.uint8), 40, 30, None)
    got = mapped.get(3)
    assert got is not None and int(got[0].sum()) == 7 * 3 * 64 and got[1] == (40, 30) and mapped.get(2) is None
    off = DecodeCache(10, 8, None, shared=False, budget=CacheBudget(memory_bytes=100, disk_bytes=100))
    assert not off.enabled and off.get(0) is None
