"""What every repository module shares: new ids, rows turned into domain objects, and the one INSERT that is
written differently on PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.db.models import Base

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")


def new_id() -> str:
    """A random UUID4 string."""
    return str(uuid.uuid4())


def to(cls: type[D], row: object) -> D:
    """A domain object from a row: each of the dataclass's fields read from the row's attribute of the same
    name (so the dataclass is the one field list), and every datetime in UTC."""
    return cls(**{f.name: utc(getattr(row, f.name)) for f in fields(cls)})


def utc(value: Any) -> Any:
    """SQLite hands back naive datetimes; treat them as the UTC they were written in."""
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value


def insert_for(s: Session) -> Any:
    """The dialect's own `insert` (the one with ON CONFLICT): PostgreSQL's or SQLite's."""
    return pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert


def upsert(s: Session, table: type[Base], values: dict[str, Any], keys: list[str]) -> None:
    """Insert `values`, or update the row whose `keys` match (so a write repeated on resume replaces)."""
    stmt = insert_for(s)(table).values(**values)
    s.execute(stmt.on_conflict_do_update(index_elements=keys, set_={k: v for k, v in values.items() if k not in keys}))
