"""The database going away for a while (a restart, a failover) is an outage to wait out, not an error:
workers retry their writes with backoff, and the API answers 503 with Retry-After until it is back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from core.retry import with_backoff

T = TypeVar("T")
log = logging.getLogger("fitcycle.db")


def is_outage(exc: BaseException) -> bool:
    """The database is unreachable or restarting (not a bad query, not a constraint)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retrying(fn: Callable[[], T], what: str, seconds: float) -> T:
    """Call `fn` (one whole transaction) until it gets through an outage, with exponential backoff, for at most
    `seconds`; then, or on any other error, raise."""
    return with_backoff(fn, f"{what}: the database", seconds, is_outage, log)
