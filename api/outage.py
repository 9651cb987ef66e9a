"""ASGI middleware: while the database is away (restarting, failing over), answer 503 with Retry-After, not 500.
It sits outside the guard (which reads API keys from the database) and the routes alike; nothing to undo, the
next request after the database is back just works (the pool's pre-ping drops dead connections)."""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_response
from core.db.outage import is_outage

log = logging.getLogger("fitcycle.api")


class DatabaseOutage:
    def __init__(self, app: ASGIApp, retry_after: int) -> None:
        self.app, self.retry_after = app, retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started or not is_outage(exc):
                raise
            log.warning(
                "%s %s: the database is not answering (%s); 503", scope["method"], scope["path"], type(exc).__name__
            )
            response = problem_response(
                503,
                "Service Unavailable",
                f"the database is not answering; the request was not carried out; try again in {self.retry_after} s",
            )
            response.headers["Retry-After"] = str(self.retry_after)
            await response(scope, receive, send)
