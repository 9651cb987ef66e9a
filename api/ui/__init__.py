"""The web UI that `fitcycle serve` serves at `/`: server-rendered pages (Jinja2) over the REST API's own
services, one small script per page calling the REST API, uPlot for curves (from npm, pinned, served from
node_modules), signed in with an HttpOnly session cookie and protected by a CSRF token."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.ui.pages import router
from api.ui.session import SignInRequired

HERE = Path(__file__).parent
UPLOT = HERE / "node_modules" / "uplot" / "dist"

# Pages load only this site's scripts, styles and images (blob: and data: for the images a page draws).
PAGE_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class PageHeaders:
    """ASGI middleware: the security headers on every response outside the REST API."""

    def __init__(self, app: ASGIApp, api_prefix: str) -> None:
        self.app, self.api_prefix = app, api_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(self.api_prefix + "/"):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *PAGE_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def install_ui(app: FastAPI, api_prefix: str) -> None:
    """The pages, their static files, and the redirect to /signin for a page asked for without a session."""

    async def to_signin(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        from urllib.parse import quote

        return RedirectResponse(f"/signin?next={quote(exc.next_path, safe='/')}", status_code=303)

    app.add_exception_handler(SignInRequired, to_signin)
    app.mount("/static/vendor/uplot", StaticFiles(directory=UPLOT, check_dir=False), name="uplot")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)
    app.add_middleware(PageHeaders, api_prefix=api_prefix)
