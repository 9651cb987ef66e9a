"""API docs that work offline: Swagger UI and ReDoc from the assets the pinned `fastapi-offline` package ships
(FastAPI's defaults load them from a CDN, so /docs is blank on a machine without internet); `/` leads to
the docs, and the OpenAPI document answers at /openapi.json as well as under the API prefix.

Both pages answer with a Content-Security-Policy that lets them load this site's assets only (the one inline
script Swagger UI's page carries is allowed by its hash, computed from the page it is in), never be framed
(`frame-ancestors 'none'` and X-Frame-Options: DENY), and send nothing anywhere but this site; the web UI's
PageGuard (api/ui) adds X-Content-Type-Options: nosniff and a Referrer-Policy to them as to every answer."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)  # a <script src=...> has attributes: not inline
# Styles: ReDoc and Swagger UI inject <style> elements at run time, and ReDoc's page has one inline. Images: the
# assets' data: icons. Workers: ReDoc's search runs in a worker it makes from a blob: URL.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'{hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def content_security_policy(html: str) -> str:
    """The docs pages' policy, with the hash of each inline script the page carries (and no other)."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(html)
    )
    return DOCS_CSP.format(hashes=hashes)


def guarded(page: HTMLResponse) -> HTMLResponse:
    """A docs page with its policy and the frame header."""
    page.headers["Content-Security-Policy"] = content_security_policy(bytes(page.body).decode())
    page.headers["X-Frame-Options"] = "DENY"
    return page


def install_docs(app: FastAPI, openapi_url: str) -> None:
    """Mount the assets and the /docs, /redoc, / and /openapi.json routes."""
    app.mount(ASSETS, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return guarded(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{app.title} — API docs",
                swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{ASSETS}/favicon.png",
                # No badge from validator.swagger.io: the page asks nothing of another site.
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return guarded(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{app.title} — API reference",
                redoc_js_url=f"{ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())
