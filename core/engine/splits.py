"""Train/valid splits. The random split is decided per item by a hash of (seed, key), so it is stable:
adding items never moves an existing item between train and valid."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

# The split every reader, job spec, upload and CLI verb defaults to (fastai's valid_pct=0.2, seed=42): named once.
VALID_PCT = 0.2
SEED = 42
# What a request may ask for: a share that leaves both sides something on any but the smallest data (a job checks
# its own split too), and a seed every generator takes (numpy's and torch's).
VALID_PCT_RANGE = (0.01, 0.9)
MAX_SEED = 2**32 - 1


def hash_fraction(seed: int, key: str) -> float:
    """A number in [0, 1) that depends only on the seed and the item's key."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by_rand_pct(keys: Sequence[str], valid_pct: float = VALID_PCT, seed: int = SEED) -> list[bool]:
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


MIN_ITEMS_FOR_A_VALID_ITEM = 5


def split_by_rand_pct_per_class(
    keys: Sequence[str], labels: Sequence[str], valid_pct: float = VALID_PCT, seed: int = SEED
) -> list[bool]:
    """The stable hash split, with one guarantee for small data: every class with at least 5 items gets at
    least one validation item (its item with the lowest hash joins validation). Items keep their place as
    data grows, except that one item of a class the hash left out of validation."""
    flags = split_by_rand_pct(keys, valid_pct, seed)
    if valid_pct <= 0:
        return flags
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    for members in by_class.values():
        if len(members) >= MIN_ITEMS_FOR_A_VALID_ITEM and not any(flags[i] for i in members):
            flags[min(members, key=lambda i: hash_fraction(seed, keys[i]))] = True
    return flags


def lopsided_classes(counts: dict[str, dict[str, int]], valid_pct: float) -> list[str]:
    """Warnings for classes whose validation share is far from valid_pct (half or twice it, 10+ items)."""
    out = []
    for name, c in counts.items():
        n = c.get("train", 0) + c.get("valid", 0)
        share = c.get("valid", 0) / n if n else 0.0
        if n >= 10 and (share < valid_pct / 2 or share > valid_pct * 2):
            out.append(
                f"class '{name}': {c.get('valid', 0)} of {n} items in validation ({share:.0%}; valid_pct is "
                f"{valid_pct:.0%}): its validation metrics will be noisy"
            )
    return out
