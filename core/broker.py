"""The Celery app both sides share: the API sends `fitcycle.run_job` by name, the worker runs it.
Settings for long jobs: acks_late, prefetch 1, reject_on_worker_lost, a visibility timeout longer
than any job. The database stays the truth; the message carries only a job id."""

from __future__ import annotations

import logging

from celery import Celery

from core.config import Settings

RUN_JOB = "fitcycle.run_job"
WEEK = 7 * 24 * 3600


def make_celery(settings: Settings) -> Celery:
    """A Celery app for the configured broker (Redis, or the filesystem transport under data_dir)."""
    app = Celery("fitcycle", broker=settings.celery_broker_url, set_as_current=False)
    options: dict[str, object]
    if settings.is_embedded_broker:
        # kombu warns "No hostname was supplied" for every filesystem:// connection, API's and worker's alike:
        # a transport on this disk has no host to supply.
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)
        queue = settings.broker_folder / "queue"
        processed = settings.broker_folder / "processed"
        queue.mkdir(parents=True, exist_ok=True)
        processed.mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "store_processed": False,
            "control_folder": str(settings.broker_folder / "control"),  # kombu's default is ./control in the cwd
            "polling_interval": 0.2,  # kombu's default (1 s) would add up to a second to every submit
        }
    else:
        options = {"visibility_timeout": WEEK}
        # Task events for Flower (sent, received, started, succeeded or failed): a few small messages per job,
        # published to Redis whether or not anyone listens. The filesystem broker has no fanout to carry them.
        app.conf.update(worker_send_task_events=True, task_send_sent_event=True)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.default_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_heartbeat=0,
    )
    return app


def enqueue(app: Celery, job_id: str, queue: str) -> None:
    """Send a job id to a queue (after the job row was committed)."""
    app.send_task(RUN_JOB, args=[job_id], queue=queue)


def ping_broker(app: Celery) -> None:
    """Raise when the broker does not answer."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
