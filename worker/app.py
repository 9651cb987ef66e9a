"""The worker process: a Celery app with one thin task, a reaper thread, and the migrations check."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import SecurityWarning
from celery.signals import worker_ready, worker_shutting_down

from core.broker import RUN_JOB, enqueue, make_celery
from core.config import Settings
from core.db.session import make_engine, make_sessionmaker, require_head
from core.logs import LogFormat, setup_logging
from core.storage import make_store
from worker.execute import Runtime, execute_job, reap_if_holder
from worker.metrics import beat, serve_metrics

log = logging.getLogger("fitcycle.worker")


def build_worker(settings: Settings) -> tuple[Celery, Runtime]:
    """A Celery app whose `fitcycle.run_job` task runs jobs against these settings."""
    engine = make_engine(settings.sqlalchemy_url)
    require_head(engine)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    rt = Runtime(settings, make_sessionmaker(engine), make_store(settings), owner)
    app = make_celery(settings)

    rt.send = lambda job_id, queue: enqueue(app, job_id, queue)

    @app.task(name=RUN_JOB, acks_late=True, reject_on_worker_lost=True)
    def run_job(job_id: str) -> str:
        # Thin by design: the row is re-read and claimed inside execute_job; failures are recorded there.
        return execute_job(rt, job_id)

    @worker_shutting_down.connect(weak=False)
    def _shutting_down(sig: str = "", how: str = "", **_: Any) -> None:
        # A warm shutdown (SIGTERM, or the parent `serve` gone) waits for the running task: make that task
        # stop at its next batch, checkpointed and handed back, so the wait is bounded.
        log.info(
            "worker shutting down (%s %s): the running job, if any, checkpoints and goes back to the queue", sig, how
        )
        rt.shutdown.set()

    return app, rt


def start_reaper(app: Celery, rt: Runtime, stop: threading.Event) -> threading.Thread:
    """Every reaper_interval: the worker that holds the fleet's reaper lease re-queues jobs whose lease expired
    or whose message was lost (one reaper per fleet, however many workers; another takes over within three
    intervals when it goes)."""

    def loop() -> None:
        while not stop.wait(rt.settings.reaper_interval_seconds):
            try:
                reap_if_holder(rt, lambda job_id, queue: enqueue(app, job_id, queue))
                beat()
            except Exception:
                log.exception("reaper pass failed")

    thread = threading.Thread(target=loop, name="fitcycle-reaper", daemon=True)
    thread.start()
    return thread


def _quiet_start_up(ready_file: Path | None, log_format: LogFormat) -> None:
    """Keep the worker's start-up to what a user needs: our own INFO lines, no migration chatter, no
    banner; Celery's root warning replaced by one line that says what to do."""
    setup_logging(log_format)
    for noisy in ("alembic", "celery.worker.consumer", "celery.apps.worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)  # "No hostname was supplied" (filesystem://)
    warnings.filterwarnings("ignore", category=SecurityWarning)
    if os.geteuid() == 0:
        log.info(
            "running as root: fine on a laptop or in CI; on a shared host run `fitcycle worker` as an "
            "unprivileged user (deploy/Dockerfile runs it as uid 10001)"
        )
    if ready_file is not None:

        @worker_ready.connect(weak=False)
        def _ready(**_: Any) -> None:
            ready_file.write_text(str(os.getpid()))
            log.info("worker ready: one job at a time")


def run_worker(
    settings: Settings,
    queues: list[str] | None = None,
    pool: str = "solo",
    extra: list[str] | None = None,
    ready_file: Path | None = None,
) -> None:
    """Run a worker until stopped: one job at a time, prefetch 1. `ready_file` is written once it consumes."""
    _quiet_start_up(ready_file, settings.log_format)
    app, rt = build_worker(settings)
    serve_metrics(settings.worker_metrics_port)
    stop = threading.Event()
    start_reaper(app, rt, stop)
    args: list[Any] = [
        "--quiet",  # no banner
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
