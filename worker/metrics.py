"""Prometheus metrics of a worker process, on its own port (FITCYCLE_WORKER_METRICS_PORT; 0, the default, is
off): how long jobs and epochs take, training images per second, and a heartbeat the worker's background
threads beat (the lease renewer while a job runs, the reaper between jobs)."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("fitcycle.worker")

JOB_SECONDS = Histogram(
    "fitcycle_job_seconds",
    "time from claiming a job to its outcome, by kind and outcome",
    ["kind", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
)
EPOCH_SECONDS = Histogram(
    "fitcycle_epoch_seconds", "time of one epoch (training and validation)", buckets=(1, 5, 15, 30, 60, 120, 300, 900)
)
IMAGES_PER_SECOND = Gauge("fitcycle_images_per_second", "training images per second of the last epoch")
JOBS_DONE = Counter("fitcycle_worker_jobs", "jobs this worker ran to an outcome", ["outcome"])
HEARTBEAT = Gauge("fitcycle_worker_heartbeat_timestamp_seconds", "when this worker last showed it was alive")


def beat() -> None:
    HEARTBEAT.set(time.time())


def serve_metrics(port: int) -> None:
    """Expose the metrics on 0.0.0.0:port (a pod's port; 0 leaves them off)."""
    if port:
        start_http_server(port)
        beat()
        log.info("worker metrics on :%d/metrics", port)
