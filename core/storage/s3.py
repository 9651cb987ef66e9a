"""An S3 object store through the minio client (MinIO, SeaweedFS, AWS S3 ...). Files stream in multipart.

A server that is away (restarting, unreachable, answering 5xx) is waited out: each read and write is retried
with backoff for `retry_seconds`. A retried upload starts over; S3 shows an object only once it is whole."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error, ServerError

from core.retry import with_backoff
from core.storage.base import ObjectNotFound, StoreUnavailable, check_key

PART_SIZE = 16 * 1024 * 1024
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
T = TypeVar("T")
log = logging.getLogger("fitcycle.storage")


def is_transient(exc: BaseException) -> bool:
    """The server is away or overloaded (worth waiting out), not a missing object or a refusal."""
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_CODES
    return isinstance(exc, ServerError | urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def failure(exc: BaseException) -> str:
    """What went wrong, in words that name no host or port (urllib3's own messages do)."""
    if isinstance(exc, S3Error):
        return f"S3 error {exc.code}"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, urllib3.exceptions.ResponseError):
        return str(reason)  # e.g. "too many 500 error responses"
    return type(reason or exc).__name__


class S3Store:
    """Objects in one bucket, created on first use."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        retry_seconds: float = 120.0,
    ) -> None:
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)
        self.bucket = bucket
        self.retry_seconds = retry_seconds
        self._bucket_ready = False

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return with_backoff(fn, f"S3 {what}: the server", self.retry_seconds, is_transient, log)
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise StoreUnavailable(
                f"the object store kept failing the {what} for {self.retry_seconds:.0f} s ({failure(exc)}); "
                "check that the S3 server is up and has space left"
            ) from exc

    def _ensure_bucket(self) -> None:
        if not self._bucket_ready:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)
            self._bucket_ready = True

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> int:
        def put() -> None:
            self._ensure_bucket()
            self.client.fput_object(
                self.bucket, check_key(key), str(path), content_type=content_type, part_size=PART_SIZE
            )

        self._retrying(f"upload of {key}", put)
        return Path(path).stat().st_size

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> int:
        import io

        def put() -> None:
            self._ensure_bucket()
            self.client.put_object(self.bucket, check_key(key), io.BytesIO(data), len(data), content_type=content_type)

        self._retrying(f"upload of {key}", put)
        return len(data)

    def copy(self, src: str, dst: str) -> int:
        def copy() -> None:
            self._ensure_bucket()
            try:
                self.client.copy_object(self.bucket, check_key(dst), CopySource(self.bucket, check_key(src)))
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NotFound"):
                    raise ObjectNotFound(src) from None
                raise

        self._retrying(f"copy of {src}", copy)
        return self.size(dst)

    def get_file(self, key: str, path: Path) -> Path:
        return self._retrying(f"download of {key}", lambda: self._get_file(key, path))

    def _get_file(self, key: str, path: Path) -> Path:
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
        return self._retrying(f"download of {key}", lambda: b"".join(self.open(key)))

    def open(self, key: str) -> Iterator[bytes]:
        """The object's bytes as they stream (the request is retried through an outage; the stream is not)."""

        def get() -> urllib3.BaseHTTPResponse:
            self._ensure_bucket()
            try:
                return self.client.get_object(self.bucket, check_key(key))
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                    raise ObjectNotFound(key) from exc
                raise

        response = self._retrying(f"download of {key}", get)

        def chunks() -> Iterator[bytes]:
            try:
                yield from response.stream(1 << 20)
            finally:
                response.close()
                response.release_conn()

        return chunks()

    def size(self, key: str) -> int:
        def stat() -> int:
            self._ensure_bucket()
            try:
                return int(self.client.stat_object(self.bucket, check_key(key)).size or 0)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                    raise ObjectNotFound(key) from exc
                raise

        return self._retrying(f"size of {key}", stat)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        def listing() -> list[str]:
            self._ensure_bucket()
            objects = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return sorted(o.object_name for o in objects if o.object_name)

        return self._retrying(f"listing of {prefix}", listing)

    def delete(self, key: str) -> None:
        def remove() -> None:
            self._ensure_bucket()
            self.client.remove_object(self.bucket, check_key(key))

        self._retrying(f"delete of {key}", remove)

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        if keys:
            errors = self._retrying(
                f"delete of {prefix}",
                lambda: list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys])),
            )
            if errors:
                raise OSError(f"could not delete {len(errors)} objects under {prefix}: {errors[0]}")
        return len(keys)

    def ping(self) -> None:
        self._ensure_bucket()
