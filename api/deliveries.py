"""The webhook delivery worker: runs in every API process, beside (not inside) the fleet loop, so a slow
receiver never holds up a retraining policy. Every FITCYCLE_WEBHOOK_POLL_SECONDS it claims due deliveries and
sends each in a task of its own, within FITCYCLE_WEBHOOK_TIMEOUT_SECONDS.

Fair across projects: a project has at most FITCYCLE_WEBHOOK_PROJECT_CONCURRENCY deliveries on their way at
once (per process), and every project with a due delivery gets its share of the free places in each poll, the
longest-waiting first. A project whose twenty receivers never answer holds its own few places, each for one
timeout; another project's delivery goes out at the next poll. Claims are row by row (a conditional update that
moves the row's next attempt ahead), so several API replicas never send one delivery twice, and a delivery of a
deleted webhook is never claimed again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from fastapi.concurrency import run_in_threadpool

from api.services.webhooks import record_attempt, send
from api.state import AppState
from core.db import domain, repos
from core.db.outage import is_outage
from core.db.session import session_scope

log = logging.getLogger("fitcycle.webhooks")


class DeliveryWorker:
    """Claims due deliveries and sends them, a bounded number per project and in all."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.settings = state.settings
        self.on_their_way: Counter[str] = Counter()  # project id -> deliveries being sent by this process
        self.tasks: set[asyncio.Task[None]] = set()

    def places(self) -> int:
        return self.settings.webhook_total_concurrency - sum(self.on_their_way.values())

    def claim(self, free: int, busy: dict[str, int]) -> list[tuple[domain.Delivery, domain.Webhook]]:
        """Claim up to `free` due deliveries, each project at most up to its cap (given `busy` on their way)."""
        cap = self.settings.webhook_project_concurrency
        hold = self.settings.webhook_timeout_seconds * 2 + 5  # a process that dies mid-send frees its claim then
        claimed: list[tuple[domain.Delivery, domain.Webhook]] = []
        with session_scope(self.state.sessions) as s:
            for project_id in repos.projects_with_due_deliveries(s):
                room = min(cap - busy.get(project_id, 0), free - len(claimed))
                if room <= 0:
                    if len(claimed) >= free:
                        break
                    continue
                claimed += repos.claim_due_deliveries(s, project_id, room, hold)
        return claimed

    async def poll(self) -> int:
        """Claim what is due and start sending it; returns how many were started."""
        free = self.places()
        if free <= 0:
            return 0
        claimed = await run_in_threadpool(self.claim, free, dict(self.on_their_way))
        for delivery, hook in claimed:
            self.on_their_way[delivery.project_id] += 1
            task = asyncio.create_task(self.deliver(delivery, hook))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(claimed)

    async def deliver(self, delivery: domain.Delivery, hook: domain.Webhook) -> None:
        try:
            error = await send(self.state, delivery, hook)
            await run_in_threadpool(record_attempt, self.state, delivery, error)
        except Exception as exc:
            if is_outage(exc):
                log.warning("webhook delivery %s: the database is not answering; it is due again later", delivery.id)
            else:
                log.exception("webhook delivery %s failed", delivery.id)
        finally:
            self.on_their_way[delivery.project_id] -= 1
            if self.on_their_way[delivery.project_id] <= 0:
                del self.on_their_way[delivery.project_id]

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.webhook_poll_seconds
        try:
            while not stop.is_set():
                try:
                    await self.poll()
                except Exception as exc:
                    if is_outage(exc):
                        log.warning("webhook worker: the database is not answering; trying again next poll")
                    else:
                        log.exception("webhook worker: a poll failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
