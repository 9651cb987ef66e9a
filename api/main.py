"""The FastAPI application: routers under /api/v1, problem-detail errors, and a startup that refuses
a database not at the migrations' head."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deliveries import DeliveryWorker
from api.docs import install_docs
from api.errors import install_handlers
from api.guard import Guard
from api.loops import fleet_loop, search_loop
from api.metrics import HttpMetrics, metrics_response, serve_metrics
from api.openapi import install_openapi
from api.outage import DatabaseOutage
from api.request_id import RequestId
from api.routes import api_router
from api.state import AppState
from api.ui import install_ui
from core.broker import make_celery
from core.config import Settings
from core.db.session import make_engine, make_sessionmaker, require_head
from core.storage import make_store

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app bound to `settings` (read from the environment when not given)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.sqlalchemy_url)
        require_head(engine)
        app.state.fitcycle = AppState(
            settings, engine, make_sessionmaker(engine), make_store(settings), make_celery(settings)
        )
        # The metrics' own port (kept inside the network), when set; the public port then has no /metrics.
        stop_metrics = serve_metrics(app.state.fitcycle, settings.metrics_port) if settings.metrics_port else None
        state: AppState = app.state.fitcycle
        stop = asyncio.Event()
        writer = asyncio.create_task(state.prediction_queue.run())  # the prediction log, written behind the answers
        loops = [asyncio.create_task(state.invalidations.listen(stop, state.lookups_heard))]
        if settings.loop_interval_seconds:
            loops.append(asyncio.create_task(fleet_loop(state, stop)))
        if settings.search_poll_seconds:
            loops.append(asyncio.create_task(search_loop(state, stop)))
        if settings.webhook_poll_seconds:
            loops.append(asyncio.create_task(DeliveryWorker(state).run(stop)))
        yield
        await state.prediction_queue.close(writer)  # what was answered is logged before the process ends
        stop.set()
        await asyncio.gather(*loops)
        if stop_metrics is not None:
            stop_metrics()
        engine.dispose()

    app = FastAPI(
        title="fitcycle",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=f"{API_PREFIX}/openapi.json",
        description="Train, serve and retrain image models the fast.ai way.",
    )
    install_handlers(app)
    install_docs(app, f"{API_PREFIX}/openapi.json")
    app.include_router(api_router, prefix=API_PREFIX)
    install_openapi(app, API_PREFIX, settings.max_predict_files)  # what FastAPI cannot see: the key, the errors
    if not settings.metrics_port:  # no key: the embedded default; deployments serve them on a port of their own
        app.add_api_route("/metrics", metrics_response, include_in_schema=False)
    install_ui(app, API_PREFIX)
    app.add_middleware(Guard, prefix=API_PREFIX, state=lambda: app.state.fitcycle)
    app.add_middleware(DatabaseOutage, retry_after=settings.db_outage_retry_after)  # the guard reads keys too
    app.add_middleware(HttpMetrics)  # it sees every answer, refusals included
    app.add_middleware(RequestId)  # outermost: every log line of the request carries its id
    return app
