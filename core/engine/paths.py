"""The one rule for paths, templates and tables that a request names inside a dataset: every name is
relative, has no '..', no NUL and no link out of the dataset's folder; a template is filled by plain
replacement of a few known placeholders (never `str.format`); a table is size-capped and its decoding
errors are reported without echoing its content. Anything else is a DataError naming the field."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path, PurePosixPath

from core.engine.errors import DataError

MAX_NAME_CHARS = 1024
MAX_TEMPLATE_CHARS = 300
MAX_TABLE_BYTES = 16 * 1024**2
MAX_TABLE_ROWS = 200_000  # with the byte cap, bounds what a parsed table holds in memory (~100 MB at most)
TEMPLATE_FIELDS = ("stem", "name", "suffix", "parent")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _shown(name: str) -> str:
    """A user-given name, shortened and with control characters escaped, for an error message."""
    short = name if len(name) <= 120 else name[:120] + "..."
    return short.encode("unicode_escape").decode("ascii")


def inside(root: str | Path, name: str, field: str) -> Path:
    """`name` resolved inside `root`, or a DataError naming `field`. Refuses absolute paths, '..', NUL and
    control characters, and anything that resolves outside root (a symbolic link out of it, say)."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{field}: give a path relative to the dataset's folder")
    posix = name.replace("\\", "/")
    why = None
    if len(name) > MAX_NAME_CHARS:
        why = f"is over {MAX_NAME_CHARS} characters"
    elif any(ord(c) < 32 for c in name):
        why = "holds a control character"
    elif posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        why = "is absolute"
    elif ".." in PurePosixPath(posix).parts:
        why = "climbs out with '..'"
    if why is None:
        base = Path(root).resolve()
        target = (base / posix).resolve()
        if not target.is_relative_to(base):
            why = "leads out of the dataset (through a link)"
        else:
            return target
    raise DataError(
        f"{field}: '{_shown(name)}' {why}; name a file or folder inside the dataset, relative to its top folder "
        "(e.g. 'labels.csv' or 'images')"
    )


def check_template(template: str, field: str = "mask_template") -> None:
    """Refuse a template with anything but the known placeholders (or over the length cap)."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise DataError(f"{field}: the template is over {MAX_TEMPLATE_CHARS} characters")
    unknown = sorted({m for m in _PLACEHOLDER.findall(template) if m not in TEMPLATE_FIELDS})
    leftover = _PLACEHOLDER.sub("", template)
    if unknown or "{" in leftover or "}" in leftover:
        bad = f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}" if unknown else "a stray brace"
        raise DataError(
            f"{field}: '{_shown(template)}' has {bad}; use only "
            f"{', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}, e.g. 'masks/{{stem}}.png'"
        )


def fill_template(template: str, values: dict[str, str], field: str = "mask_template") -> str:
    """The template with each known placeholder replaced by its value (plain replacement: no format spec,
    no attribute access, no width)."""
    check_template(template, field)
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def read_text(path: Path, field: str, shown: str, max_bytes: int = MAX_TABLE_BYTES) -> str:
    """A small UTF-8 text file (BOM allowed) of the dataset, or a DataError that quotes none of it."""
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{field}: '{_shown(shown)}' is {size:,} bytes; the limit is {max_bytes:,}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{field}: '{_shown(shown)}' is not UTF-8 text (first bad byte at offset {exc.start}); save it as UTF-8"
        ) from None


def read_csv(path: Path, field: str, shown: str) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a CSV with a header; every decoding or parsing problem is a DataError."""
    text = read_text(path, field, shown)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[dict[str, str]] = []
    try:
        for row in reader:
            if len(rows) >= MAX_TABLE_ROWS:
                raise DataError(f"{field}: '{_shown(shown)}' has more than {MAX_TABLE_ROWS:,} rows; split the dataset")
            rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{field}: '{_shown(shown)}' line {reader.line_num}: {exc}") from None
    del text
    return [str(c) for c in (reader.fieldnames or [])], rows
