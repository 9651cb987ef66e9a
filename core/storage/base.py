"""The ObjectStore protocol: keys are '/'-separated paths; values are streamed, never held whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

COMPLETE = ".complete"  # the mark of a whole local copy (download_prefix)


class ObjectNotFound(KeyError):
    """No object under that key."""


class StoreUnavailable(Exception):
    """The object store kept failing for the whole retry budget: down, or out of space; not a bad request. Its
    text names the operation and the object's key, never the server's address."""


def check_key(key: str) -> str:
    """Refuse keys that could escape a prefix: empty parts, '.', '..', backslashes, absolute paths."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


class ObjectStore(Protocol):
    """Where dataset files, checkpoints, bundles and plots live."""

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> int:
        """Upload a local file (streamed; multipart when large); returns its size."""

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> int:
        """Upload small bytes; returns the size."""

    def get_file(self, key: str, path: Path) -> Path:
        """Download to a local file (written atomically)."""

    def get_bytes(self, key: str) -> bytes:
        """Download a small object whole."""

    def open(self, key: str) -> Iterator[bytes]:
        """Stream an object's bytes in chunks."""

    def size(self, key: str) -> int:
        """Size in bytes; ObjectNotFound when absent."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under key."""

    def copy(self, src: str, dst: str) -> int:
        """Copy an object inside the store (no round trip through this process where the store can); its size."""

    def list(self, prefix: str) -> list[str]:
        """Every key under a prefix, sorted."""

    def delete(self, key: str) -> None:
        """Remove one object (no error when absent)."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under a prefix; returns how many."""

    def ping(self) -> None:
        """Raise when the store does not answer."""


def download_prefix(store: ObjectStore, prefix: str, folder: Path) -> Path:
    """A complete local copy of every object under `prefix` (made once: stored prefixes never change).

    Safe when many threads or processes ask for the same copy at once: each downloads into a folder of its own
    and renames it into place whole, marked complete; the first rename wins and the others discard theirs. A
    folder there without the mark (a crash mid-copy, an older fitcycle's) is replaced."""
    import shutil
    import tempfile

    if (folder / COMPLETE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        base = prefix.rstrip("/") + "/"
        keys = store.list(base)
        if not keys:
            raise ObjectNotFound(prefix)
        for key in keys:
            store.get_file(key, tmp / check_key(key[len(base) :]))  # a listed key stays inside the copy
        (tmp / COMPLETE).write_text("ok")
        refused: OSError | None = None
        for _ in range(3):
            try:
                tmp.rename(folder)  # atomic; refused while `folder` exists and is not empty
                return folder
            except OSError as exc:
                refused = exc
                if (folder / COMPLETE).is_file():  # another copy won: use it
                    return folder
                _replace_incomplete(folder)
        raise OSError(f"could not put the local copy of {prefix} in place") from refused
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_incomplete(folder: Path) -> None:
    """Move an incomplete copy out of the way; a complete one that took its place meanwhile is put back."""
    aside = _aside(folder)
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return
    if (aside / COMPLETE).is_file():
        try:
            aside.rename(folder)
            return
        except OSError:
            pass  # yet another copy is there now: this one is not needed
    _remove(aside)


def discard_copy(folder: Path) -> None:
    """Remove a local copy made by download_prefix (renamed aside first, so no reader sees it half-deleted and
    the next download_prefix makes a fresh one)."""
    aside = _aside(folder)
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return
    _remove(aside)


def _aside(folder: Path) -> Path:
    import uuid

    return folder.with_name(f".{folder.name}.discarded-{uuid.uuid4().hex[:12]}")


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
