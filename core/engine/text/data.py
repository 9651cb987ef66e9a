"""Batches of text [fastai: LMDataLoader, SortedDL with pad_input_chunk]. A language model reads the texts of an
epoch (shuffled, then joined) as `bs` parallel streams, `seq_len` tokens at a time, predicting each next token. A
classifier reads whole texts, padded at the front to the longest of their batch; texts of similar length share a
batch (sorted by length within shuffled chunks of 50 batches), so padding stays small. Both loaders are positioned
by (stream, epoch, batch) like the image loaders, so a resumed job reads exactly the batches it would have."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.engine.data import derived_seed
from core.engine.text.awd_lstm import PAD_INDEX

SORT_CHUNK = 50  # batches per chunk sorted by length (fastai's SortedDL sorts chunks of bs * 50)


@dataclass
class TextDataConfig:
    """How tokens become batches (what a checkpoint and the learner ask of a loader's config)."""

    bs: int = 64
    seq_len: int = 72
    seed: int = 42


class _Positioned:
    """set_epoch / start_batch, as the Learner drives every loader."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.stream, self.epoch, self.start_batch = 0, 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0, stream: int | None = None) -> None:
        if stream is not None:
            self.stream = stream
        self.epoch, self.start_batch = epoch, start_batch

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(derived_seed(self.seed, "text", self.stream, self.epoch))

    def n_batches_left(self) -> int:
        return len(self) - self.start_batch  # type: ignore[arg-type]


class LMLoader(_Positioned):
    """The language model's batches: (tokens, next tokens), each (bs, seq_len) (the last batch may be shorter)."""

    def __init__(
        self, texts: Sequence[np.ndarray], bs: int, seq_len: int, shuffle: bool, seed: int, device: torch.device
    ) -> None:
        super().__init__(seed)
        self.texts, self.bs, self.seq_len, self.shuffle, self.device = list(texts), bs, seq_len, shuffle, device
        self.n_tokens = int(sum(len(t) for t in self.texts))
        self.per_stream = max(0, (self.n_tokens - 1) // bs)

    def __len__(self) -> int:
        return -(-self.per_stream // self.seq_len)

    def stream_matrix(self) -> np.ndarray:
        """This epoch's tokens as (bs, per_stream + 1): the texts in this epoch's order, joined and cut in bs rows."""
        order = self.rng().permutation(len(self.texts)) if self.shuffle else np.arange(len(self.texts))
        joined = np.concatenate([self.texts[i] for i in order]) if self.texts else np.zeros(0, np.int64)
        n = self.per_stream
        rows = [joined[r * n : r * n + n + 1] for r in range(self.bs)]
        return np.stack(rows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        streams = torch.from_numpy(self.stream_matrix())
        for b in range(self.start_batch, len(self)):
            lo, hi = b * self.seq_len, min((b + 1) * self.seq_len, self.per_stream)
            x, y = streams[:, lo:hi], streams[:, lo + 1 : hi + 1]
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.set_epoch(self.epoch, 0)


def pad_front(texts: Sequence[np.ndarray], pad: int = PAD_INDEX) -> torch.Tensor:
    """Texts of token ids as one (n, longest) batch, padded at the front."""
    width = max(1, max(len(t) for t in texts))
    out = np.full((len(texts), width), pad, dtype=np.int64)
    for i, t in enumerate(texts):
        if len(t):
            out[i, width - len(t) :] = t
    return torch.from_numpy(out)


class SortedLoader(_Positioned):
    """The classifier's batches: (front-padded token ids, targets). Training: shuffled, sorted by length within
    chunks of 50 batches, the batches of a chunk shuffled, the last incomplete batch dropped; validation: longest
    first, every item."""

    def __init__(
        self,
        texts: Sequence[np.ndarray],
        targets: torch.Tensor,
        bs: int,
        shuffle: bool,
        seed: int,
        device: torch.device,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__(seed)
        # A text longer than the encoder keeps is cut to its last max_tokens tokens (what the classifier reads).
        self.texts = [t[-max_tokens:] if max_tokens else t for t in texts]
        self.targets, self.bs, self.shuffle, self.device = targets, bs, shuffle, device
        self.lengths = np.array([len(t) for t in self.texts])
        self.drop_last = shuffle and len(self.texts) > bs

    def __len__(self) -> int:
        n = len(self.texts)
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches of item indices."""
        n = len(self.texts)
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")
            return [order[i : i + self.bs] for i in range(0, n, self.bs)]
        rng = self.rng()
        order = rng.permutation(n)[: len(self) * self.bs]
        chunk = self.bs * SORT_CHUNK
        batches: list[np.ndarray] = []
        for c in range(0, len(order), chunk):
            part = order[c : c + chunk]
            part = part[np.argsort(-self.lengths[part], kind="stable")]
            batches += [part[i : i + self.bs] for i in range(0, len(part), self.bs)]
        first, rest = batches[:1], batches[1:]  # the longest batch first: memory runs out at once or never
        return first + [rest[i] for i in rng.permutation(len(rest))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.batches()[self.start_batch :]:
            x = pad_front([self.texts[i] for i in idx])
            y = self.targets[torch.from_numpy(idx)]
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self.set_epoch(self.epoch, 0)


@dataclass
class TextDataLoaders:
    """A training and a validation loader, their device and config (what the Learner and its callbacks read)."""

    train: LMLoader | SortedLoader
    valid: LMLoader | SortedLoader
    device: torch.device
    config: TextDataConfig
