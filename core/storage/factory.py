"""Build the configured object store."""

from __future__ import annotations

from core.config import Settings
from core.storage.base import ObjectStore
from core.storage.local import LocalStore
from core.storage.s3 import S3Store


def make_store(settings: Settings) -> ObjectStore:
    """The local-directory store (embedded default) or the S3 store."""
    if settings.storage == "s3":
        return S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            settings.s3_secure,
            retry_seconds=settings.store_retry_seconds,
        )
    return LocalStore(settings.objects_dir)
