"""Waiting out a dependency that is away (a database restarting, an S3 server down): call again with
exponential backoff while the error is a transient one, for at most a time budget; then, or on any other
error, raise. One loop for the database (core/db/outage.py) and the object store (core/storage/s3.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def with_backoff(
    fn: Callable[[], T],
    what: str,
    seconds: float,
    transient: Callable[[BaseException], bool],
    log: logging.Logger,
    max_delay: float = 5.0,
) -> T:
    """Call `fn` until it succeeds, retrying errors that `transient` accepts for at most `seconds`."""
    started, delay = time.monotonic(), 0.25
    while True:
        try:
            return fn()
        except Exception as exc:
            waited = time.monotonic() - started
            if not transient(exc) or waited + delay > seconds:
                raise
            cause = getattr(exc, "orig", None) or exc
            log.warning(
                "%s is not answering (%s); retrying in %.2f s (%.0f s of %.0f s spent)",
                what,
                type(cause).__name__,
                delay,
                waited,
                seconds,
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
