"""Object storage: a protocol, a local-directory store and an S3 store (through the minio client)."""

from core.storage.base import ObjectNotFound, ObjectStore
from core.storage.factory import make_store

__all__ = ["ObjectNotFound", "ObjectStore", "make_store"]
