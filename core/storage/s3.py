"""An S3 object store through the minio client (MinIO, SeaweedFS, AWS S3 ...). Files stream in multipart."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from core.storage.base import ObjectNotFound, check_key

PART_SIZE = 16 * 1024 * 1024


class S3Store:
    """Objects in one bucket, created on first use."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str, secure: bool = False) -> None:
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
        self.bucket = bucket
        self._bucket_ready = False

    def _ensure_bucket(self) -> None:
        if not self._bucket_ready:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
            self._bucket_ready = True

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> int:
        self._ensure_bucket()
        self.client.fput_object(self.bucket, check_key(key), str(path), content_type=content_type, part_size=PART_SIZE)
        return Path(path).stat().st_size

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> int:
        import io

        self._ensure_bucket()
        self.client.put_object(self.bucket, check_key(key), io.BytesIO(data), len(data), content_type=content_type)
        return len(data)

    def copy(self, src: str, dst: str) -> int:
        self._ensure_bucket()
        try:
            self.client.copy_object(self.bucket, check_key(dst), CopySource(self.bucket, check_key(src)))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NotFound"):
                raise ObjectNotFound(src) from None
            raise
        return self.size(dst)

    def get_file(self, key: str, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".get-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                for block in self.open(key):
                    out.write(block)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.open(key))

    def open(self, key: str) -> Iterator[bytes]:
        self._ensure_bucket()
        try:
            response = self.client.get_object(self.bucket, check_key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFound(key) from exc
            raise

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.stream(1 << 20)
            finally:
                response.close()
                response.release_conn()

        return chunks()

    def size(self, key: str) -> int:
        self._ensure_bucket()
        try:
            return int(self.client.stat_object(self.bucket, check_key(key)).size or 0)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise ObjectNotFound(key) from exc
            raise

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        self._ensure_bucket()
        return sorted(
            o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True) if o.object_name
        )

    def delete(self, key: str) -> None:
        self._ensure_bucket()
        self.client.remove_object(self.bucket, check_key(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        if keys:
            errors = list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys]))
            if errors:
                raise OSError(f"could not delete {len(errors)} objects under {prefix}: {errors[0]}")
        return len(keys)

    def ping(self) -> None:
        self._ensure_bucket()
