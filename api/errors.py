"""Errors are JSON problem details (RFC 9457): what was wrong, where, and how to fix it."""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.engine.errors import BundleError, DataError, FitcycleError, PretrainedWeightsNotFound, WeightsMismatch
from core.storage.base import ObjectNotFound, StoreUnavailable

log = logging.getLogger("fitcycle.api")
PROBLEM = "application/problem+json"


class Problem(Exception):
    """An error answered as problem details."""

    def __init__(
        self, status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        self.headers = headers or {}  # e.g. a 429's Retry-After


def not_found(what: str, ident: str) -> Problem:
    """404 for anything missing or belonging to another project (the two look the same)."""
    return Problem(404, "Not Found", f"no {what} '{ident}' in this project")


def problem_response(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the request's path answers (routers nest: each method is asked of them all)."""
    routes = request.app.router.routes
    return [
        method
        for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


def install_handlers(app: FastAPI) -> None:
    """Turn every error into problem details."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        response = problem_response(exc.status, exc.title, exc.detail, **exc.extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]} for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = problem_response(
            exc.status_code, str(exc.detail) if exc.status_code < 500 else "Error", str(exc.detail)
        )
        response.headers.update(exc.headers or {})  # a 401's WWW-Authenticate
        if exc.status_code == 405:  # Starlette names the first route of the path only: name every one's methods
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response

    @app.exception_handler(FitcycleError)
    async def _fitcycle(_: Request, exc: FitcycleError) -> JSONResponse:
        status = 422 if isinstance(exc, DataError | WeightsMismatch | PretrainedWeightsNotFound | BundleError) else 400
        return problem_response(status, type(exc).__name__, str(exc))

    @app.exception_handler(ObjectNotFound)
    async def _object_gone(request: Request, exc: ObjectNotFound) -> JSONResponse:
        # What a row named is no longer stored: deleted by another request between the lookup and the read.
        log.warning("%s %s: a stored object is gone (%s)", request.method, request.url.path, exc)
        return problem_response(404, "Not Found", "what this names was deleted meanwhile")

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        response = problem_response(
            503,
            "Service Unavailable",
            "the object store is not answering (down, or out of space); what was stored before is intact; "
            "try again later",
        )
        response.headers["Retry-After"] = "30"
        return response

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            log.error("%s %s: the disk is full (%s)", request.method, request.url.path, exc.strerror)
            return problem_response(
                507,
                "Insufficient Storage",
                "the server's disk is full: nothing of this request was stored, and what was stored before is "
                "intact; try again once an operator has freed space",
            )
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem_response(500, "Internal Server Error", "an unexpected error occurred; see the server log")
