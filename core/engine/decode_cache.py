"""Each image decoded and resized once per job: the uint8 result (and a target read from a file, a mask) kept in
one preallocated tensor per dataset, so the epochs after the first never open a file or call PIL [issue 24: PIL
decode was ~1.5% of a job every epoch; fastai decodes every epoch].

Where the tensors live: in this process's memory when the cache fits `memory_bytes` and no loader worker needs
to see it; otherwise in a memory-mapped file (numpy.memmap, MAP_SHARED) that the forked DataLoader workers share,
unlinked as soon as it is mapped (nothing is left on disk, even after a crash), while it fits `disk_bytes` and
leaves DISK_MARGIN_BYTES free (its blocks are reserved up front: a full disk means no cache, never a SIGBUS).
Larger datasets are not cached. An item is cached only when its resize does not depend on the epoch (a random
crop of a non-square image does): those are decoded each time, as before."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

MEMORY_BYTES = 2 * 1024**3  # at 64 px, 3 channels: 170,000 images
DISK_BYTES = 16 * 1024**3


@dataclass(frozen=True)
class CacheBudget:
    """How much a dataset's decode cache may take in memory, and in a memory-mapped file."""

    memory_bytes: int = MEMORY_BYTES
    disk_bytes: int = DISK_BYTES


DEFAULT_BUDGET = CacheBudget()


DISK_MARGIN_BYTES = 2 * 1024**3  # what a mapped cache leaves free on its disk, for checkpoints and the rest


def _tensor(shape: tuple[int, ...], dtype: torch.dtype, mapped: bool, folder: str | None) -> torch.Tensor:
    if not mapped:
        return torch.zeros(shape, dtype=dtype)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    nbytes = int(np.prod(shape)) * np_dtype.itemsize
    fd, path = tempfile.mkstemp(prefix="fitcycle-decode-", suffix=".bin", dir=folder)
    try:
        # Every block reserved now: a full disk is an OSError here (no cache), never a SIGBUS mid-epoch.
        os.posix_fallocate(fd, 0, max(1, nbytes))
        array = np.memmap(path, dtype=np_dtype, mode="r+", shape=shape)
    finally:
        os.close(fd)
        os.unlink(path)  # the mapping stays valid; the file's blocks go when the last process unmaps them
    return torch.from_numpy(array)


def _disk_has_room(nbytes: int, folder: str | None) -> bool:
    return shutil.disk_usage(folder or tempfile.gettempdir()).free >= nbytes + DISK_MARGIN_BYTES


class DecodeCache:
    """Slots for n items: each a size x size uint8 image, its original (width, height), and optionally a target
    of a fixed shape and dtype. `get(i)` is None until `put(i, ...)` filled slot i."""

    def __init__(
        self,
        n: int,
        size: int,
        target_example: torch.Tensor | None,
        shared: bool,
        budget: CacheBudget = DEFAULT_BUDGET,
        folder: str | None = None,
    ) -> None:
        image_bytes = n * 3 * size * size
        target_bytes = n * target_example.numel() * target_example.element_size() if target_example is not None else 0
        total = image_bytes + target_bytes
        self.mapped = shared or total > budget.memory_bytes
        limit = budget.disk_bytes if self.mapped else budget.memory_bytes
        self.enabled = n > 0 and total <= limit and (not self.mapped or _disk_has_room(total, folder))
        self.nbytes = total if self.enabled else 0
        if not self.enabled:
            return
        try:
            self.images = _tensor((n, 3, size, size), torch.uint8, self.mapped, folder)
            self.sizes = _tensor((n, 2), torch.int32, self.mapped, folder)
            self.filled = _tensor((n,), torch.uint8, self.mapped, folder)
            self.targets = (
                _tensor((n, *target_example.shape), target_example.dtype, self.mapped, folder)
                if target_example is not None
                else None
            )
        except OSError:  # the disk filled meanwhile: decode every epoch instead
            self.enabled, self.nbytes = False, 0

    def get(self, i: int) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None] | None:
        """Slot i's image (a copy), original (width, height) and target, or None when it is not filled."""
        if not self.enabled or not self.filled[i]:
            return None
        width, height = self.sizes[i].tolist()
        target = self.targets[i].clone() if self.targets is not None else None
        return self.images[i].clone(), (width, height), target

    def put(self, i: int, image: torch.Tensor, width: int, height: int, target: torch.Tensor | None) -> None:
        """Fill slot i (the flag last, so a reader in another worker never sees half an item)."""
        if not self.enabled:
            return
        self.images[i] = image
        self.sizes[i, 0], self.sizes[i, 1] = width, height
        if self.targets is not None and target is not None:
            self.targets[i] = target
        self.filled[i] = 1
