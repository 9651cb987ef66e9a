"""GET /health: 200 when the database, the object store and the broker answer (readiness). GET /live: 200 while
the process serves requests at all, whatever its dependencies do (liveness: a database outage must not restart
every API replica)."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from api.deps import StateDep
from core.broker import ping_broker

router = APIRouter(tags=["health"])
log = logging.getLogger("fitcycle.api")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="database, store, broker: ok, or unavailable")


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is not answering (named in checks)"}},
)
def health(state: StateDep) -> JSONResponse:
    """Check each dependency; 503 names the ones that failed."""
    checks: dict[str, str] = {}
    for name, probe in [
        ("database", lambda: state.engine.connect().execute(text("SELECT 1")).close()),
        ("store", state.store.ping),
        ("broker", lambda: ping_broker(state.celery)),
    ]:
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # the exception text can name hosts and users: it goes to the log only
            log.warning("health check: %s is not answering (%s: %s)", name, type(exc).__name__, exc)
            checks[name] = "unavailable (see the server log)"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@router.get("/live")
async def live() -> dict[str, str]:
    """Answered by the event loop alone: no database, store or broker, no key, no threadpool."""
    return {"status": "alive"}
