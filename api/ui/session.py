"""The web UI's sign-in: the project key lives in an HttpOnly, SameSite=Strict cookie (never in the page or
localStorage), and every state-changing request brings back a per-browser CSRF token (double submit: a random
cookie, echoed by the page in a form field or the X-CSRF-Token header). The REST API's guard accepts the same
cookie and checks the same token, so the pages' scripts call the REST API itself."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from api.guard import CSRF_COOKIE, SESSION_COOKIE
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope

SESSION_DAYS = 7


class SignInRequired(Exception):
    """A page was asked for without a working session: the answer is a redirect to /signin."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def csrf_token(request: Request) -> str:
    """The browser's CSRF token: its cookie, or a new one (set on the response by `remember_csrf`)."""
    token = request.cookies.get(CSRF_COOKIE, "")
    if len(token) < 32:
        token = request.state.__dict__.setdefault("new_csrf", secrets.token_urlsafe(32))
    return token


def remember_csrf(request: Request, response: Response) -> None:
    """Set the CSRF cookie when this request made a new token."""
    new = request.state.__dict__.get("new_csrf")
    if new:
        _cookie(request, response, CSRF_COOKIE, new, max_age=SESSION_DAYS * 86400)


def csrf_ok(request: Request, sent: str | None) -> bool:
    """A form's (or header's) token matches the browser's cookie."""
    expected = request.cookies.get(CSRF_COOKIE, "")
    return bool(expected) and sent is not None and hmac.compare_digest(expected.encode(), sent.encode())


def sign_in(request: Request, response: Response, key: str) -> None:
    _cookie(request, response, SESSION_COOKIE, key, max_age=SESSION_DAYS * 86400)


def sign_out(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def caller_of(state: AppState, key: str | None) -> domain.Caller | None:
    """The caller behind a session's key (looked up every time: a revoked key signs the browser out)."""
    if not key or len(key) > 200:
        return None
    with session_scope(state.sessions) as s:
        return repos.caller_for_key(s, key)


async def page_caller(request: Request) -> domain.Caller:
    """The signed-in caller of a page, or a redirect to /signin that comes back here."""
    state: AppState = request.app.state.fitcycle
    caller = await run_in_threadpool(caller_of, state, request.cookies.get(SESSION_COOKIE))
    if caller is None:
        raise SignInRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return caller


PageCaller = Annotated[domain.Caller, Depends(page_caller)]


def local_path(value: str | None, default: str = "/datasets") -> str:
    """A redirect target that stays on this site (a path, never //host or a scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value
