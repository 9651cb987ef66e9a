"""The gate every API request passes before a route runs, as plain ASGI so that it acts before a byte of
the body is read: the project key is checked from the headers (401, body unread) — `Authorization: Bearer
KEY`, or the web UI's session cookie, which must bring its CSRF token on every unsafe method — the project's request
rate is counted (429), and the body is capped by route — at once from Content-Length, and again while it
streams, for bodies that do not declare their length (413). A route only ever sees a request that passed."""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import Settings
from core.db import domain, repos
from core.db.session import session_scope

log = logging.getLogger("fitcycle.api")
CALLER = "fitcycle_caller"  # the key of the authenticated domain.Caller in the request's scope state
CREDENTIAL = "fitcycle_credential"  # ("bearer", key) or ("session", token) in the scope state (streams re-check it)
SESSION_COOKIE = "fitcycle_session"  # the web UI's sign-in: a session token (not the key), HttpOnly, SameSite=Strict
CSRF_COOKIE = "fitcycle_csrf"  # a random token per browser; pages echo it, unsafe requests send it back
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
OPEN_PATHS = ("/health", "/live", "/openapi.json")  # under the API prefix, answered without a key
PREDICT = re.compile(r"^/(models/[^/]+|registry/[^/]+)/predict$")
MASKS = re.compile(r"^/(predictions/[^/]+/feedback|datasets/[^/]+/versions)$")


class BodyTooLarge(Exception):
    """Raised into the app by `receive` once a body passes its cap."""


def body_limit(settings: Settings, method: str, path: str) -> int:
    """The most bytes a request's body may have on this route."""
    if method == "POST" and path == "/datasets":
        return settings.max_upload_bytes
    if method == "POST" and path == "/weights":
        return settings.max_weights_bytes
    if method == "POST" and PREDICT.match(path):
        return settings.max_predict_files * settings.max_predict_file_bytes + 1024**2  # + the multipart framing
    if method == "POST" and MASKS.match(path):  # feedback and version cuts may carry base64 masks
        return settings.max_edits_body_bytes
    return settings.max_json_body_bytes


def _problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> list[Message]:
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    raw = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    # The body may be left unread: say so, so that the server closes the connection instead of reading on.
    raw.append((b"connection", b"close"))
    return [
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": body},
    ]


class Guard:
    """ASGI middleware: authenticate, rate-limit and cap the body of every request under `prefix`."""

    def __init__(self, app: ASGIApp, prefix: str, state: Callable[[], Any]) -> None:
        self.app, self.prefix, self.state = app, prefix, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.prefix + "/"):
            await self.app(scope, receive, send)
            return
        route = path[len(self.prefix) :]
        if route in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        state = self.state()
        settings: Settings = state.settings
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        # 1. Who is asking: from the headers alone; the body is not read for an unknown caller.
        credential, refusal = presented_credential(headers, scope.get("method", "GET"))
        if refusal:
            await _send_all(send, _problem(403, "Forbidden", refusal))
            return
        caller = await _caller(state, credential)
        if isinstance(caller, str):
            await _send_all(send, _problem(401, "Unauthorized", caller, {"WWW-Authenticate": "Bearer"}))
            return

        # 2. How often: per project, per minute.
        retry_after = await state.rate_limiter.hit(caller.project.id)
        if retry_after is not None:
            await _send_all(
                send,
                _problem(
                    429,
                    "Too Many Requests",
                    f"this project is over {settings.requests_per_minute} requests a minute "
                    f"(FITCYCLE_REQUESTS_PER_MINUTE); retry in {retry_after:.0f}s",
                    {"Retry-After": str(max(1, round(retry_after)))},
                ),
            )
            return

        # 3. How much: the declared length first, then the bytes as they arrive.
        limit = body_limit(settings, scope.get("method", "GET"), route)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_all(send, _too_large(limit, route))
            return
        scope.setdefault("state", {})[CALLER] = caller
        scope["state"][CREDENTIAL] = credential
        await self._capped(scope, receive, send, limit, route)

    async def _capped(self, scope: Scope, receive: Receive, send: Send, limit: int, route: str) -> None:
        received, over, started = 0, False, False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge(f"over {limit} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # whatever the app answers to the broken body, the client hears 413
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_all(send, _too_large(limit, route))
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
            if not started:
                await _send_all(send, _too_large(limit, route))


def _too_large(limit: int, route: str) -> list[Message]:
    if route == "/datasets":
        how = "split the dataset into several uploads, or raise FITCYCLE_MAX_UPLOAD_BYTES"
    elif route == "/weights":
        how = "a weights file is at most FITCYCLE_MAX_WEIGHTS_BYTES; raise it on the API servers for a larger one"
    elif PREDICT.match(route):
        how = "send at most FITCYCLE_MAX_PREDICT_FILES images of FITCYCLE_MAX_PREDICT_FILE_BYTES each"
    else:
        how = "send a smaller JSON body"
    return _problem(413, "Request too large", f"the request body is over {limit:,} bytes; {how}")


async def _send_all(send: Send, messages: list[Message]) -> None:
    for message in messages:
        await send(message)


def cookies(headers: dict[str, str]) -> dict[str, str]:
    """The request's cookies, parsed as browsers send them (one odd cookie spoils none of the others)."""
    return cookie_parser(headers.get("cookie", ""))


def same_origin(headers: dict[str, str]) -> bool:
    """Whether a browser says the request comes from this site's own pages: Sec-Fetch-Site, else Origin, when
    sent (a browser sends one of them on every unsafe request)."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host", "")


def csrf_matches(expected: str | None, sent: str | None) -> bool:
    """A CSRF token sent back equals the browser's cookie (a real one: 32 characters at least)."""
    return (
        expected is not None
        and len(expected) >= 32
        and sent is not None
        and hmac.compare_digest(expected.encode(), sent.encode())
    )


def presented_credential(headers: dict[str, str], method: str) -> tuple[tuple[str, str] | None, str]:
    """What a request presents — ("bearer", key) from `Authorization: Bearer KEY`, else ("session", token) from
    the web UI's cookie — and, for a cookie on an unsafe method from another site or without the page's CSRF
    token, why it is refused."""
    authorization = headers.get("authorization")
    if authorization is not None:
        if not authorization.lower().startswith("bearer "):
            return None, ""
        return ("bearer", authorization.split(" ", 1)[1].strip()), ""
    jar = cookies(headers)
    token = jar.get(SESSION_COOKIE)
    if token is None:
        return None, ""
    if method not in SAFE_METHODS:
        if not same_origin(headers):
            return None, f"a signed-in browser's {method} must come from this site's own pages"
        if not csrf_matches(jar.get(CSRF_COOKIE), headers.get(CSRF_HEADER)):
            return None, f"a signed-in browser's {method} needs the page's CSRF token in the X-CSRF-Token header"
    return ("session", token), ""


async def _caller(state: Any, credential: tuple[str, str] | None) -> domain.Caller | str:
    """The caller behind a key or a web UI session as this process read it less than FITCYCLE_LOOKUP_CACHE_SECONDS
    ago (a revocation, a project's new settings or an ended session drops it on every replica at once:
    api/lookup_cache.py), else read now; or why there is none (never kept: a new key works at once)."""
    if credential is None or not 0 < len(credential[1]) <= 200:
        return _authenticate(state, credential)  # refused without a lookup
    kind, secret = credential
    cache_key = (kind, repos.hash_key(secret))
    cached: domain.Caller | None = state.callers.get(cache_key)
    if cached is not None and cached.key.state == "active":  # an expiry passed since is seen here
        return cached
    since = state.callers.generation()
    caller = await run_in_threadpool(_authenticate, state, credential)
    if isinstance(caller, domain.Caller):
        depends_on = [("key", caller.key.id), ("project", caller.project.id)]
        if kind == "session":
            depends_on.append(("session", cache_key[1]))
        state.callers.put(cache_key, caller, depends_on, since)
    return caller


def _authenticate(state: Any, credential: tuple[str, str] | None) -> domain.Caller | str:
    """The caller behind a key or a web UI session, read from the database, or why there is none."""
    if credential is None:
        return (
            "send your project API key as 'Authorization: Bearer KEY' "
            "(create one with 'fitcycle keys create --project NAME')"
        )
    kind, secret = credential
    caller = None
    if 0 < len(secret) <= 200:
        with session_scope(state.sessions) as s:
            caller = repos.caller_for(s, credential)
    if caller is not None:
        return caller
    if kind == "session":
        return "your web UI sign-in has ended (signed out, expired or its key revoked)"
    return "the API key is not valid (revoked, expired, or never issued)"
