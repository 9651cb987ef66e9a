"""Labelling rules: which images make a dataset and what each one is [fastai: from_folder, from_csv,
from_df, from_name_re, from_name_func]. Every rule checks every file up front, so a bad image is
reported (counts and the first paths) instead of crashing an epoch."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import regex

from core.engine.errors import DataError
from core.engine.images import image_problem, is_image_name
from core.engine.items import TARGET_ITEMS, ClassItems, LabelItems, MultiLabelItems, Rejected, TargetItems
from core.engine.paths import MAX_TABLE_ROWS, inside, read_csv, read_text
from core.engine.splits import (
    SEED,
    VALID_PCT,
    split_by_column,
    split_by_folder,
    split_by_rand_pct,
    split_by_rand_pct_per_class,
)


def _check_files(root: Path, keys: Sequence[str]) -> list[str | None]:
    """Decode every file once (in threads) and return the problem with each, or None."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda k: image_problem(root / k), keys))


def _finish(
    root: Path,
    keys: list[str],
    labels: list[str],
    is_valid: list[bool],
    rejected: list[Rejected],
    declared_classes: Iterable[str] = (),
    label_delim: str | None = None,
    random_split: tuple[float, int] | None = None,
) -> LabelItems:
    """Drop unreadable files, work out the classes, and refuse datasets that cannot train. A random split
    (valid_pct, seed) is drawn over the readable items, so that every class of 5 or more gets a
    validation item (single-label data)."""
    problems = _check_files(root, keys)
    kept = [i for i, p in enumerate(problems) if p is None]
    rejected = rejected + [Rejected(keys[i], p) for i, p in enumerate(problems) if p is not None]
    keys = [keys[i] for i in kept]
    labels = [labels[i] for i in kept]
    is_valid = [is_valid[i] for i in kept]
    if random_split is not None and label_delim is None:
        is_valid = split_by_rand_pct_per_class(keys, labels, *random_split)
    present = {c for lab in labels for c in lab.split(label_delim) if c} if label_delim else set(labels)
    classes = sorted(present)
    empty = sorted(set(declared_classes) - present)
    items: LabelItems = (
        ClassItems(root, keys, is_valid, classes, rejected, empty, labels=labels)
        if label_delim is None
        else MultiLabelItems(root, keys, is_valid, classes, rejected, empty, labels=labels, label_delim=label_delim)
    )
    if not keys:
        raise DataError(f"no usable image in the dataset folder '{root.name}'.\n{items.summary()}")
    if len(classes) < 2:
        raise DataError(
            f"found {len(classes)} class ({', '.join(classes)}) in '{root.name}': a classifier needs at least 2.\n"
            f"{items.summary()}"
        )
    if not any(is_valid) or all(is_valid):
        which = "validation" if not any(is_valid) else "training"
        raise DataError(f"the split leaves no {which} image; adjust valid_pct or the split rule.\n{items.summary()}")
    return items


def _list_files(root: Path) -> tuple[list[str], list[Rejected]]:
    """Every regular file under root as a sorted posix key; non-image names are rejected with a reason."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images")
    keys, rejected = [], []
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            rejected.append(Rejected(p.relative_to(root).as_posix(), "symbolic links are not followed"))
            continue
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        key = p.relative_to(root).as_posix()
        if is_image_name(p):
            keys.append(key)
        elif p.suffix.lower() not in {".csv", ".json", ".txt", ".md"}:
            rejected.append(Rejected(key, f"unsupported file type '{p.suffix or '(none)'}'"))
    return keys, rejected


def from_folder(
    root: str | Path, train: str = "train", valid: str = "valid", valid_pct: float = VALID_PCT, seed: int = SEED
) -> LabelItems:
    """Label each image by its parent folder. With train/ and valid/ folders they make the split;
    otherwise a stable random split of `valid_pct`."""
    root = Path(root)
    keys, rejected = _list_files(root)
    by_folder = (root / train).is_dir() and (root / valid).is_dir()
    if by_folder:
        keys = [k for k in keys if k.split("/", 1)[0] in (train, valid)]
    keys = [k for k in keys if "/" in k]  # an image directly under root has no class folder
    labels = [k.rsplit("/", 2)[-2] for k in keys]
    flags = split_by_folder(keys, train, valid) if by_folder else split_by_rand_pct(keys, valid_pct, seed)
    declared = {
        d.name
        for base in ([root / train, root / valid] if by_folder else [root])
        if base.is_dir()
        for d in base.iterdir()
        if d.is_dir() and not d.name.startswith(".")
    }
    return _finish(root, keys, labels, flags, rejected, declared, random_split=None if by_folder else (valid_pct, seed))


def default_columns(columns: Sequence[str], fn_col: str | None, label_col: str | None) -> tuple[str, str]:
    """The file-name and label columns when not named: 'name' and 'label' where the table has them, else the
    first and the second column [fastai: fn_col=0, label_col=1]."""
    cols = [str(c) for c in columns]
    fn = fn_col if fn_col is not None else ("name" if "name" in cols else cols[0] if cols else "name")
    rest = [c for c in cols if c != fn]
    label = label_col if label_col is not None else ("label" if "label" in cols else rest[0] if rest else "label")
    return fn, label


def from_rows(
    root: str | Path,
    rows: Iterable[Mapping[str, Any]],
    fn_col: str | None = None,
    label_col: str | None = None,
    valid_col: str | None = None,
    valid_pct: float = VALID_PCT,
    seed: int = SEED,
    source: str = "rows",
    label_delim: str | None = None,
    folder: str | None = None,
) -> LabelItems:
    """Label images from records of (file name, label[, is_valid]) [fastai: from_df]. With `label_delim`
    the label column lists several classes (multi-label, [fastai: label_from_df(label_delim=' ')]); with
    `folder`, file names are inside that folder of root [fastai: from_csv(folder=...)]. Columns not named
    are found by default_columns."""
    root = Path(root).resolve()
    keys, labels, valid_values, rejected = [], [], [], []
    seen: set[Path] = set()
    prefix = f"{folder.strip('/')}/" if folder and folder.strip("/") else ""
    for n, row in enumerate(rows, start=2 if source.endswith(".csv") else 1):
        fn_col, label_col = default_columns(list(row), fn_col, label_col)
        for col in (fn_col, label_col, *([valid_col] if valid_col else [])):
            if col not in row:
                raise DataError(f"{source}: no column '{col}' (columns are: {', '.join(map(str, row))})")
        name = prefix + str(row[fn_col]).strip()
        label = str(row[label_col]).strip()
        target = row_target(root, name)
        if target is None:
            rejected.append(Rejected(name[:200], f"{source} row {n}: path escapes the dataset folder"))
        elif target in seen:
            rejected.append(Rejected(name[:200], f"{source} row {n}: the file is listed on an earlier row"))
        elif not target.is_file():
            rejected.append(Rejected(name, f"{source} row {n}: file not found"))
        elif not label and label_delim is None:
            rejected.append(Rejected(name, f"{source} row {n}: empty label"))
        else:
            seen.add(target)
            keys.append(target.relative_to(root).as_posix())
            labels.append(label)
            valid_values.append(str(row[valid_col]) if valid_col else "")
    try:
        flags = split_by_column(valid_values) if valid_col else split_by_rand_pct(keys, valid_pct, seed)
    except ValueError as exc:
        raise DataError(f"{source}, column '{valid_col}': {exc}") from exc
    if label_delim is not None:
        labels = [label_delim.join(sorted({c for c in lab.split(label_delim) if c})) for lab in labels]
    random_split = None if valid_col else (valid_pct, seed)
    return _finish(root, keys, labels, flags, rejected, label_delim=label_delim, random_split=random_split)


def row_target(root: Path, name: str) -> Path | None:
    """A file name from a table row resolved inside root, or None when it is not a path inside it."""
    try:
        return inside(root, name, "row")
    except DataError:
        return None


def from_df(root: str | Path, df: Any, **kwargs: Any) -> LabelItems:
    """Label images from a pandas DataFrame (or a list of dicts) with file-name and label columns."""
    rows = df.to_dict("records") if hasattr(df, "to_dict") else list(df)
    return from_rows(root, rows, source="dataframe", **kwargs)


def from_csv(
    root: str | Path, csv_path: str, fn_col: str | None = None, label_col: str | None = None, **kwargs: Any
) -> LabelItems:
    """Label images from a CSV file (a path inside root) with a header naming the file-name and label columns."""
    path = inside(root, str(csv_path), "csv")
    if not path.is_file():
        raise DataError(f"csv: no file '{csv_path}' in the dataset")
    _, rows = read_csv(path, "csv", str(csv_path))
    if not rows:
        raise DataError(f"csv: '{csv_path}' has a header but no rows")
    return from_rows(root, rows, fn_col, label_col, source=path.name, **kwargs)


def from_name_func(
    root: str | Path, label_func: Callable[[str], str | None], valid_pct: float = VALID_PCT, seed: int = SEED
) -> LabelItems:
    """Label each image by a function of its path relative to root; None or '' rejects the file."""
    root = Path(root)
    keys, rejected = _list_files(root)
    kept_keys, labels = [], []
    for key in keys:
        label = label_func(key)
        if label:
            kept_keys.append(key)
            labels.append(str(label))
        else:
            rejected.append(Rejected(key, "the labelling rule gave no label"))
    flags = split_by_rand_pct(kept_keys, valid_pct, seed)
    return _finish(root, kept_keys, labels, flags, rejected, random_split=(valid_pct, seed))


MAX_PATTERN_CHARS = 500
MATCH_SECONDS = 0.05  # one file name
MATCHING_BUDGET_SECONDS = 5.0  # all file names of one dataset


def name_pattern(pattern: str) -> Callable[[str], str | None]:
    """A user's regular expression as a labelling function (group 1 of a search in the file name). Matching
    runs under the `regex` package's timeout: a pattern that backtracks without end (`^((a+)+)$`) stops at
    MATCH_SECONDS per name and MATCHING_BUDGET_SECONDS per dataset with a DataError, instead of holding a CPU."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise DataError(f"pattern: over {MAX_PATTERN_CHARS} characters; a file-name pattern needs far fewer")
    try:
        compiled = regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError) as exc:
        raise DataError(f"pattern: not a valid regular expression: {str(exc)[:200]}") from None
    if compiled.groups < 1:
        raise DataError("pattern: needs a group, e.g. '^([a-z]+)_\\d+\\.png$', to capture the label")
    spent = 0.0

    def label(key: str) -> str | None:
        nonlocal spent
        name = key.rsplit("/", 1)[-1]
        start = time.monotonic()
        try:
            match = compiled.search(name, timeout=max(0.001, min(MATCH_SECONDS, MATCHING_BUDGET_SECONDS - spent)))
        except TimeoutError:
            raise DataError(
                f"pattern: matching gave up after {MATCH_SECONDS}s on one file name (or {MATCHING_BUDGET_SECONDS}s "
                "in all): nested repetition like '(a+)+' backtracks without end; simplify the pattern"
            ) from None
        spent += time.monotonic() - start
        return match.group(1) if match else None

    return label


def from_name_re(root: str | Path, pattern: str, valid_pct: float = VALID_PCT, seed: int = SEED) -> LabelItems:
    """Label each image by the first group of a regular expression searched in its file name."""
    return from_name_func(root, name_pattern(pattern), valid_pct, seed)


TargetRecord = tuple[int, str, list[float] | None, str]  # (row number, file name, numbers or None, valid flag)


def _target_type(kind: str) -> type[TargetItems]:
    """The items type of a regression labelling rule ("points" or "values")."""
    if kind not in TARGET_ITEMS:
        raise DataError(f"target kind must be one of {', '.join(TARGET_ITEMS)}; got {kind!r}")
    return TARGET_ITEMS[kind]


def from_targets_csv(
    root: str | Path,
    csv_path: str | Path,
    kind: str = "points",
    fn_col: str = "name",
    valid_col: str | None = None,
    valid_pct: float = VALID_PCT,
    seed: int = SEED,
) -> TargetItems:
    """Regression targets from a CSV: a file-name column, then numbers. kind=points: the numbers are x, y
    pairs in the image's own pixels (columns like nose_x, nose_y); kind=values: any numbers. A .json file
    is read by from_targets_json."""
    items_type = _target_type(kind)
    if str(csv_path).lower().endswith(".json"):
        return from_targets_json(root, csv_path, kind, fn_col, valid_col, valid_pct, seed)
    root = Path(root).resolve()
    csv_path = inside(root, str(csv_path), "csv")
    if not csv_path.is_file():
        raise DataError(f"csv: no file '{csv_path.relative_to(root).as_posix()}' in the dataset")
    columns, rows = read_csv(csv_path, "csv", csv_path.name)
    header = [h for h in columns if h not in (fn_col, valid_col)]
    if fn_col not in columns:
        raise DataError(f"{csv_path.name}: no column '{fn_col}' (columns are: {', '.join(columns)})")
    if not header or (items_type.pairs and len(header) % 2):
        raise DataError(f"{csv_path.name}: points need x, y column pairs after '{fn_col}'; found {header}")
    records: list[TargetRecord] = []
    for n, row in enumerate(rows, start=2):
        try:
            values: list[float] | None = [float(row[h]) for h in header]
        except (TypeError, ValueError):
            values = None
        records.append((n, str(row[fn_col]).strip(), values, str(row[valid_col]) if valid_col else ""))
    names = items_type.target_names(header)
    return _targets_items(root, csv_path.name, items_type, names, records, valid_col, valid_pct, seed)


def from_targets_json(
    root: str | Path,
    json_path: str | Path,
    kind: str = "points",
    fn_col: str = "name",
    valid_col: str | None = None,
    valid_pct: float = VALID_PCT,
    seed: int = SEED,
) -> TargetItems:
    """Regression targets from JSON: either {"file name": targets, ...} or a list of records
    [{"name": ..., "points": [[x, y], ...]} or {"name": ..., "values": [...]}, ...]. Points are x, y pairs in
    the image's own pixels (a flat [x0, y0, x1, y1] list is accepted too); they are named p0, p1, ..."""
    items_type = _target_type(kind)
    root = Path(root).resolve()
    path = inside(root, str(json_path), "csv")
    if not path.is_file():
        raise DataError(f"csv: no file '{path.relative_to(root).as_posix()}' in the dataset")
    try:
        data = json.loads(read_text(path, "csv", path.name))
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f"line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "nesting"
        raise DataError(f"{path.name} is not valid JSON ({where}); check the file") from None
    if isinstance(data, dict):
        raw = [(n, str(name), targets, "") for n, (name, targets) in enumerate(data.items(), start=1)]
    elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
        raw = [
            (n, str(r.get(fn_col, "")), r.get(kind), str(r.get(valid_col, "")) if valid_col else "")
            for n, r in enumerate(data, start=1)
        ]
    else:
        raise DataError(
            f'{path.name}: expected {{"file name": targets, ...}} or [{{"{fn_col}": ..., "{kind}": [...]}}, ...]'
        )
    records: list[TargetRecord] = []
    for n, name, targets, valid in raw:
        flat = _flatten_numbers(targets)
        if flat is not None and items_type.pairs and len(flat) % 2:
            flat = None
        records.append((n, name, flat, valid))
    lengths = Counter(len(r[2]) for r in records if r[2] is not None)
    if not lengths:
        raise DataError(f"{path.name}: no record has {kind} as a list of numbers")
    width = lengths.most_common(1)[0][0]
    records = [(n, name, v if v is not None and len(v) == width else None, valid) for n, name, v, valid in records]
    return _targets_items(
        root, path.name, items_type, items_type.default_names(width), records, valid_col, valid_pct, seed
    )


def _flatten_numbers(targets: Any) -> list[float] | None:
    """[[x, y], ...] or [a, b, ...] as a flat list of floats; None when it is anything else."""
    if not isinstance(targets, list):
        return None
    flat = [v for t in targets for v in (t if isinstance(t, list) else [t])]
    if not flat or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        return None
    return [float(v) for v in flat]


def _targets_items(
    root: Path,
    source: str,
    items_type: type[TargetItems],
    names: list[str],
    records: list[TargetRecord],
    valid_col: str | None,
    valid_pct: float,
    seed: int,
) -> TargetItems:
    """Check each record's file and numbers, split, and make the items of a regression dataset."""
    keys, targets, valid_values, rejected = [], [], [], []
    seen: set[Path] = set()
    if len(records) > MAX_TABLE_ROWS:
        raise DataError(f"{source}: more than {MAX_TABLE_ROWS:,} records; split the dataset")
    for n, name, values, valid in records:
        target = row_target(root, name)
        if values is None:
            rejected.append(
                Rejected(
                    name[:200], f"{source} row {n}: the targets are not {len(names)} {items_type.target_kind} numbers"
                )
            )
        elif target is None:
            rejected.append(Rejected(name[:200], f"{source} row {n}: path escapes the dataset folder"))
        elif target in seen:
            rejected.append(Rejected(name[:200], f"{source} row {n}: the file is listed on an earlier row"))
        elif not target.is_file():
            rejected.append(Rejected(name[:200], f"{source} row {n}: file not found"))
        else:
            seen.add(target)
            keys.append(target.relative_to(root).as_posix())
            targets.append(values)
            valid_values.append(valid)
    try:
        flags = split_by_column(valid_values) if valid_col else split_by_rand_pct(keys, valid_pct, seed)
    except ValueError as exc:
        raise DataError(f"{source}, '{valid_col}': {exc}") from exc
    problems = _check_files(root, keys)
    keep = [i for i, p in enumerate(problems) if p is None]
    rejected += [Rejected(keys[i], p) for i, p in enumerate(problems) if p is not None]
    items = items_type(
        root,
        [keys[i] for i in keep],
        [flags[i] for i in keep],
        names,
        rejected,
        targets=[targets[i] for i in keep],
    )
    if not items.keys:
        raise DataError(f"no usable image in {source}.\n{items.summary()}")
    if not any(items.is_valid) or all(items.is_valid):
        raise DataError(f"the split leaves no validation or no training image.\n{items.summary()}")
    return items
