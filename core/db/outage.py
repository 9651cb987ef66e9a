"""The database going away for a while (a restart, a failover) is an outage to wait out, not an error:
workers retry their writes with backoff, and the API answers 503 with Retry-After until it is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

T = TypeVar("T")
log = logging.getLogger("fitcycle.db")


def is_outage(exc: BaseException) -> bool:
    """The database is unreachable or restarting (not a bad query, not a constraint)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retrying(fn: Callable[[], T], what: str, seconds: float, max_delay: float = 5.0) -> T:
    """Call `fn` (one whole transaction) until it gets through an outage, with exponential backoff, for at most
    `seconds`; then, or on any other error, raise."""
    started, delay = time.monotonic(), 0.25
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            waited = time.monotonic() - started
            if not is_outage(exc) or waited + delay > seconds:
                raise
            log.warning(
                "%s: the database is not answering (%s); retrying in %.2f s (%.0f s of %.0f s spent)",
                what,
                type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
                delay,
                waited,
                seconds,
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
