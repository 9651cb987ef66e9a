"""The web UI's sign-in. Signing in with a project key makes a server-side session (ui_sessions: the hash of
a random token, the key it was made with, an expiry); the browser keeps only the token, in an HttpOnly,
SameSite=Strict cookie, never the key. Signing out ends the session on the server; revoking the key ends its
sessions too. Signing in again in the same browser ends the session it replaces; each sign-in purges expired
sessions; /sessions lists the key's sessions and signs it out everywhere. Every state-changing request brings
back a per-browser CSRF token (double submit: a random cookie, echoed by the page in a form field or the
X-CSRF-Token header) and must come from this site's own pages (Sec-Fetch-Site / Origin). The REST API's guard
accepts the same session cookie with the same checks, so the pages' scripts call the REST API itself."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from api.guard import CSRF_COOKIE, SESSION_COOKIE, csrf_matches, same_origin
from api.state import AppState
from core.db import domain, repos
from core.db.session import session_scope


class SignInRequired(Exception):
    """A page was asked for without a working session: the answer is a redirect to /signin."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.fitcycle
    return state


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
        _csrf_cookie(request, response, new)


def form_ok(request: Request, sent: str | None) -> bool:
    """A form post from this site's own page, with the browser's CSRF token."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    return same_origin(headers) and csrf_matches(request.cookies.get(CSRF_COOKIE), sent)


def _session_token(request: Request) -> str | None:
    """The browser's session token, when its cookie holds something that could be one."""
    token = request.cookies.get(SESSION_COOKIE)
    return token if token and len(token) <= 200 else None


def sign_in(request: Request, response: Response, caller: domain.Caller) -> None:
    """A new session for the caller's key; the CSRF token is rotated with it. The session this browser held
    before ends (its cookie is replaced, so nothing would ever end it), and expired sessions are purged."""
    state = app_state(request)
    replaced = _session_token(request)
    with session_scope(state.sessions) as s:
        token = repos.create_ui_session(s, caller.key.id, state.settings.ui_session_days, replaces=replaced)
    # Every API process forgets the session replaced, and the key's oldest one if the sign-in ended it (the cap).
    ended = [("key", caller.key.id)] + ([("session", repos.hash_key(replaced))] if replaced else [])
    state.invalidations.publish(*ended)
    _cookie(request, response, SESSION_COOKIE, token, state.settings.ui_session_days * 86400, "strict")
    _csrf_cookie(request, response, secrets.token_urlsafe(32))


def sign_out(request: Request, response: Response) -> None:
    """End the session on the server, forget its cookie, rotate the CSRF token, and clear the cached pages."""
    token = _session_token(request)
    if token:
        with session_scope(app_state(request).sessions) as s:
            repos.end_ui_session(s, token)
        app_state(request).invalidations.publish(("session", repos.hash_key(token)))  # on every API process
    _forget(request, response)


def sign_out_everywhere(request: Request, response: Response, caller: domain.Caller) -> int:
    """End every session of the caller's key (this browser's and every other's); returns how many ended."""
    with session_scope(app_state(request).sessions) as s:
        ended = repos.end_ui_sessions_of_key(s, caller.key.id)
    app_state(request).invalidations.publish(("key", caller.key.id))  # every API process forgets them
    _forget(request, response)
    return ended


def sessions_of(request: Request, caller: domain.Caller) -> list[domain.UiSession]:
    """The live sessions of the caller's key, newest first, this browser's marked."""
    with session_scope(app_state(request).sessions) as s:
        return repos.list_ui_sessions(s, caller.key.id, _session_token(request))


def _forget(request: Request, response: Response) -> None:
    """Forget the session cookie, rotate the CSRF token, and clear the cached pages."""
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    _csrf_cookie(request, response, secrets.token_urlsafe(32))
    response.headers["Clear-Site-Data"] = '"cache"'


def _csrf_cookie(request: Request, response: Response, value: str) -> None:
    # Lax: it is not a credential (a page arriving from a link must not mint a new one and break open tabs).
    _cookie(request, response, CSRF_COOKIE, value, app_state(request).settings.ui_session_days * 86400, "lax")


def _cookie(request: Request, response: Response, name: str, value: str, max_age: int, samesite: str) -> None:
    configured = app_state(request).settings.secure_cookies
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite=samesite,  # type: ignore[arg-type]
        secure=configured if configured is not None else request.url.scheme == "https",
    )


def caller_of(state: AppState, token: str | None) -> domain.Caller | None:
    """The caller behind a session token (looked up every time: signing out or revoking the key ends it)."""
    return _lookup(state, "session", token)


def key_caller(state: AppState, key: str) -> domain.Caller | None:
    """The caller behind a key typed into the sign-in form."""
    return _lookup(state, "bearer", key)


def _lookup(state: AppState, kind: str, secret: str | None) -> domain.Caller | None:
    if not secret or len(secret) > 200:
        return None
    with session_scope(state.sessions) as s:
        return repos.caller_for(s, (kind, secret))


async def page_caller(request: Request) -> domain.Caller:
    """The signed-in caller of a page, or a redirect to /signin that comes back here."""
    caller = await run_in_threadpool(caller_of, app_state(request), request.cookies.get(SESSION_COOKIE))
    if caller is None:
        raise SignInRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return caller


PageCaller = Annotated[domain.Caller, Depends(page_caller)]


def local_path(value: str | None, default: str = "/datasets") -> str:
    """A redirect target that stays on this site: a path, never //host, a scheme, a backslash or a control
    character."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        return default
    return value
