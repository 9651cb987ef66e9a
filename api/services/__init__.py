"""Services own transactions and talk to the store and the broker; routes hold no SQL."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def page(rows: list[T], offset: int, limit: int | None) -> list[T]:
    """`limit` rows from `offset` (all from there when limit is None) of a list read whole."""
    return rows[offset:] if limit is None else rows[offset : offset + limit]
