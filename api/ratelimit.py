"""Requests per minute per project: a fixed one-minute window. With a Redis broker the count lives in Redis
(INCR + EXPIRE: one count for every API process of the fleet); embedded, it lives in the API process.
Chosen over slowapi because the count is per project, known only after the key is checked in the guard,
and because a fixed window is twenty lines that need no other package."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

log = logging.getLogger("fitcycle.api")
WINDOW_SECONDS = 60


class RateLimiter(Protocol):
    async def hit(self, key: str) -> float | None:
        """Count one request of `key`; None when allowed, else the seconds until the window ends."""
        ...


class NoLimit:
    async def hit(self, key: str) -> float | None:
        return None


class LocalWindow:
    """The count in this process (the embedded default runs one API process)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._counts: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    async def hit(self, key: str) -> float | None:
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        with self._lock:
            start, count = self._counts.get(key, (window, 0))
            count = count + 1 if start == window else 1
            self._counts[key] = (window, count)
            if len(self._counts) > 10_000:  # old windows of idle projects
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
        return None if count <= self.per_minute else (window + 1) * WINDOW_SECONDS - now


class RedisWindow:
    """The count in Redis, shared by every API process. If Redis does not answer, requests pass (the
    limit protects the service; it must not become the outage)."""

    def __init__(self, url: str, per_minute: int) -> None:
        import redis.asyncio

        self.per_minute = per_minute
        self.redis = redis.asyncio.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

    async def hit(self, key: str) -> float | None:
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        name = f"fitcycle:rate:{key}:{window}"
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(name)  # buffered: the pipeline sends both at execute()
                pipe.expire(name, 2 * WINDOW_SECONDS)
                count, _ = await pipe.execute()
        except Exception:
            log.warning("rate limit: Redis did not answer; letting the request through")
            return None
        return None if int(count) <= self.per_minute else (window + 1) * WINDOW_SECONDS - now


def make_rate_limiter(broker_url: str, per_minute: int) -> RateLimiter:
    """Redis when the broker is Redis, else this process; no limit when per_minute is 0."""
    if per_minute <= 0:
        return NoLimit()
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisWindow(broker_url, per_minute)
    return LocalWindow(per_minute)
