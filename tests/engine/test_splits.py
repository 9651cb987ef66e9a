"""The random split is stable per item: new items never move old ones."""

import pytest

from core.engine.splits import split_by_column, split_by_folder, split_by_rand_pct


def test_adding_items_keeps_every_existing_assignment() -> None:
    keys = [f"cls/{i}.png" for i in range(500)]
    before = dict(zip(keys, split_by_rand_pct(keys, 0.2, seed=7), strict=True))
    more = keys + [f"cls/new_{i}.png" for i in range(500)]
    after = dict(zip(more, split_by_rand_pct(more, 0.2, seed=7), strict=True))
    assert all(after[k] == v for k, v in before.items())


def test_share_and_seed() -> None:
    keys = [f"{i}.png" for i in range(4000)]
    flags = split_by_rand_pct(keys, 0.2, seed=1)
    assert 0.17 < sum(flags) / len(flags) < 0.23
    assert flags != split_by_rand_pct(keys, 0.2, seed=2)
    with pytest.raises(ValueError, match="valid_pct"):
        split_by_rand_pct(keys, 1.5)


def test_folder_and_column_splits() -> None:
    assert split_by_folder(["train/a/1.png", "valid/a/2.png"]) == [False, True]
    with pytest.raises(ValueError, match="neither"):
        split_by_folder(["other/a/1.png"])
    assert split_by_column(["true", "0", "valid", "no"]) == [True, False, True, False]
    with pytest.raises(ValueError, match="row 2"):
        split_by_column(["1", "maybe"])
