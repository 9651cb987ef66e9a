"""A local-directory object store: the embedded default."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.storage.base import ObjectNotFound, check_key


class LocalStore:
    """Objects as files under one root folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"invalid object key {key!r}")
        return path

    def _write_from(self, key: str, src: Path | bytes) -> int:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".put-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(src, bytes):
                    out.write(src)
                else:
                    with open(src, "rb") as inp:
                        shutil.copyfileobj(inp, out, 1 << 20)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest.stat().st_size

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> int:
        return self._write_from(key, Path(path))

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> int:
        return self._write_from(key, data)

    def copy(self, src: str, dst: str) -> int:
        source = self._path(src)
        if not source.is_file():
            raise ObjectNotFound(src)
        return self._write_from(dst, source)

    def get_file(self, key: str, path: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".get-", dir=path.parent)
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, path)
        return path

    def get_bytes(self, key: str) -> bytes:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(key)
        return src.read_bytes()

    def open(self, key: str) -> Iterator[bytes]:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(key)

        def chunks() -> Iterator[bytes]:
            with src.open("rb") as f:
                while block := f.read(1 << 20):
                    yield block

        return chunks()

    def size(self, key: str) -> int:
        src = self._path(key)
        if not src.is_file():
            raise ObjectNotFound(key)
        return src.stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".put-")
        )

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink()

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"object store folder {self.root} is missing")
