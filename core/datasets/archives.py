"""Safe extraction of uploaded archives (.zip, .tar, .tar.gz): no path may escape the target folder,
no links or device files, and caps on entries (every entry counts, whatever its type; a zip's entry count
is read from its end record before its directory is parsed, so a zip of a million empty entries costs
nothing), on bytes actually written (headers can lie, so sizes are counted while extracting) and on the
compression ratio, per entry and overall (a bomb stops at the first entry that expands too far)."""

from __future__ import annotations

import os
import stat
import struct
import tarfile
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from core.engine.errors import DataError
from core.engine.images import IMAGE_EXTENSIONS

ALLOWED_EXTENSIONS = IMAGE_EXTENSIONS | {".csv", ".json", ".txt"}


class ArchiveError(DataError):
    """The archive is unsafe or unusable; nothing of it is kept."""


@dataclass(frozen=True)
class Limits:
    """Caps on what one archive may hold. The ratio caps apply past `ratio_floor` bytes (a few small, very
    compressible files, such as CSVs, stay fine)."""

    max_files: int = 100_000
    max_bytes: int = 8 * 1024**3
    max_ratio: float = 200.0
    ratio_floor: int = 16 * 1024**2


@dataclass
class Extracted:
    """What was written, and what was skipped (and why)."""

    files: int = 0
    bytes: int = 0
    entries: int = 0
    skipped: list[tuple[str, str]] | None = None
    archive_bytes: int = 0


def _why(exc: BaseException) -> str:
    """An error's reason without the server paths an OSError names."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)[:200]


def _shown(name: str) -> str:
    """A member name for a message: shortened, control characters escaped."""
    return (name[:200] + ("..." if len(name) > 200 else "")).encode("unicode_escape").decode("ascii")


def _safe_name(name: str) -> PurePosixPath | None:
    """A member name as a relative path inside the target, or None for names to skip silently."""
    if any(ord(c) < 32 for c in name):
        raise ArchiveError(f"archive member '{_shown(name)}' has a control character (NUL, newline...) in its name")
    if len(name.encode("utf-8", "surrogateescape")) > 1024:
        raise ArchiveError(f"archive member '{_shown(name)}' has a name over 1,024 bytes")
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"archive member '{_shown(name)}' has an absolute path; archives must hold relative paths")
    if any(part == ".." for part in path.parts):
        raise ArchiveError(f"archive member '{_shown(name)}' escapes the dataset folder ('..' in its path)")
    if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
        return None  # hidden files and macOS resource forks
    return path


def _copy_capped(
    src: IO[bytes], dest: Path, state: Extracted, limits: Limits, name: str, compressed: int | None = None
) -> None:
    """Copy one member, counting bytes as they are written: the overall cap, the overall ratio against the
    archive's size, and (zip) this entry's ratio against its compressed size."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    overall_cap = max(limits.ratio_floor, int(limits.max_ratio * state.archive_bytes))
    entry_cap = None if compressed is None else max(limits.ratio_floor, int(limits.max_ratio * compressed))
    written = 0
    with dest.open("wb") as out:
        while block := src.read(1 << 20):
            state.bytes += len(block)
            written += len(block)
            if state.bytes > limits.max_bytes:
                raise ArchiveError(
                    f"the archive expands past {limits.max_bytes:,} bytes (at '{_shown(name)}'); "
                    "split the dataset or raise FITCYCLE_MAX_EXTRACTED_BYTES"
                )
            if state.bytes > overall_cap or (entry_cap is not None and written > entry_cap):
                raise ArchiveError(
                    f"the archive expands more than {limits.max_ratio:.0f}:1 (at '{_shown(name)}'): "
                    "that is a compression bomb, not a dataset of images"
                )
            out.write(block)


def _count_entry(state: Extracted, limits: Limits) -> None:
    """Every entry counts toward the cap: files, folders, and files of types we skip."""
    state.entries += 1
    if state.entries > limits.max_files:
        raise ArchiveError(
            f"the archive holds more than {limits.max_files:,} entries; split the dataset or raise "
            "FITCYCLE_MAX_ARCHIVE_FILES"
        )


def _admit(path: PurePosixPath, state: Extracted) -> bool:
    if path.suffix.lower() not in ALLOWED_EXTENSIONS:
        assert state.skipped is not None
        if len(state.skipped) < 1000:  # the report is capped; the entry cap bounds the work
            state.skipped.append((_shown(str(path)), f"file type '{_shown(path.suffix) or '(none)'}' is not allowed"))
        return False
    state.files += 1
    return True


def _size(source: Path | BinaryIO) -> int:
    if isinstance(source, Path):
        return source.stat().st_size
    source.seek(0, os.SEEK_END)
    size = source.tell()
    source.seek(0)
    return size


def zip_entry_count(source: Path | BinaryIO, cap: int) -> int:
    """How many entries a zip holds, found without `zipfile`: the count its end record declares, and the
    records of its central directory walked one by one (an end record can lie; zipfile believes the
    directory's byte size, not the count) — the walk stops past `cap`, so a lying zip costs nothing.
    Raises ArchiveError when there is no end record."""
    size = _size(source)
    with source.open("rb") if isinstance(source, Path) else nullcontext(source) as f:
        tail_len = min(size, 22 + 65535)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise ArchiveError("not a readable zip archive: no end-of-central-directory record")
        count, dir_size = struct.unpack("<HI", tail[at + 10 : at + 16])
        dir_end = size - tail_len + at
        locator = at - 20
        if locator >= 0 and tail[locator : locator + 4] == b"PK\x06\x07":
            (record_at,) = struct.unpack("<Q", tail[locator + 8 : locator + 16])
            if record_at + 56 > size:
                raise ArchiveError("not a readable zip archive: its zip64 record points past the end")
            f.seek(record_at)
            record = f.read(56)
            if record[:4] != b"PK\x06\x06":
                raise ArchiveError("not a readable zip archive: broken zip64 end record")
            count, dir_size = struct.unpack("<QQ", record[32:48])
            dir_end = record_at
        walked = _walk_directory(f, max(0, dir_end - dir_size), dir_end, cap)
        f.seek(0)
    return max(int(count), walked)


def _walk_directory(f: IO[bytes], start: int, end: int, cap: int) -> int:
    """Count central-directory records between start and end, stopping once past cap."""
    f.seek(start)
    buf, pos, n = b"", start, 0
    while pos < end and n <= cap:
        if len(buf) < 46:
            buf += f.read(min(1 << 20, end - pos - len(buf)) or 0)
            if len(buf) < 46:
                break
        if buf[:4] != b"PK\x01\x02":
            break  # not a directory record: zipfile will say what is wrong
        name_len, extra_len, comment_len = struct.unpack("<HHH", buf[28:34])
        step = 46 + name_len + extra_len + comment_len
        n += 1
        pos += step
        if step <= len(buf):
            buf = buf[step:]
        else:
            f.seek(pos)
            buf = b""
    return n


def extract_archive(archive: Path | BinaryIO, target: Path, filename: str, limits: Limits) -> Extracted:
    """Extract `archive` (a file, or a seekable binary stream such as the upload's own spool; named
    `filename` by the uploader) into `target`, refusing anything unsafe."""
    target.mkdir(parents=True, exist_ok=True)
    state = Extracted(skipped=[], archive_bytes=_size(archive))
    lower = filename.lower()
    if lower.endswith(".zip"):
        _extract_zip(archive, target, state, limits)
    elif lower.endswith((".tar", ".tar.gz", ".tgz")):
        _extract_tar(archive, target, state, limits)
    elif lower.endswith(".csv"):  # a bare table (labels=text_csv): kept under its own base name
        name = _safe_name(PurePosixPath(filename.replace("\\", "/")).name) or PurePosixPath("texts.csv")
        state.entries, state.files = 1, 1
        state.archive_bytes = max(state.archive_bytes, limits.ratio_floor)  # nothing is expanded
        if isinstance(archive, Path):
            with archive.open("rb") as f:
                _copy_capped(f, target / name.name, state, limits, name.name)
        else:
            archive.seek(0)
            _copy_capped(archive, target / name.name, state, limits, name.name)
    else:
        raise ArchiveError(f"'{filename}' is not a .zip, .tar or .tar.gz archive (or a bare .csv of texts)")
    if state.files == 0:
        raise ArchiveError("the archive holds no image or CSV file")
    if state.skipped and len(state.skipped) >= 1000:
        state.skipped.append(("...", "more files of types that are not allowed were skipped (only 1,000 listed)"))
    return state


def _extract_zip(archive: Path | BinaryIO, target: Path, state: Extracted, limits: Limits) -> None:
    entries = zip_entry_count(archive, limits.max_files)
    if entries > limits.max_files:
        raise ArchiveError(
            f"the archive holds {entries:,} entries or more, more than {limits.max_files:,}; split the dataset or "
            "raise FITCYCLE_MAX_ARCHIVE_FILES"
        )
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ArchiveError(f"not a readable zip archive: {_why(exc)}") from exc
    with zf:
        for info in zf.infolist():
            _count_entry(state, limits)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(
                    f"archive member '{_shown(info.filename)}' is a symbolic link; links are not allowed"
                )
            path = _safe_name(info.filename)
            if path is None or info.is_dir():
                continue
            if not _admit(path, state):
                continue
            try:
                with zf.open(info) as src:
                    _copy_capped(
                        src, target.joinpath(*path.parts), state, limits, info.filename, max(1, info.compress_size)
                    )
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as exc:
                raise ArchiveError(f"archive member '{_shown(info.filename)}' is corrupt: {_why(exc)}") from exc


MAX_TAR_HEADER_BYTES = 64 * 1024
LONG_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, b"X")


class _CappedTarInfo(tarfile.TarInfo):
    """A tar header whose extended headers (GNU long names, pax records) are size-capped before tarfile
    reads them: tarfile reads such a header's whole data into memory, before any extraction cap applies."""

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:  # private hook of tarfile, stable since 3.x
        if self.type in LONG_HEADER_TYPES and self.size > MAX_TAR_HEADER_BYTES:
            raise ArchiveError(
                f"the archive has an extended tar header of {self.size:,} bytes (the limit is "
                f"{MAX_TAR_HEADER_BYTES:,}); names and pax records are never that long"
            )
        return super()._proc_member(tf)  # type: ignore[misc]


def _extract_tar(archive: Path | BinaryIO, target: Path, state: Extracted, limits: Limits) -> None:
    try:
        # closed by the with-block below, once open succeeded
        tf = (
            tarfile.open(archive, "r:*", tarinfo=_CappedTarInfo)  # noqa: SIM115
            if isinstance(archive, Path)
            else tarfile.open(fileobj=archive, mode="r:*", tarinfo=_CappedTarInfo)  # noqa: SIM115
        )
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"not a readable tar archive: {_why(exc)}") from exc
    with tf:
        try:
            for member in tf:
                # tarfile keeps every header it has read; we need none of them (memory stays flat)
                tf.members = []  # type: ignore[attr-defined]
                _count_entry(state, limits)
                if member.issym() or member.islnk():
                    raise ArchiveError(f"archive member '{_shown(member.name)}' is a link; links are not allowed")
                if member.isdev() or member.isfifo():
                    raise ArchiveError(f"archive member '{_shown(member.name)}' is a device or pipe")
                path = _safe_name(member.name)
                if path is None or member.isdir() or not member.isfile():
                    continue
                if not _admit(path, state):
                    continue
                src = tf.extractfile(member)
                if src is None:
                    continue
                with src:
                    _copy_capped(src, target.joinpath(*path.parts), state, limits, member.name)
        except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError) as exc:
            raise ArchiveError(f"the tar archive is corrupt: {_why(exc)}") from exc
    # Belt and braces: nothing written may resolve outside the target.
    root = target.resolve()
    for dirpath, _, names in os.walk(target):
        for n in names:
            if not (Path(dirpath) / n).resolve().is_relative_to(root):
                raise ArchiveError("an archive member escapes the dataset folder")
