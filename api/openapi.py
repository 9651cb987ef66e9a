"""The OpenAPI document as a client reads it: FastAPI's, amended once with what FastAPI cannot see — the bearer key
every route but health asks for (the guard, not a dependency, checks it), and the problem details (RFC 9457,
`application/problem+json`) each operation can answer, from the guard, the outage middleware and the handlers of
api/errors.py. Which errors an operation declares follows from what it is (protected, has a body, names a resource
in its path, changes state), so a route added later is documented without an edit here."""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import FastAPI

from api.errors import PROBLEM

SCHEME = "bearerAuth"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
UNSAFE = ("post", "put", "patch", "delete")

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "Problem details (RFC 9457): what was wrong, where, and how to fix it.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "about:blank: the title says what went wrong"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "what was wrong and how to fix it"},
        "field": {"type": "string", "description": "the field at fault, when one is"},
        "errors": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/FieldError"},
            "description": "422: each field at fault and what is wrong with it",
        },
        "options": {"type": "array", "items": {"type": "string"}, "description": "the values that would do"},
    },
    "additionalProperties": True,
}
FIELD_ERROR_SCHEMA: dict[str, Any] = {
    "title": "FieldError",
    "type": "object",
    "required": ["field", "message"],
    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
}

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}}
ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("The body could not be read (not the multipart or JSON it should be), or a URL was refused", {}),
    401: (
        "No API key, or one that is revoked, expired or never issued",
        {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    ),
    403: ("The key may not do this (an admin key's route), or a browser's request without its CSRF token", {}),
    404: ("Nothing by that id in this project (another project's looks the same)", {}),
    409: ("What it names is in a state that does not allow this now (in use, not finished, already done)", {}),
    413: ("The body, or a file in it, is over its limit", {}),
    422: ("A field is invalid: `errors` names each field and what is wrong with it", {}),
    429: (
        "Over the project's request rate, active jobs, open event streams or CPU budget (heatmaps, pictures)",
        _RETRY_AFTER,
    ),
    503: ("The database or the object store is not answering: nothing was done; try again", _RETRY_AFTER),
    504: ("The URL did not answer in time", {}),
    507: ("The server's disk is full: nothing of this request was stored", {}),
}


def install_openapi(app: FastAPI, prefix: str, max_files: int) -> None:
    """Make `app.openapi()` answer the amended document (built once, on first use); `max_files`: the most files a
    multipart body's list of files may hold (the server's max_predict_files)."""
    build = app.openapi
    open_paths = {f"{prefix}/health", f"{prefix}/live"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe_files(amend(build(), open_paths), max_files)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe_files(doc: dict[str, Any], max_files: int) -> dict[str, Any]:
    """A multipart body's files as clients know them (`format: binary` beside OpenAPI 3.1's contentMediaType: what
    generators such as openapi-python-client read as a file), and each list of files (predict's `file`) holding 1 to
    `max_files` of them, as the server checks (more: 413)."""
    schemas = doc.get("components", {}).get("schemas", {})
    for item in doc.get("paths", {}).values():
        for method in METHODS:
            content = item.get(method, {}).get("requestBody", {}).get("content", {})
            ref = content.get("multipart/form-data", {}).get("schema", {}).get("$ref", "")
            body = schemas.get(ref.rsplit("/", 1)[-1], {})
            for name, prop in body.get("properties", {}).items():
                if "contentMediaType" in prop:
                    prop["format"] = "binary"
                items = prop.get("items", {})
                if prop.get("type") == "array" and "contentMediaType" in items:
                    items["format"] = "binary"
                    prop["minItems"] = 1 if name in body.get("required", []) else 0
                    prop["maxItems"] = max_files
    return doc


def error_statuses(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    """The problem statuses an operation of the API can answer (a protected one: not health)."""
    params = operation.get("parameters", [])
    has_body = "requestBody" in operation
    statuses = {401, 403, 429, 503, 507}  # the guard (key, CSRF, rate), an outage, a full disk
    if has_body:
        statuses |= {400, 413, 422}  # a body that does not parse, is too large, or is invalid
    if params:
        statuses.add(422)
    if has_body or any(p["in"] == "path" for p in params):
        statuses.add(404)  # what the path or the body names is not in this project
    if method in UNSAFE or path.endswith("/jobs/{job_id}/predictions"):  # a predict job's answers: once it succeeded
        statuses.add(409)
    if path.endswith("/predict-url"):
        statuses |= {400, 504}  # the URL is refused, or does not answer in time
    return sorted(statuses)


def amend(doc: dict[str, Any], open_paths: set[str]) -> dict[str, Any]:
    """Declare the bearer scheme, each protected operation's need of it, and its problem answers."""
    components = doc.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "a project API key: 'Authorization: Bearer KEY' (make one with 'fitcycle keys create')",
    }
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = copy.deepcopy(PROBLEM_SCHEMA)  # each document its own: a reader may change it
    schemas["FieldError"] = copy.deepcopy(FIELD_ERROR_SCHEMA)
    for path, item in doc.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            if path in open_paths:
                operation["security"] = []
                statuses = [422] if "422" in responses else []
            else:
                operation["security"] = [{SCHEME: []}]
                statuses = error_statuses(path, method, operation)
            for status in statuses:
                description, headers = ERRORS[status]
                response = responses.setdefault(str(status), {"description": description})
                if status == 422:
                    response["description"] = description  # not FastAPI's: its error shape is not ours
                response["content"] = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
                if headers:
                    response["headers"] = copy.deepcopy(headers)
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 shape, replaced by Problem
        if unused in schemas and f'"#/components/schemas/{unused}"' not in json.dumps(doc):
            del schemas[unused]
    return doc


def binary(*media_types: str, description: str = "Successful Response") -> dict[int | str, dict[str, Any]]:
    """A route's `responses=` for a 200 of bytes: each media type it may answer, as a binary string (what a
    generated client reads as a file; JSON as any JSON). A generated client reads the first type it knows."""
    schema = {"type": "string", "format": "binary"}
    content = {t: {"schema": {} if t == "application/json" else schema} for t in media_types}
    return {200: {"description": description, "content": content}}


IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "application/octet-stream")  # what a kept image may be

# A server-sent event as a client parses it off the stream: before OpenAPI 3.2 (whose itemSchema says it), a
# text/event-stream's schema describes each event.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "title": "ServerSentEvent",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["state", "epoch", "batch", "end"]},
        "data": {"type": "string", "description": "a JSON object: the job, an epoch's or a batch's row, the end"},
    },
}
