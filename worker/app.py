"""The worker process: a Celery app with one thin task, a reaper thread, and the migrations check."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Any

from celery import Celery

from core.broker import RUN_JOB, enqueue, make_celery
from core.config import Settings
from core.db.session import make_engine, make_sessionmaker, require_head
from core.storage import make_store
from worker.execute import Runtime, execute_job, reap_once

log = logging.getLogger("fitcycle.worker")


def build_worker(settings: Settings) -> tuple[Celery, Runtime]:
    """A Celery app whose `fitcycle.run_job` task runs jobs against these settings."""
    engine = make_engine(settings.sqlalchemy_url)
    require_head(engine)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    rt = Runtime(settings, make_sessionmaker(engine), make_store(settings), owner)
    app = make_celery(settings)

    @app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
    def run_job(job_id: str) -> str:
        # Thin by design: the row is re-read and claimed inside execute_job; failures are recorded there.
        return execute_job(rt, job_id)

    return app, rt


def start_reaper(app: Celery, rt: Runtime, stop: threading.Event) -> threading.Thread:
    """Every reaper_interval: re-queue jobs whose lease expired or whose message was lost."""

    def loop() -> None:
        while not stop.wait(rt.settings.reaper_interval_seconds):
            try:
                reap_once(rt, lambda job_id, queue: enqueue(app, job_id, queue))
            except Exception:
                log.exception("reaper pass failed")

    thread = threading.Thread(target=loop, name="fitcycle-reaper", daemon=True)
    thread.start()
    return thread


def run_worker(
    settings: Settings, queues: list[str] | None = None, pool: str = "solo", extra: list[str] | None = None
) -> None:
    """Run a worker until stopped: one job at a time, prefetch 1."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app, rt = build_worker(settings)
    stop = threading.Event()
    start_reaper(app, rt, stop)
    args: list[Any] = [
        "worker",
        f"--pool={pool}",
        "--concurrency=1",
        "--prefetch-multiplier=1",
        f"--queues={','.join(queues or [settings.default_queue])}",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        f"--hostname=fitcycle@{socket.gethostname()}-{os.getpid()}",
    ]
    try:
        app.worker_main([*args, *(extra or [])])
    finally:
        stop.set()
