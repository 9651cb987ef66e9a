"""Text datasets: a CSV of texts (`labels=text_csv`) or IMDB's folder layout (`labels=text_folder`) become
`TextItems` [fastai: TextDataLoaders.from_csv / from_folder]. A row (or file) with an empty label is unlabelled:
kept for the language model. Each unusable row — no text, not UTF-8, over the length cap — is reported by its
key and reason, as an unreadable image is; the others are kept."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from core.engine.errors import DataError
from core.engine.items import Rejected, TextItems
from core.engine.paths import inside
from core.engine.splits import SEED, VALID_PCT, split_by_rand_pct

MAX_TEXT_CHARS = 100_000  # one review, one document: a longer text is a file to split, not a row
MAX_TEXT_TABLE_BYTES = 512 * 1024**2
MAX_TEXT_ROWS = 1_000_000
DEFAULT_CSV = "texts.csv"
VALID_FOLDERS = ("valid", "test")  # IMDB calls its held-out half test/
UNLABELLED_FOLDER = "unsup"
TRUE = {"1", "true", "yes", "valid", "t", "y"}


def _check_text(raw: str, key: str, rejected: list[Rejected]) -> str | None:
    """The text, or None with the reason recorded."""
    if any("\udc80" <= c <= "\udcff" for c in raw):
        rejected.append(Rejected(key, "not UTF-8 text"))
        return None
    text = raw.strip()
    if not text:
        rejected.append(Rejected(key, "empty text"))
        return None
    if len(text) > MAX_TEXT_CHARS:
        rejected.append(Rejected(key, f"over {MAX_TEXT_CHARS:,} characters"))
        return None
    return text


def _csv_path(root: Path, name: str | None) -> tuple[Path, str]:
    """The table: the one named, else texts.csv, else the only CSV at the dataset's root (a bare .csv upload)."""
    chosen = name or DEFAULT_CSV
    path = inside(root, chosen, "csv")
    if path.is_file():
        return path, chosen
    if name is None:
        found = sorted(root.glob("*.csv"))
        if len(found) == 1:
            return found[0], found[0].name
    raise DataError(f"csv: no file '{chosen}' in the dataset; name the table with csv=NAME")


def from_text_csv(
    root: str | Path,
    csv_name: str | None = None,
    text_col: str | None = None,
    label_col: str | None = None,
    valid_col: str | None = None,
    label_delim: str | None = None,
    valid_pct: float = VALID_PCT,
    seed: int = SEED,
) -> TextItems:
    """Texts from a CSV with a header: `text_col` (default 'text'), `label_col` (default 'label'; an empty cell or no
    such column: unlabelled), `valid_col` (a fixed split), `label_delim` (several classes per text)."""
    root = Path(root)
    path, shown = _csv_path(root, csv_name)
    if path.stat().st_size > MAX_TEXT_TABLE_BYTES:
        raise DataError(f"csv: '{shown}' is over {MAX_TEXT_TABLE_BYTES // 1024**2} MiB; split the dataset")
    data = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.DictReader(io.StringIO(data, newline=""))
    columns = [str(c) for c in (reader.fieldnames or [])]
    text_col, label_col = text_col or "text", label_col or ("label" if label_col is None else label_col)
    if text_col not in columns:
        raise DataError(
            f"text_col: '{shown}' has no column '{text_col}' (it has {', '.join(columns[:10]) or 'none'}); name the "
            "texts' column with text_col (CLI: --text-col)"
        )
    if label_col not in columns and label_col != "label":
        raise DataError(f"label_col: '{shown}' has no column '{label_col}' (it has {', '.join(columns[:10])})")
    if valid_col is not None and valid_col not in columns:
        raise DataError(f"valid_col: '{shown}' has no column '{valid_col}' (it has {', '.join(columns[:10])})")
    keys: list[str] = []
    texts: list[str] = []
    labels: list[str] = []
    flags: list[bool] = []
    rejected: list[Rejected] = []
    try:
        for n, row in enumerate(reader, start=1):
            if n > MAX_TEXT_ROWS:
                raise DataError(f"csv: '{shown}' has more than {MAX_TEXT_ROWS:,} rows; split the dataset")
            key = f"{shown}#{n}"
            text = _check_text(row.get(text_col) or "", key, rejected)
            label = (row.get(label_col) or "").strip()
            if text is None:
                continue
            if any("\udc80" <= c <= "\udcff" for c in label) or any(ord(c) < 32 for c in label) or "/" in label:
                rejected.append(Rejected(key, "a label with control characters, '/' or bytes that are not UTF-8"))
                continue
            if label_delim:
                label = label_delim.join(sorted({c.strip() for c in label.split(label_delim) if c.strip()}))
            keys.append(key)
            texts.append(text)
            labels.append(label)
            if valid_col is not None:
                flags.append((row.get(valid_col) or "").strip().lower() in TRUE)
    except csv.Error as exc:
        raise DataError(f"csv: '{shown}' line {reader.line_num}: {exc}") from None
    if not keys:
        raise DataError(f"csv: '{shown}' has no usable text ({len(rejected)} rows rejected)")
    if valid_col is None:
        flags = split_by_rand_pct(keys, valid_pct, seed)
    return _items(root, keys, texts, labels, flags, rejected, label_delim)


def from_text_folder(root: str | Path, valid_pct: float = VALID_PCT, seed: int = SEED) -> TextItems:
    """IMDB's layout: `train/{label}/*.txt`, `valid/` or `test/{label}/*.txt` (a fixed split), `unsup/*.txt`
    (unlabelled); without a train/ folder, `{label}/*.txt` with a random split."""
    root = Path(root)
    keys: list[str] = []
    texts: list[str] = []
    labels: list[str] = []
    flags: list[bool] = []
    rejected: list[Rejected] = []
    fixed = (root / "train").is_dir()
    valid_dir = next((d for d in VALID_FOLDERS if (root / d).is_dir()), None) if fixed else None
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        key = path.relative_to(root).as_posix()
        parts = key.split("/")
        if path.suffix.lower() != ".txt":
            if path.suffix.lower() != ".csv":
                rejected.append(Rejected(key, "not a .txt file"))
            continue
        if parts[0] == UNLABELLED_FOLDER:
            label, valid = "", False
        elif fixed and parts[0] in ("train", valid_dir) and len(parts) >= 3:
            label, valid = parts[1], parts[0] == valid_dir
        elif not fixed and len(parts) >= 2:
            label, valid = parts[0], False
        else:
            rejected.append(Rejected(key, "not in a class folder (train/LABEL/, valid/LABEL/ or unsup/)"))
            continue
        if path.stat().st_size > 4 * MAX_TEXT_CHARS:
            rejected.append(Rejected(key, f"over {MAX_TEXT_CHARS:,} characters"))
            continue
        text = _check_text(path.read_bytes().decode("utf-8", errors="surrogateescape"), key, rejected)
        if text is None:
            continue
        keys.append(key)
        texts.append(text)
        labels.append(label)
        flags.append(valid)
    if not keys:
        raise DataError("the dataset has no usable .txt file (train/LABEL/*.txt, unsup/*.txt)")
    if not fixed:
        flags = split_by_rand_pct(keys, valid_pct, seed)
    return _items(root, keys, texts, labels, flags, rejected, None)


def _items(
    root: Path,
    keys: list[str],
    texts: list[str],
    labels: list[str],
    flags: list[bool],
    rejected: list[Rejected],
    label_delim: str | None,
) -> TextItems:
    classes = sorted({c for label in labels if label for c in (label.split(label_delim) if label_delim else [label])})
    return TextItems(root, keys, flags, classes, rejected, labels=labels, texts=texts, label_delim=label_delim or None)
