"""Labelling rules on real images, and bad files found up front with reasons."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from core.engine.errors import DataError
from core.engine.labelling import from_csv, from_df, from_folder, from_name_func, from_name_re
from core.engine.rules import LabelRule
from tests.conftest import FASHION_4


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_from_folder_labels_by_parent_and_splits(fashion_folder: Path) -> None:
    items = from_folder(fashion_folder, valid_pct=0.25, seed=3)
    assert items.classes == sorted(FASHION_4)
    assert len(items) == 160 and not items.rejected
    counts = items.counts()
    assert sum(c["valid"] for c in counts.values()) == sum(items.is_valid)
    assert all(items.labels[i] == items.keys[i].split("/")[0] for i in range(len(items)))


def test_train_and_valid_folders_make_the_split(fashion_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for cls in ["bag", "dress"]:
        files = sorted((fashion_folder / cls).iterdir())
        for part, chunk in [("train", files[:30]), ("valid", files[30:])]:
            (root / part / cls).mkdir(parents=True)
            for f in chunk:
                shutil.copy(f, root / part / cls / f.name)
    items = from_folder(root)
    assert items.classes == ["bag", "dress"]
    assert sum(items.is_valid) == 20
    assert all(items.keys[i].startswith("valid/") == items.is_valid[i] for i in range(len(items)))


def test_bad_files_are_reported_not_trained_on(fashion_folder: Path, tmp_path: Path) -> None:
    root = _copy(fashion_folder, tmp_path / "ds")
    good = (root / "bag" / "0000.png").read_bytes()
    (root / "bag" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "bag" / "garbage.jpg").write_bytes(b"this is not an image")
    (root / "bag" / "notes.exe").write_bytes(b"MZ")
    (root / "empty_class").mkdir()
    items = from_folder(root)
    reasons = {r.key: r.reason for r in items.rejected}
    assert "unreadable image" in reasons["bag/truncated.png"]
    assert "unreadable image" in reasons["bag/garbage.jpg"]
    assert "unsupported file type" in reasons["bag/notes.exe"]
    assert items.empty_classes == ["empty_class"]
    assert "bag/truncated.png" not in items.keys
    summary = items.summary()
    assert "3 files rejected" in summary and "empty_class" in summary


def test_from_csv_and_from_df(fashion_csv: Path) -> None:
    items = from_csv(fashion_csv, "labels.csv")
    assert items.classes == sorted(FASHION_4) and len(items) == 80
    with (fashion_csv / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert from_df(fashion_csv, rows).keys == items.keys


def test_csv_naming_missing_files_and_escaping_paths(fashion_csv: Path, tmp_path: Path) -> None:
    root = _copy(fashion_csv, tmp_path / "ds")
    with (root / "labels.csv").open("a") as f:
        f.write("images/missing.png,bag\n../../etc/passwd,bag\n")
    items = from_csv(root, "labels.csv")
    reasons = {r.key: r.reason for r in items.rejected}
    assert "row 82: file not found" in reasons["images/missing.png"]
    assert "escapes the dataset folder" in reasons["../../etc/passwd"]
    with pytest.raises(DataError, match="no column 'category'"):
        from_csv(root, "labels.csv", label_col="category")


def test_csv_columns_default_as_fastai_and_a_folder_for_its_names(fashion_csv: Path, tmp_path: Path) -> None:
    """No 'name'/'label' columns: the first and the next, as fastai's fn_col=0, label_col=1; `images_dir` is the
    folder the file names are in (fastai's folder=), never a way out of the dataset."""
    root = _copy(fashion_csv, tmp_path / "ds")
    with (root / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (root / "plain.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "kind"])
        for row in rows:
            w.writerow([row["name"].removeprefix("images/"), row["label"]])
    items = LabelRule.of("csv", {"csv": "plain.csv", "images_dir": "images"}).apply(root)[0]
    assert len(items) == 80 and items.classes == sorted(FASHION_4) and items.keys[0].startswith("images/")
    with pytest.raises(DataError, match="file not found"):  # without the folder every file is missing, and says so
        from_csv(root, "plain.csv")
    with pytest.raises(DataError, match="escapes the dataset folder"):
        LabelRule.of("csv", {"csv": "plain.csv", "images_dir": "../.."}).apply(root)


def test_csv_valid_column(fashion_csv: Path, tmp_path: Path) -> None:
    root = _copy(fashion_csv, tmp_path / "ds")
    with (root / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (root / "split.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["name", "label", "is_valid"])
        w.writeheader()
        for i, row in enumerate(rows):
            w.writerow({**row, "is_valid": "true" if i % 4 == 0 else "false"})
    items = from_csv(root, "split.csv", valid_col="is_valid")
    assert sum(items.is_valid) == 20


def test_from_name_re_and_func(fashion_names: Path) -> None:
    items = from_name_re(fashion_names, r"^([a-z_]+)_\d+\.png$")
    assert items.classes == sorted(FASHION_4) and len(items) == 80
    by_func = from_name_func(fashion_names, lambda key: key.split("_")[0])
    assert by_func.labels == items.labels
    with pytest.raises(DataError, match="needs a group"):
        from_name_re(fashion_names, r"\d+")
    with pytest.raises(DataError, match="not a valid regular expression"):
        from_name_re(fashion_names, r"([a-z")


def test_one_class_is_not_a_dataset(fashion_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(fashion_folder / "bag", root / "bag")
    with pytest.raises(DataError, match="at least 2"):
        from_folder(root)
