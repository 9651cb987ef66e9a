"""What the API looks up on every request — the caller behind a key or a web UI session, a model's row — kept in
the process for at most FITCYCLE_LOOKUP_CACHE_SECONDS (1 s by default, 2 s at most), and dropped on every replica
as soon as what it says changes.

Whoever changes such a thing (a key revoked, a project's settings changed, a web UI session ended, a model
deleted) announces the change once it has committed (`Invalidations.publish`): this process drops what depended
on it at once, and with a Redis broker (the fleet) the change goes out on one pub/sub channel that every API
process listens on. Embedded (`fitcycle serve`: one API process) the process's own drop is all there is. While a
process is not subscribed (starting, Redis away) its caches keep nothing, so a change it cannot hear of is never
served from memory; a message lost on a live subscription is bounded by the cache's time. Only found things are
kept: an unknown key or model is asked of the database every time, so a new key works at once."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import Any, Generic, TypeVar

from fastapi.concurrency import run_in_threadpool

log = logging.getLogger("fitcycle.api")

K = TypeVar("K")
V = TypeVar("V")
# What changed: ("key", key id), ("project", project id), ("session", session token hash), ("model", model id).
Change = tuple[str, str]
CHANNEL = "fitcycle:lookups"
PING_SECONDS = 1.0  # the listener pings Redis this often, and reconnects when no answer came in 3 pings' time


KINDS = frozenset({"key", "project", "session", "model"})
MAX_MESSAGE_BYTES = 64 * 1024
# What a change names: a row's UUID (key, project, model) or a session token's sha256.
_IDENTIFIER = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{64}")


def parse_changes(data: bytes | str) -> list[Change] | None:
    """The changes a pub/sub message announces, or None when it is anything else: a message is trusted with
    nothing (a model id becomes a folder name to delete), so each pair must be a known kind and an identifier's
    exact shape, and the message small."""
    if len(data) > MAX_MESSAGE_BYTES:
        return None
    try:
        pairs = json.loads(data)
    except ValueError:
        return None
    if not isinstance(pairs, list):
        return None
    changes = []
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)):
            return None
        what, which = pair
        if what not in KINDS or not _IDENTIFIER.fullmatch(which):
            return None
        changes.append((what, which))
    return changes


class TimedCache(Generic[K, V]):
    """At most `size` values, each kept `ttl` seconds from when it was read and dropped at once by a change it
    depends on. A read that began before a change is not kept (`generation`), so a lookup racing a revocation
    never stores the old answer."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._entries: OrderedDict[K, tuple[float, V, frozenset[Change]]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        self._enabled = True

    def get(self, key: K) -> V | None:
        """The value read less than `ttl` seconds ago and unchanged since, if any."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def generation(self) -> int:
        """Take before reading what is to be kept; `put` keeps it only if nothing changed meanwhile."""
        return self._generation

    def put(self, key: K, value: V, depends_on: Iterable[Change], since: int) -> None:
        """Keep `value` (read after `since = generation()`) until `ttl` passes or a change in `depends_on` comes."""
        with self._lock:
            if not self._enabled or self.ttl <= 0 or since != self._generation:
                return
            self._entries[key] = (time.monotonic() + self.ttl, value, frozenset(depends_on))
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def drop(self, changes: Collection[Change]) -> None:
        """Forget every value that depends on one of `changes`, and any read under way."""
        wanted = set(changes)
        with self._lock:
            self._generation += 1
            for key in [k for k, (_, _, deps) in self._entries.items() if deps & wanted]:
                del self._entries[key]

    def enable(self, enabled: bool) -> None:
        """Keep values (True) or nothing (False); either way, forget what is kept and any read under way."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self._enabled = enabled


class Invalidations:
    """Announces changes to every API process: this one's listeners at once, the others' through Redis pub/sub
    when the broker is Redis (`listen` runs in each API process for its lifetime)."""

    def __init__(self, broker_url: str, listeners: list[Callable[[list[Change]], None]]) -> None:
        self.url = broker_url if broker_url.startswith(("redis://", "rediss://")) else None
        self.listeners = listeners
        self._publisher: Any = None
        # Embedded (the filesystem broker: one API process) there is nothing to hear from; with Redis, once `listen`
        # subscribed; with any other broker no change could be heard from another replica, so nothing is kept.
        self.subscribed = broker_url.startswith("filesystem://")

    def publish(self, *changes: Change) -> None:
        """Call once the change has committed: this process's listeners first, then every other process's. A
        message Redis does not take is logged; the cache's time bounds it."""
        self.apply(list(changes))
        if self.url is None:
            return
        import redis

        try:
            if self._publisher is None:
                self._publisher = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
            self._publisher.publish(CHANNEL, json.dumps(changes))
        except redis.RedisError as exc:
            log.warning("could not tell the other API processes of %s (%s); their caches expire it", changes, exc)

    def apply(self, changes: list[Change]) -> None:
        for listener in self.listeners:
            listener(changes)

    async def listen(self, stop: asyncio.Event, on_subscribed: Callable[[bool], None]) -> None:
        """With Redis: hear the other processes' changes until `stop`, reconnecting as needed. `on_subscribed(True)`
        once subscribed (a change made from then on will be heard), False when the subscription is lost."""
        if self.url is None:
            return
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=1)
        delay = 0.2
        try:
            while not stop.is_set():
                try:
                    async with client.pubsub() as pubsub:
                        await self._subscribe(pubsub)
                        self.subscribed = True
                        on_subscribed(True)
                        delay = 0.2
                        await self._hear(pubsub, stop)
                except (redis.RedisError, OSError, TimeoutError) as exc:
                    log.warning("lookup invalidations: Redis subscription lost (%s); reconnecting", exc)
                except Exception:  # whatever it was, the caches must not outlive what they can hear
                    log.exception("lookup invalidations: the listener failed; reconnecting")
                finally:
                    if self.subscribed:
                        self.subscribed = False
                        on_subscribed(False)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    delay = min(delay * 2, 5.0)
        finally:
            await client.aclose()
            if self._publisher is not None:
                self._publisher.close()

    async def _subscribe(self, pubsub: Any) -> None:
        """Subscribe, and return once Redis confirms it."""
        await pubsub.subscribe(CHANNEL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                return
        raise TimeoutError("Redis did not confirm the subscription")

    async def _hear(self, pubsub: Any, stop: asyncio.Event) -> None:
        """Apply each change heard; ping Redis every PING_SECONDS, and give up when it stops answering."""
        heard = pinged = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now - heard > 3 * PING_SECONDS:
                raise TimeoutError(f"Redis answered nothing for {now - heard:.1f} s")
            if now - pinged >= PING_SECONDS:
                await pubsub.ping()
                pinged = now
            message = await pubsub.get_message(timeout=PING_SECONDS / 4)
            if message is None:
                continue
            heard = time.monotonic()
            if message["type"] == "message":
                changes = parse_changes(message["data"])
                if changes is None:
                    log.warning("lookup invalidations: a message that is not a list of changes; ignored")
                    continue
                await run_in_threadpool(self.apply, changes)
