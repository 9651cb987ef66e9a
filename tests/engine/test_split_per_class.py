"""Small data: every class with 5+ items gets a validation item, the hash split stays stable otherwise, and
a class whose validation share is far from valid_pct is reported."""

from __future__ import annotations

from core.engine.splits import lopsided_classes, split_by_rand_pct, split_by_rand_pct_per_class


def test_every_class_of_five_or_more_gets_a_validation_item() -> None:
    keys = [f"{c}/{i}.png" for c in ("a", "b", "c") for i in range(6)]
    labels = [k.split("/")[0] for k in keys]
    for seed in range(40):
        plain = split_by_rand_pct(keys, 0.1, seed)
        flags = split_by_rand_pct_per_class(keys, labels, 0.1, seed)
        for c in ("a", "b", "c"):
            assert any(f for f, lab in zip(flags, labels, strict=True) if lab == c), (seed, c)
        # Only items of classes the hash left without validation move, and only one each.
        moved = [i for i, (p, f) in enumerate(zip(plain, flags, strict=True)) if p != f]
        assert all(flags[i] for i in moved) and len({labels[i] for i in moved}) == len(moved)


def test_classes_under_five_items_are_left_to_the_hash() -> None:
    keys, labels = [f"x/{i}" for i in range(4)], ["x"] * 4
    assert split_by_rand_pct_per_class(keys, labels, 0.01, 1) == split_by_rand_pct(keys, 0.01, 1)


def test_lopsided_classes_are_reported() -> None:
    counts = {"bag": {"train": 28, "valid": 2}, "dress": {"train": 24, "valid": 6}, "hat": {"train": 3, "valid": 0}}
    warnings = lopsided_classes(counts, 0.2)
    assert len(warnings) == 1 and "class 'bag': 2 of 30 items in validation (7%" in warnings[0]
