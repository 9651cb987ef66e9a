"""Train/valid splits. The random split is decided per item by a hash of (seed, key), so it is stable:
adding items never moves an existing item between train and valid."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def hash_fraction(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on the seed and the item's key."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by_rand_pct(keys: Sequence[str], valid_pct: float = 0.2, seed: int = 42) -> list[bool]:
    """Mark about `valid_pct` of the items as validation, stably per item key."""
    if not 0.0 <= valid_pct < 1.0:
        raise ValueError(f"valid_pct must be in [0, 1), got {valid_pct}")
    return [hash_fraction(seed, key) < valid_pct for key in keys]


def split_by_folder(keys: Sequence[str], train: str = "train", valid: str = "valid") -> list[bool]:
    """Mark items whose first path part is `valid` as validation; every key must start with train or valid."""
    flags = []
    for key in keys:
        top = key.replace("\\", "/").split("/", 1)[0]
        if top not in (train, valid):
            raise ValueError(f"'{key}' is in neither '{train}/' nor '{valid}/'")
        flags.append(top == valid)
    return flags


def split_by_column(values: Sequence[str]) -> list[bool]:
    """Read a CSV column of booleans (true/false, 1/0, yes/no, valid/train) as the validation flag."""
    truthy, falsy = {"1", "true", "yes", "valid", "y", "t"}, {"0", "false", "no", "train", "n", "f", ""}
    flags = []
    for row, value in enumerate(values, start=1):
        v = str(value).strip().lower()
        if v not in truthy | falsy:
            raise ValueError(f"row {row}: '{value}' is not a valid-column value (use true/false or 1/0)")
        flags.append(v in truthy)
    return flags
