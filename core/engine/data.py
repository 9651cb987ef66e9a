"""Data loading: a dataset of labelled image files, a resumable sampler, and loaders that move each
batch to the training device, augment it there and normalize it [fastai: ImageDataLoaders]."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.engine.decode_cache import DEFAULT_BUDGET, CacheBudget, DecodeCache
from core.engine.images import open_rgb
from core.engine.items import LabelledItems
from core.engine.splits import SEED
from core.engine.tasks import Grid, Task, task_of
from core.engine.transforms import (
    IMAGENET_STATS,
    AugmentConfig,
    BatchAugment,
    Normalize,
    ResizeMethod,
    image_to_uint8_tensor,
)


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends only on its parts: the same (seed, epoch, batch) gives the same draws."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class ImageItemsDataset(Dataset[tuple[torch.Tensor, Any]]):
    """Indexable (uint8 CHW image, target) pairs; the task makes the target on the image's grid. A random
    crop is seeded per (seed, stream, epoch, item). With a cache budget, an item whose resize is the same every
    epoch is decoded once (core.engine.decode_cache); `shared`: loader workers fill and read the same cache."""

    def __init__(
        self,
        items: LabelledItems,
        task: Task,
        indices: list[int],
        size: int,
        method: ResizeMethod,
        random_crop: bool,
        seed: int,
        cache: CacheBudget | None = None,
        shared: bool = False,
    ) -> None:
        self.items, self.task, self.indices = items, task, indices
        self.size, self.method, self.random_crop, self.seed = size, method, random_crop, seed
        self.stream, self.epoch = 0, 0
        self.cache: DecodeCache | None = None
        if cache is not None and indices:
            example = self._decode(0)[1] if task.target_from_file else None
            self.cache = DecodeCache(len(indices), size, example, shared, cache)

    def __len__(self) -> int:
        return len(self.indices)

    def _decode(self, i: int) -> tuple[torch.Tensor, Any, Grid]:
        idx = self.indices[i]
        original = open_rgb(self.items.path(idx))
        seed = derived_seed(self.seed, self.stream, self.epoch, idx) if self.random_crop else None
        grid = Grid(original.width, original.height, self.size, self.method, seed)
        return image_to_uint8_tensor(grid.resize(original)), self.task.target(self.items, idx, grid), grid

    def _fixed_resize(self, width: int, height: int) -> bool:
        """Whether an image of this size resizes the same way every epoch (no random crop position to draw)."""
        return not self.random_crop or self.method != "crop" or width == height

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        cached = self.cache.get(i) if self.cache is not None else None
        if cached is not None:
            image, (width, height), target = cached
            if target is None:
                grid = Grid(width, height, self.size, self.method, None)
                target = self.task.target(self.items, self.indices[i], grid)
            return image, target
        image, target, grid = self._decode(i)
        if self.cache is not None and self._fixed_resize(grid.width, grid.height):
            file_target = target if self.task.target_from_file else None
            self.cache.put(i, image, grid.width, grid.height, file_target)
        return image, target

    def key(self, i: int) -> str:
        """The item's stable key (its path relative to the dataset root)."""
        return self.items.keys[self.indices[i]]


class EpochSampler(Sampler[int]):
    """Yields item indices in an order fixed by (seed, stream, epoch); can start part-way through an epoch.
    In a distributed fit (world > 1), rank r takes every world-th index of that order from the r-th on, the
    order padded with its own first indices to a multiple of world (torch's DistributedSampler): the ranks'
    shards are disjoint but for the padding, and the split into train and valid is untouched."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world = rank, world
        self.stream, self.epoch, self.start = 0, 0, 0

    @property
    def n_per_rank(self) -> int:
        return -(-self.n // self.world)

    def order(self, stream: int, epoch: int) -> list[int]:
        """The full index order of an epoch."""
        if not self.shuffle:
            return list(range(self.n))
        gen = torch.Generator().manual_seed(derived_seed(self.seed, "order", stream, epoch))
        return torch.randperm(self.n, generator=gen).tolist()

    def shard(self, order: list[int]) -> list[int]:
        if self.world == 1:
            return order
        padded = order + order[: self.n_per_rank * self.world - len(order)]
        return padded[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.order(self.stream, self.epoch))[self.start :])

    def __len__(self) -> int:
        return self.n_per_rank - self.start


class DeviceLoader:
    """Wraps a DataLoader: each batch goes to the device, becomes float in [0, 1], is augmented
    (training only) and normalized. `set_epoch(e, start_batch, stream)` positions it for exact resume;
    the stream (the learner's fit number) keeps a second fit from replaying the first one's batches."""

    def __init__(
        self,
        dataset: ImageItemsDataset,
        bs: int,
        shuffle: bool,
        drop_last: bool,
        normalize: Normalize,
        augment: BatchAugment | None,
        seed: int,
        num_workers: int,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.dataset, self.bs, self.drop_last = dataset, bs, drop_last
        self.normalize, self.augment, self.seed = normalize, augment, seed
        self.device = device
        self.sampler = EpochSampler(len(dataset), shuffle, seed, rank, world)
        # Each rank draws its own augmentations; one device draws what it always drew.
        self.aug_salt: tuple[int, ...] = (rank,) if world > 1 else ()
        self.stream, self.epoch, self.start_batch = 0, 0, 0
        # A private generator keeps DataLoader from drawing worker seeds off the global RNG, which
        # would make a resumed run's dropout masks differ from an uninterrupted one.
        self.loader = DataLoader(
            dataset,
            batch_size=bs,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int, start_batch: int = 0, stream: int | None = None) -> None:
        """Choose the epoch (of a stream) whose order and augmentations to follow, and the batch to start from."""
        if stream is not None:
            self.stream = self.sampler.stream = self.dataset.stream = stream
        self.epoch, self.start_batch = epoch, start_batch
        self.sampler.epoch, self.sampler.start = epoch, start_batch * self.bs
        self.dataset.epoch = epoch

    def __len__(self) -> int:
        n = self.sampler.n_per_rank
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def n_batches_left(self) -> int:
        """Batches this iteration will yield, given the start batch."""
        return len(self) - self.start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batch_idx = self.start_batch
        for xb, yb in self.loader:
            x = xb.to(self.device, non_blocking=True).float().div_(255)
            yb = yb.to(self.device, non_blocking=True)
            if self.augment is not None:
                gen = torch.Generator().manual_seed(
                    derived_seed(self.seed, "aug", self.stream, self.epoch, batch_idx, *self.aug_salt)
                )
                x, yb = self.dataset.task.augment(self.augment, x, yb, gen)
            yield self.normalize(x), yb
            batch_idx += 1
        self.set_epoch(self.epoch, 0)


@dataclass
class DataConfig:
    """How images become batches."""

    size: int = 224
    resize_method: ResizeMethod = "crop"
    bs: int = 64
    augment: AugmentConfig | None = None
    num_workers: int | None = None
    seed: int = SEED
    rank: int = 0  # a distributed fit: this process's rank among `world`, and `bs` is the global batch
    world: int = 1
    decode_cache: CacheBudget | None = DEFAULT_BUDGET  # None: decode every image every epoch


class ImageDataLoaders:
    """Train and valid loaders over labelled items, with the task, classes and normalization they share."""

    def __init__(
        self,
        items: LabelledItems,
        config: DataConfig,
        stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.items = items
        self.task = task_of(items)
        self.device = torch.device(device)
        self.classes = list(items.classes)
        workers = config.num_workers
        if workers is None:
            workers = 0 if self.device.type == "cpu" else min(8, torch.multiprocessing.cpu_count())
        n_train = len(items.indices(False))
        if n_train < config.bs:
            # One full batch is the least the training loop needs (the last partial batch is dropped).
            config = dataclasses.replace(config, bs=max(1, n_train))
        self.config = c = config

        cache, shared = c.decode_cache, workers > 0
        train_ds = ImageItemsDataset(
            items, self.task, items.indices(False), c.size, c.resize_method, True, c.seed, cache, shared
        )
        valid_ds = ImageItemsDataset(
            items, self.task, items.indices(True), c.size, c.resize_method, False, c.seed, cache, shared
        )
        self.stats = stats if stats is not None else dataset_stats(train_ds)
        self.normalize = Normalize(*self.stats)
        augment = BatchAugment(self.task.limit_augment(c.augment)) if c.augment is not None else None
        per_rank = c.bs // c.world
        self.train = DeviceLoader(
            train_ds, per_rank, True, True, self.normalize, augment, c.seed, workers, self.device, c.rank, c.world
        )
        self.valid = DeviceLoader(valid_ds, c.bs * 2, False, False, self.normalize, None, c.seed, workers, self.device)

    @property
    def n_out(self) -> int:
        """Model outputs (one per class; points: two per point)."""
        return self.task.n_out(self.items)

    @property
    def c(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def to(self, device: torch.device | str) -> ImageDataLoaders:
        """Move batches to another device from now on."""
        self.device = torch.device(device)
        self.train.device = self.valid.device = self.device
        return self

    def one_batch(self, valid: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The first batch of train (augmented) or valid, without moving the epoch."""
        loader = self.valid if valid else self.train
        return next(iter(loader))


def dataset_stats(ds: ImageItemsDataset, max_items: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (up to max_items of) a dataset, for bodies trained from scratch."""
    n = min(len(ds), max_items)
    step = max(1, len(ds) // n)
    xs = torch.stack([ds[i][0] for i in range(0, step * n, step)]).float().div_(255)
    mean = xs.mean(dim=(0, 2, 3))
    std = xs.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


__all__ = ["IMAGENET_STATS", "DataConfig", "DeviceLoader", "ImageDataLoaders", "derived_seed"]
