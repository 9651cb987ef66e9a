"""Work a small request can ask for in quantity, bounded per project: a CPU-time token bucket, and a cache of
what such work made.

`CpuBudget`: each project has up to `capacity` seconds to spend on costly renders (show_batch), refilled at
`per_second`. A project renders one picture at a time (a second request while one renders is a 429), a render is
allowed while the balance is positive, and it then pays the seconds it took: a project that asks for many big
pictures, together or one after another, waits (429 with Retry-After) while every other project's balance and
share of the CPU is untouched. Seconds of the clock, not of one thread's CPU: a render's resizing runs on torch's
threads too, which a thread's CPU time would not count. Per API process, as the predictor cache is.

`BytesCache`: the most recently used results by key, bounded in entries and bytes."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from api.errors import Problem

K = TypeVar("K")


class CpuBudget:
    def __init__(self, capacity: float, per_second: float, what: str, hint: str = "") -> None:
        self.capacity, self.per_second, self.what, self.hint = capacity, per_second, what, hint
        self._balance: dict[str, tuple[float, float]] = {}  # project -> (seconds left, when)
        self._rendering: set[str] = set()  # projects with a render under way
        self._lock = threading.Lock()

    def _now_balance(self, project_id: str, now: float) -> float:
        left, when = self._balance.get(project_id, (self.capacity, now))
        return min(self.capacity, left + (now - when) * self.per_second)

    @contextmanager
    def spend(self, project_id: str) -> Iterator[None]:
        """Run the block if the project has time left and nothing else under way (else 429 with Retry-After), and
        charge the seconds it took."""
        now = time.monotonic()
        with self._lock:
            left = self._now_balance(project_id, now)
            busy = project_id in self._rendering
            if left > 0 and not busy:
                self._rendering.add(project_id)
        if busy:
            raise Problem(
                429,
                "One picture at a time",
                f"this project is already making one of its {self.what}; ask again when it is done",
                headers={"Retry-After": "2"},
            )
        if left <= 0:
            wait = math.ceil(-left / self.per_second) + 1
            raise Problem(
                429,
                "CPU budget spent",
                f"this project has used its CPU time for {self.what} for now; try again in {wait} s{self.hint}",
                headers={"Retry-After": str(wait)},
            )
        started = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                now = time.monotonic()
                self._balance[project_id] = (self._now_balance(project_id, now) - (now - started), now)
                self._rendering.discard(project_id)
                if len(self._balance) > 10_000:  # full again: forget them
                    self._balance = {
                        k: v for k, v in self._balance.items() if self._now_balance(k, now) < self.capacity
                    }


class BytesCache(Generic[K]):
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[K, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_or_make(self, key: K, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = make()
        with self._lock:
            if key not in self._items and len(data) <= self.max_bytes:
                self._items[key] = data
                self._bytes += len(data)
                while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= len(old)
        return data
