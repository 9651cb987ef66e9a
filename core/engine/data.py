"""Data loading: a dataset of labelled image files, a resumable sampler, and loaders that move each
batch to the training device, augment it there and normalize it [fastai: ImageDataLoaders]."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from core.engine.images import open_rgb
from core.engine.labelling import LabelledItems
from core.engine.masks import IGNORE_INDEX, open_mask
from core.engine.transforms import (
    IMAGENET_STATS,
    AugmentConfig,
    BatchAugment,
    Normalize,
    ResizeMethod,
    image_to_uint8_tensor,
    resize_image,
    resize_map,
)


def mask_lookup(items: LabelledItems) -> np.ndarray:
    """Mask value -> class index (int64), with the void code mapped to the ignore index."""
    assert items.codes is not None
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for value, name in enumerate(items.codes):
        if value != items.void_code:
            lut[value] = items.classes.index(name)
    return lut


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends only on its parts: the same (seed, epoch, batch) gives the same draws."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class ImageItemsDataset(Dataset[tuple[torch.Tensor, Any]]):
    """Indexable (uint8 CHW image, class index) pairs. A random crop is seeded per (seed, epoch, item)."""

    def __init__(
        self,
        items: LabelledItems,
        indices: list[int],
        class_to_idx: dict[str, int],
        size: int,
        method: ResizeMethod,
        random_crop: bool,
        seed: int,
    ) -> None:
        self.items, self.indices, self.class_to_idx = items, indices, class_to_idx
        self.size, self.method, self.random_crop, self.seed = size, method, random_crop, seed
        self.stream, self.epoch = 0, 0
        if items.target_kind == "mask":
            self.mask_lut = mask_lookup(items)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        idx = self.indices[i]
        seed = derived_seed(self.seed, self.stream, self.epoch, idx)
        rng = np.random.default_rng(seed) if self.random_crop else None
        original = open_rgb(self.items.path(idx))
        img = resize_image(original, self.size, self.method, rng)
        if self.items.target_kind == "points":
            # The same crop as the image (a generator with the same seed draws the same position).
            again = np.random.default_rng(seed) if self.random_crop else None
            ax, bx, ay, by = resize_map(original.width, original.height, self.size, self.method, again)
            xy = torch.tensor(self.items.targets[idx], dtype=torch.float32).view(-1, 2)  # type: ignore[index]
            xy = torch.stack([xy[:, 0] * ax + bx, xy[:, 1] * ay + by], dim=1) / self.size * 2 - 1
            return image_to_uint8_tensor(img), xy.flatten()
        if self.items.target_kind == "mask":
            # The same crop as the image, nearest-neighbour; pad fills with the void code (ignored) if any.
            again = np.random.default_rng(seed) if self.random_crop else None
            void = self.items.void_code
            mask = resize_image(
                open_mask(self.items.mask_path(idx)),
                self.size,
                self.method,
                again,
                Image.Resampling.NEAREST,
                fill=0 if void is None else void,
            )
            return image_to_uint8_tensor(img), torch.from_numpy(self.mask_lut[np.asarray(mask)])
        if self.items.target_kind == "values":
            return image_to_uint8_tensor(img), torch.tensor(self.items.targets[idx], dtype=torch.float32)  # type: ignore[index]
        return image_to_uint8_tensor(img), self.target(idx)

    def target(self, idx: int) -> Any:
        """A class index, or for multi-label data a multi-hot float vector."""
        if not self.items.multi_label:
            return self.class_to_idx[self.items.labels[idx]]
        hot = torch.zeros(len(self.class_to_idx))
        for c in self.items.label_set(idx):
            hot[self.class_to_idx[c]] = 1.0
        return hot

    def key(self, i: int) -> str:
        """The item's stable key (its path relative to the dataset root)."""
        return self.items.keys[self.indices[i]]

    def label(self, i: int) -> str:
        """The item's label."""
        return self.items.labels[self.indices[i]]


class EpochSampler(Sampler[int]):
    """Yields item indices in an order fixed by (seed, stream, epoch); can start part-way through an epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.stream, self.epoch, self.start = 0, 0, 0

    def order(self, stream: int, epoch: int) -> list[int]:
        """The full index order of an epoch."""
        if not self.shuffle:
            return list(range(self.n))
        gen = torch.Generator().manual_seed(derived_seed(self.seed, "order", stream, epoch))
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.stream, self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.n - self.start


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
    ) -> None:
        self.dataset, self.bs, self.drop_last = dataset, bs, drop_last
        self.normalize, self.augment, self.seed = normalize, augment, seed
        self.device = device
        self.sampler = EpochSampler(len(dataset), shuffle, seed)
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
        n = len(self.dataset)
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
                gen = torch.Generator().manual_seed(derived_seed(self.seed, "aug", self.stream, self.epoch, batch_idx))
                if self.dataset.items.target_kind == "points":
                    x, moved, _ = self.augment.apply(x, gen, yb.view(len(yb), -1, 2))
                    assert moved is not None
                    yb = moved.reshape(len(yb), -1)
                elif self.dataset.items.target_kind == "mask":
                    x, _, masks = self.augment.apply(x, gen, masks=yb)
                    assert masks is not None
                    yb = masks
                else:
                    x = self.augment(x, gen)
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
    seed: int = 42


class ImageDataLoaders:
    """Train and valid loaders over LabelledItems, with the classes and normalization they share."""

    def __init__(
        self,
        items: LabelledItems,
        config: DataConfig,
        stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.items, self.config = items, config
        self.device = torch.device(device)
        self.classes = list(items.classes)
        class_to_idx = {c: i for i, c in enumerate(self.classes)}
        workers = config.num_workers
        if workers is None:
            workers = 0 if self.device.type == "cpu" else min(8, torch.multiprocessing.cpu_count())
        c = config

        train_ds = ImageItemsDataset(items, items.indices(False), class_to_idx, c.size, c.resize_method, True, c.seed)
        valid_ds = ImageItemsDataset(items, items.indices(True), class_to_idx, c.size, c.resize_method, False, c.seed)
        if len(train_ds) < c.bs:
            # One full batch is the least the training loop needs (the last partial batch is dropped).
            c.bs = max(1, len(train_ds))
        self.stats = stats if stats is not None else dataset_stats(train_ds)
        self.normalize = Normalize(*self.stats)
        augment = BatchAugment(c.augment) if c.augment is not None else None
        self.train = DeviceLoader(train_ds, c.bs, True, True, self.normalize, augment, c.seed, workers, self.device)
        self.valid = DeviceLoader(valid_ds, c.bs * 2, False, False, self.normalize, None, c.seed, workers, self.device)

    @property
    def multi_label(self) -> bool:
        """True for multi-label data (sigmoid outputs, binary cross-entropy)."""
        return self.items.multi_label

    @property
    def n_out(self) -> int:
        """Model outputs: one per class, or per target number (points: 2 per point)."""
        if self.items.targets is not None:
            return len(self.items.targets[0]) if self.items.targets else 0
        return len(self.classes)

    @property
    def task(self) -> str:
        """classification, multilabel, points or values."""
        return self.items.task

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

    def describe(self) -> dict[str, Any]:
        """Plain facts about the data, for manifests and reports."""
        return {
            "classes": self.classes,
            "size": self.config.size,
            "resize_method": self.config.resize_method,
            "n_train": len(self.train.dataset),
            "n_valid": len(self.valid.dataset),
            "mean": list(self.stats[0]),
            "std": list(self.stats[1]),
        }


def dataset_stats(ds: ImageItemsDataset, max_items: int = 512) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (up to max_items of) a dataset, for bodies trained from scratch."""
    n = min(len(ds), max_items)
    step = max(1, len(ds) // n)
    xs = torch.stack([ds[i][0] for i in range(0, step * n, step)]).float().div_(255)
    mean = xs.mean(dim=(0, 2, 3))
    std = xs.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


__all__ = ["IMAGENET_STATS", "DataConfig", "DeviceLoader", "ImageDataLoaders", "derived_seed"]
