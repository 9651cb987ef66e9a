"""The fleet's own loop, run by whichever API process holds the fleet lease (one at a time however many API
replicas run): it applies each registry name's policy — once a name has `min_feedback` unused corrections and no
retrain under way, it cuts a dataset version with them and queues a retrain; the retrain's evaluate step then
scores it and the gate decides (worker/evaluate.py) — checks every served model's drift (api/drift.py), and
removes kept predict inputs past their project's retention.
Webhooks are not sent here (api/deliveries.py does, in every API process): no receiver can hold a
policy up. The lease is renewed before each name, and a pass that lost it stops: a pass longer than the lease
never runs twice at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool

from api.drift import drift_pass
from api.services import searches
from api.services.prediction_log import apply_retention
from api.services.retraining import retrain_from_feedback
from api.state import AppState
from core.db import repos
from core.db.outage import is_outage
from core.db.session import session_scope
from core.jobs.gate import Policy

log = logging.getLogger("fitcycle.loop")
LEASE = "feedback-loop"
SEARCH_LEASE = "searches"


def policy_pass(state: AppState, hold: Callable[[], bool] = lambda: True) -> list[str]:
    """Cut a version and queue a retrain for every name whose policy's feedback threshold is reached; `hold`
    renews the fleet lease before each name (False: another process has it now, and this pass stops)."""
    done = []
    with session_scope(state.sessions) as s:
        entries = repos.policy_names(s)
    for entry in entries:
        if not hold():
            log.warning("policy pass: the fleet lease moved to another process; it carries on from here")
            break
        policy = Policy.of(entry.policy)
        if policy.min_feedback is None:
            continue
        with session_scope(state.sessions) as s:
            waiting = repos.count_unused_feedback(s, entry.project_id, entry.name)
        if waiting < policy.min_feedback:
            continue
        reason = f"{waiting} new corrections for '{entry.name}'"
        retrain = retrain_from_feedback(state, entry.project_id, entry.name, reason, policy.min_feedback)
        if retrain.job_id is None:
            if "under way" not in retrain.why_not:
                log.warning("policy of '%s': %s", entry.name, retrain.why_not)
            continue
        log.info("policy of '%s': %s", entry.name, retrain.text())
        done.append(retrain.job_id)
    return done


async def leased_loop(
    state: AppState,
    stop: asyncio.Event,
    name: str,
    interval: float,
    lease_seconds: float,
    work: Callable[[Callable[[], bool]], None],
) -> None:
    """Every `interval` seconds: hold the fleet lease `name` (one API process at a time, however many replicas run),
    then `work(hold)`, which renews it with `hold()` as it goes and stops when that says another process has it."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    def hold() -> bool:
        with session_scope(state.sessions) as s:
            return repos.hold_fleet_lease(s, name, owner, lease_seconds)

    while not stop.is_set():
        try:
            if await run_in_threadpool(hold):
                await run_in_threadpool(work, hold)
        except Exception as exc:  # a database blip: next time
            if is_outage(exc):
                log.warning("%s loop: the database is not answering; trying again next pass", name)
            else:
                log.exception("%s loop pass failed", name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


async def fleet_loop(state: AppState, stop: asyncio.Event) -> None:
    """Every loop_interval_seconds: the policies and the retention, in the process holding the fleet lease."""

    def work(hold: Callable[[], bool]) -> None:
        policy_pass(state, hold)
        drift_pass(state, hold)
        apply_retention(state)

    interval = state.settings.loop_interval_seconds
    await leased_loop(state, stop, LEASE, interval, interval * 3, work)


async def search_loop(state: AppState, stop: asyncio.Event) -> None:
    """Every search_poll_seconds: advance every running search (queue trials, tell the study how trials ended,
    finish), in the process holding the `searches` lease."""
    interval = state.settings.search_poll_seconds
    await leased_loop(
        state, stop, SEARCH_LEASE, interval, max(10.0, interval * 5), lambda hold: searches.advance_all(state, hold)
    )
