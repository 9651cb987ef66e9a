"""Segmentation labelling [fastai: SegmentationItemList / SegmentationDataLoaders]: image and mask pairs
matched by a naming rule or a CSV, a `codes` list naming each mask value, and an optional void code that
the loss and the metrics ignore. Every pair is checked up front: both decode, same size, single-channel
mask, no value without a code."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from core.engine.errors import DataError
from core.engine.images import MAX_PIXELS, image_problem, is_image_name
from core.engine.items import MaskItems, Rejected
from core.engine.labelling import row_target
from core.engine.paths import check_template, fill_template, inside, read_csv, read_text
from core.engine.splits import SEED, VALID_PCT, split_by_column, split_by_rand_pct

CODES_FILE = "codes.txt"
MASK_MODES = frozenset({"L", "P", "1", "I", "I;16"})
MAX_CODES = 255


def read_codes(root: Path, codes: Sequence[str] | None, codes_file: str | None = None) -> list[str]:
    """The code names: given, else one per line of codes_file (default codes.txt in the dataset folder)."""
    if codes:
        names = [str(c).strip() for c in codes]
    else:
        path = inside(root, codes_file or CODES_FILE, "codes_file")
        if not path.is_file():
            raise DataError(
                f"segmentation needs the name of each mask value: pass codes (e.g. background,road,car) "
                f"or put a {codes_file or CODES_FILE} in the dataset folder, one name per line, in value order"
            )
        text = read_text(path, "codes_file", path.name, max_bytes=64 * 1024)
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(names)) != len(names) or not all(names):
        raise DataError(f"codes must be distinct, non-empty names; got {names}")
    if not 2 <= len(names) <= MAX_CODES:
        raise DataError(f"segmentation needs 2 to {MAX_CODES} codes; got {len(names)}")
    return names


def resolve_void(codes: list[str], void: str | None) -> int | None:
    """The void code's value, from its name."""
    if void is None or void == "":
        return None
    if void not in codes:
        raise DataError(f"the void code '{void}' is not one of the codes {codes}")
    if len(codes) - 1 < 2:
        raise DataError(f"besides the void code '{void}' segmentation needs at least 2 codes; got {codes}")
    return codes.index(void)


def mask_problem(image: Path, mask: Path, n_codes: int) -> str | None:
    """Why an image/mask pair cannot be used, or None."""
    problem = image_problem(image)
    if problem is not None:
        return problem
    if not mask.is_file():
        return "no mask file"
    try:
        with Image.open(image) as img:
            size = img.size
        with Image.open(mask) as m:
            if m.mode not in MASK_MODES:
                return (
                    f"mask is {m.mode}: a mask must be single-channel (grayscale or palette PNG), "
                    "each pixel's value the index of its code"
                )
            if m.width * m.height > MAX_PIXELS:
                return f"mask is {m.width}x{m.height}, over the pixel limit"
            if m.size != size:
                return f"mask is {m.width}x{m.height} but the image is {size[0]}x{size[1]}"
            top = int(np.asarray(m).max())
    except Image.DecompressionBombError:
        return "mask is over the pixel limit"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"unreadable mask: {exc}"
    if top >= n_codes:
        return f"mask value {top} has no code (there are {n_codes} codes, values 0-{n_codes - 1})"
    return None


def open_mask(path: Path) -> Image.Image:
    """A mask as an 8-bit image of code values."""
    with Image.open(path) as m:
        if m.mode in ("L", "P"):
            return m.copy() if m.mode == "L" else Image.fromarray(np.asarray(m))
        return Image.fromarray(np.asarray(m).astype(np.uint8))


def _finish_pairs(
    root: Path,
    keys: list[str],
    masks: list[str],
    flags: list[bool],
    rejected: list[Rejected],
    codes: list[str],
    void_code: int | None,
    source: str,
) -> MaskItems:
    with ThreadPoolExecutor(max_workers=4) as pool:
        problems = list(
            pool.map(lambda km: mask_problem(root / km[0], root / km[1], len(codes)), zip(keys, masks, strict=True))
        )
    keep = [i for i, p in enumerate(problems) if p is None]
    rejected = rejected + [Rejected(keys[i], f"{p} ({masks[i]})") for i, p in enumerate(problems) if p is not None]
    classes = [c for i, c in enumerate(codes) if i != void_code]
    items = MaskItems(
        root,
        [keys[i] for i in keep],
        [flags[i] for i in keep],
        classes,
        rejected,
        masks=[masks[i] for i in keep],
        codes=codes,
        void_code=void_code,
    )
    if not items.keys:
        raise DataError(f"no usable image/mask pair ({source}).\n{items.summary()}")
    if not any(items.is_valid) or all(items.is_valid):
        raise DataError(f"the split leaves no validation or no training pair.\n{items.summary()}")
    return items


def from_mask_rule(
    root: str | Path,
    codes: Sequence[str] | None = None,
    void: str | None = None,
    images: str = "images",
    mask_template: str = "masks/{stem}.png",
    codes_file: str | None = None,
    valid_pct: float = VALID_PCT,
    seed: int = SEED,
) -> MaskItems:
    """Pair every image under `images/` with the mask the template names, relative to root [fastai:
    get_y_fn]. Placeholders: {stem} (file name without extension), {name}, {suffix}, {parent} (the image's
    folder relative to images/). The default pairs images/a.jpg with masks/a.png."""
    root = Path(root).resolve()
    check_template(mask_template)
    names = read_codes(root, codes, codes_file)
    void_code = resolve_void(names, void)
    folder = inside(root, images, "images_dir")
    if not folder.is_dir():
        raise DataError(f"images_dir: no '{images}' folder in the dataset: the naming rule looks for the images there")
    keys, masks, rejected = [], [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.is_symlink() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        key = p.relative_to(root).as_posix()
        if not is_image_name(p):
            rejected.append(Rejected(key, f"unsupported file type '{p.suffix or '(none)'}'"))
            continue
        parent = p.parent.relative_to(folder).as_posix()
        values = {"stem": p.stem, "name": p.name, "suffix": p.suffix, "parent": parent}
        mask_key = fill_template(mask_template, values)
        try:
            target = inside(root, mask_key, "mask_template")
        except DataError:
            rejected.append(Rejected(key, "its mask path escapes the dataset folder"))
            continue
        keys.append(key)
        masks.append(target.relative_to(root).as_posix())
    return _finish_pairs(
        root, keys, masks, split_by_rand_pct(keys, valid_pct, seed), rejected, names, void_code, mask_template
    )


def from_mask_csv(
    root: str | Path,
    csv_path: str | Path,
    codes: Sequence[str] | None = None,
    void: str | None = None,
    fn_col: str = "name",
    mask_col: str = "mask",
    valid_col: str | None = None,
    codes_file: str | None = None,
    valid_pct: float = VALID_PCT,
    seed: int = SEED,
) -> MaskItems:
    """Pairs from a CSV with an image column and a mask column (paths relative to root)."""
    root = Path(root).resolve()
    names = read_codes(root, codes, codes_file)
    void_code = resolve_void(names, void)
    path = inside(root, str(csv_path), "csv")
    if not path.is_file():
        raise DataError(f"csv: no file '{path.relative_to(root).as_posix()}' in the dataset")
    columns, rows = read_csv(path, "csv", path.name)
    for col in (fn_col, mask_col, *([valid_col] if valid_col else [])):
        if col not in columns:
            raise DataError(f"{path.name}: no column '{col}' (columns are: {', '.join(columns)})")
    keys, masks, valid_values, rejected = [], [], [], []
    seen: set[Path] = set()
    for n, row in enumerate(rows, start=2):
        name, mask = str(row[fn_col]).strip(), str(row[mask_col]).strip()
        image_path, mask_path = row_target(root, name), row_target(root, mask)
        if image_path is None or mask_path is None:
            rejected.append(Rejected(name[:200], f"{path.name} row {n}: path escapes the dataset folder"))
        elif image_path in seen:
            rejected.append(Rejected(name[:200], f"{path.name} row {n}: the image is listed on an earlier row"))
        elif not image_path.is_file():
            rejected.append(Rejected(name, f"{path.name} row {n}: file not found"))
        else:
            seen.add(image_path)
            keys.append(image_path.relative_to(root).as_posix())
            masks.append(mask_path.relative_to(root).as_posix())
            valid_values.append(str(row[valid_col]) if valid_col else "")
    try:
        flags = split_by_column(valid_values) if valid_col else split_by_rand_pct(keys, valid_pct, seed)
    except ValueError as exc:
        raise DataError(f"{path.name}, column '{valid_col}': {exc}") from exc
    return _finish_pairs(root, keys, masks, flags, rejected, names, void_code, path.name)
