"""Prometheus metrics of the API process: HTTP requests by route and status and their latency, predict latency,
the prediction log's write-behind queue, and — read from the database and the broker at each scrape — jobs by
state and kind, and queue depth per queue.
Names start with `fitcycle_`. They answer without a key, so where they answer is the guard: with
FITCYCLE_METRICS_PORT set (every deploy manifest sets it) a small server of their own serves them on that port,
which stays inside the network, and the API's public port answers 404 at /metrics; unset (the embedded default
on a laptop), GET /metrics on the API's port. The worker serves its own (job and epoch durations, images/s,
heartbeat: worker/metrics.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from kombu.exceptions import ChannelError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.db import repos
from core.db.models import utcnow
from core.db.session import session_scope

log = logging.getLogger("fitcycle.api")

HTTP_REQUESTS = Counter(
    "fitcycle_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_SECONDS = Histogram(
    "fitcycle_http_request_seconds", "time to answer an HTTP request, by route template", ["route"]
)
PREDICT_SECONDS = Histogram(
    "fitcycle_predict_seconds",
    "time to answer a predict request (the model's part: decode, forward, answer), by source",
    ["source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
PREDICT_BATCH_IMAGES = Histogram(
    "fitcycle_predict_batch_images",
    "images per forward pass of the predict micro-batcher (nothing is recorded while batching is off)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


def route_of(scope: Scope) -> str:
    """The matched route's template (/api/v1/jobs/{job_id}), never the raw path: a bounded set of labels. The
    request's path with each path parameter's value put back as its name (routers nest, so the route's own
    `path` lacks its prefixes)."""
    raw: str = scope.get("path", "")
    if scope.get("route") is None:
        return "/static" if raw.startswith("/static/") else "unmatched"
    template = raw
    for name, value in sorted((scope.get("path_params") or {}).items(), key=lambda kv: -len(str(kv[1]))):
        template = template.replace(f"/{value}", f"/{{{name}}}", 1)
    return template


class HttpMetrics:
    """ASGI middleware: counts every answered request and times it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = route_of(scope)
            HTTP_REQUESTS.labels(route, scope.get("method", ""), str(status)).inc()
            HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)


class PlatformCollector(Collector):
    """What the database and the broker say at scrape time."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("fitcycle_jobs", "jobs by state and kind", labels=["state", "kind"])
        with session_scope(self.state.sessions) as s:
            for state, kind, n in repos.job_counts(s):
                jobs.add_metric([state, kind], n)
        yield jobs
        depth = GaugeMetricFamily(
            "fitcycle_queue_depth", "job messages waiting in the broker, per queue", labels=["queue"]
        )
        for queue in self.state.settings.queues:
            waiting = queue_depth(self.state.celery, queue)
            if waiting is not None:
                depth.add_metric([queue], waiting)
        yield depth
        drift = GaugeMetricFamily(
            "fitcycle_drift_score",
            "a served model's population stability index against its reference, per signal (uncertainty, class_mix, "
            "input), at its last drift check of the last 24 hours",
            labels=["model", "signal"],
        )
        alarms = GaugeMetricFamily(
            "fitcycle_drift_alarm",
            "1 while a served model's drift alarm is open (a score past its project's threshold plus sampling noise)",
            labels=["model"],
        )
        with session_scope(self.state.sessions) as s:
            for checked in repos.drift_states(s, since=utcnow() - timedelta(hours=24)):
                for signal, shift in checked.scores.items():
                    drift.add_metric([checked.model_id, signal], float(shift.get("score", 0.0)))
                alarms.add_metric([checked.model_id], 1.0 if checked.alarm else 0.0)
        yield drift
        yield alarms


def queue_depth(celery: Any, queue: str) -> int | None:
    """Messages waiting in a queue (any kombu transport: Redis, the filesystem), or None when unreachable."""
    try:
        with celery.connection_for_read() as conn:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
    except ChannelError as exc:
        if "NOT_FOUND" in str(exc):  # Redis drops an empty list: no queue is an empty queue
            return 0
        log.warning("metrics: the broker did not say how deep queue %s is", queue, exc_info=True)
        return None
    except Exception:
        log.warning("metrics: the broker did not say how deep queue %s is", queue, exc_info=True)
        return None


class PredictionQueueCollector(Collector):
    """How many answers wait in this API process's prediction queue (api/prediction_queue.py) to be logged."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "fitcycle_prediction_log_queue_depth",
            "answers sent and not yet written to the prediction log (kept input and row), in this API process; "
            "at its bound, predict requests wait for room",
            value=self.state.prediction_queue.depth,
        )


class AllMetrics(Collector):
    """The process's metrics (the default registry) and the platform's: what either place serves."""

    def __init__(self, state: Any) -> None:
        self.platform = PlatformCollector(state)
        self.queue = PredictionQueueCollector(state)

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self.queue.collect()
        yield from self.platform.collect()


def registry_of(state: Any) -> CollectorRegistry:
    """A registry that collects everything the API exposes, for an app's state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AllMetrics(state))
    return registry


def metrics_response(request: Request) -> Response:
    """The process's metrics and the platform's, in Prometheus' text format (GET /metrics, no metrics port)."""
    return Response(generate_latest(registry_of(request.app.state.fitcycle)), media_type=CONTENT_TYPE_LATEST)


def serve_metrics(state: Any, port: int) -> Callable[[], None]:
    """Serve the same metrics on 0.0.0.0:port from a thread of this process (prometheus_client's server: any
    path answers them; it never reaches the app, its guard or its routes). Returns what stops it."""
    server, thread = start_http_server(port, registry=registry_of(state))
    log.info("API metrics on :%d/metrics", port)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
