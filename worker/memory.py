"""Give memory back between jobs. A job allocates and frees hundreds of MB of tensors (model copies for
checkpoints, optimizer state, batches); glibc keeps freed heap memory for reuse, and its arenas fragment, so a
long-lived worker's RSS climbs with each job until it levels off far above what one job needs. After each job:
collect cycles, then ask glibc to return free memory to the system (malloc_trim)."""

from __future__ import annotations

import ctypes
import gc
import logging
import sys

log = logging.getLogger("fitcycle.worker")


def release_memory() -> None:
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        log.debug("malloc_trim is not available")
