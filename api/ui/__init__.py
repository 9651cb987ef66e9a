"""The web UI that `fitcycle serve` serves at `/`: server-rendered pages (Jinja2) over the REST API's own
services, one small script per page calling the REST API, uPlot for curves (from npm, pinned, served from
node_modules), signed in with an HttpOnly session cookie and protected by a CSRF token."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.ui.pages import router
from api.ui.session import SignInRequired

HERE = Path(__file__).parent
UPLOT = HERE / "node_modules" / "uplot" / "dist"

# Pages load only this site's scripts, styles and images (blob: and data: for the images a page draws).
PAGE_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
PAGE_HEADERS = [(b"content-security-policy", PAGE_CSP), (b"x-frame-options", b"DENY"), *COMMON]
# The API's answers (JSON, images a user uploaded) are never a document to run: sandboxed if opened.
API_HEADERS = [(b"content-security-policy", b"default-src 'none'; sandbox"), *COMMON]
DOCS = ("/docs", "/redoc", "/docs-assets/", "/openapi.json")  # Swagger UI and ReDoc bring their own inline script
MAX_FORM_BYTES = 8 * 1024  # the sign-in and sign-out forms: a key and a token


class PageGuard:
    """ASGI middleware for everything outside the REST API's guard: security headers on every response, and
    the pages' own form posts (sign-in, sign-out) capped before they are read: a declared length of at most
    8 KiB, urlencoded."""

    def __init__(self, app: ASGIApp, api_prefix: str) -> None:
        self.app, self.api_prefix = app, api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path.startswith(self.api_prefix + "/"):
            extra = API_HEADERS
        elif path.startswith(DOCS):
            extra = COMMON
        else:
            extra = PAGE_HEADERS
            refusal = _form_refusal(scope)
            if refusal is not None:
                await _refuse(send, *refusal, extra)
                return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


def _form_refusal(scope: Scope) -> tuple[int, str] | None:
    """Why a page's POST is refused unread, if it is."""
    if scope.get("method") in ("GET", "HEAD"):
        return None
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    length = headers.get("content-length", "")
    if not length.isdigit():
        return 411, "a form post needs a Content-Length"
    if int(length) > MAX_FORM_BYTES:
        return 413, f"a form post is at most {MAX_FORM_BYTES} bytes"
    if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return 415, "the pages post urlencoded forms only"
    return None


async def _refuse(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra]})
    await send({"type": "http.response.body", "body": body})


def install_ui(app: FastAPI, api_prefix: str) -> None:
    """The pages, their static files, and the redirect to /signin for a page asked for without a session."""

    async def to_signin(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        return RedirectResponse(f"/signin?next={quote(exc.next_path, safe='/')}", status_code=303)

    app.add_exception_handler(SignInRequired, to_signin)
    app.mount("/static/vendor/uplot", StaticFiles(directory=UPLOT, check_dir=False), name="uplot")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)
    app.add_middleware(PageGuard, api_prefix=api_prefix)
