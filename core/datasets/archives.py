"""Safe extraction of uploaded archives (.zip, .tar, .tar.gz): no path may escape the target folder,
no links or device files, and caps on file count and on bytes actually written (headers can lie, so
sizes are counted while extracting; that also stops compression bombs)."""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from core.engine.errors import DataError
from core.engine.images import IMAGE_EXTENSIONS

ALLOWED_EXTENSIONS = IMAGE_EXTENSIONS | {".csv", ".json", ".txt"}


class ArchiveError(DataError):
    """The archive is unsafe or unusable; nothing of it is kept."""


@dataclass(frozen=True)
class Limits:
    """Caps on what one archive may hold."""

    max_files: int = 200_000
    max_bytes: int = 8 * 1024**3


@dataclass
class Extracted:
    """What was written, and what was skipped (and why)."""

    files: int = 0
    bytes: int = 0
    skipped: list[tuple[str, str]] | None = None


def _safe_name(name: str) -> PurePosixPath | None:
    """A member name as a relative path inside the target, or None for names to skip silently."""
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"archive member '{name}' has an absolute path; archives must hold relative paths")
    if any(part == ".." for part in path.parts):
        raise ArchiveError(f"archive member '{name}' escapes the dataset folder ('..' in its path)")
    if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
        return None  # hidden files and macOS resource forks
    return path


def _copy_capped(src: IO[bytes], dest: Path, state: Extracted, limits: Limits, name: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        while block := src.read(1 << 20):
            state.bytes += len(block)
            if state.bytes > limits.max_bytes:
                raise ArchiveError(
                    f"the archive expands past {limits.max_bytes:,} bytes (at '{name}'); "
                    "split the dataset or raise FITCYCLE_MAX_EXTRACTED_BYTES"
                )
            out.write(block)


def _admit(path: PurePosixPath, state: Extracted, limits: Limits) -> bool:
    if path.suffix.lower() not in ALLOWED_EXTENSIONS:
        assert state.skipped is not None
        state.skipped.append((str(path), f"file type '{path.suffix or '(none)'}' is not allowed"))
        return False
    state.files += 1
    if state.files > limits.max_files:
        raise ArchiveError(f"the archive holds more than {limits.max_files:,} files")
    return True


def extract_archive(archive: Path, target: Path, filename: str, limits: Limits) -> Extracted:
    """Extract `archive` (named `filename` by the uploader) into `target`, refusing anything unsafe."""
    target.mkdir(parents=True, exist_ok=True)
    state = Extracted(skipped=[])
    lower = filename.lower()
    if lower.endswith(".zip"):
        _extract_zip(archive, target, state, limits)
    elif lower.endswith((".tar", ".tar.gz", ".tgz")):
        _extract_tar(archive, target, state, limits)
    else:
        raise ArchiveError(f"'{filename}' is not a .zip, .tar or .tar.gz archive")
    if state.files == 0:
        raise ArchiveError("the archive holds no image or CSV file")
    return state


def _extract_zip(archive: Path, target: Path, state: Extracted, limits: Limits) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"not a readable zip archive: {exc}") from exc
    with zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"archive member '{info.filename}' is a symbolic link; links are not allowed")
            path = _safe_name(info.filename)
            if path is None or info.is_dir():
                continue
            if not _admit(path, state, limits):
                continue
            try:
                with zf.open(info) as src:
                    _copy_capped(src, target.joinpath(*path.parts), state, limits, info.filename)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ArchiveError(f"archive member '{info.filename}' is corrupt: {exc}") from exc


def _extract_tar(archive: Path, target: Path, state: Extracted, limits: Limits) -> None:
    try:
        tf = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with-block below, once open succeeded
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"not a readable tar archive: {exc}") from exc
    with tf:
        try:
            for member in tf:
                if member.issym() or member.islnk():
                    raise ArchiveError(f"archive member '{member.name}' is a link; links are not allowed")
                if member.isdev() or member.isfifo():
                    raise ArchiveError(f"archive member '{member.name}' is a device or pipe")
                path = _safe_name(member.name)
                if path is None or member.isdir() or not member.isfile():
                    continue
                if not _admit(path, state, limits):
                    continue
                src = tf.extractfile(member)
                if src is None:
                    continue
                with src:
                    _copy_capped(src, target.joinpath(*path.parts), state, limits, member.name)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ArchiveError(f"the tar archive is corrupt: {exc}") from exc
    # Belt and braces: nothing written may resolve outside the target.
    root = target.resolve()
    for dirpath, _, names in os.walk(target):
        for n in names:
            if not (Path(dirpath) / n).resolve().is_relative_to(root):
                raise ArchiveError("an archive member escapes the dataset folder")
