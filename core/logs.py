"""One logging setup for every fitcycle process (API, worker, CLI): text lines for a terminal, JSON lines for a
fleet's log collector (`log_format`). Every line carries the job id or the request id it belongs to, from
context variables set where a job starts (the worker) and where a request comes in (the API's middleware).
Standard library only: uvicorn's and Celery's loggers propagate to the one root handler."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["text", "json"]

JOB_ID: ContextVar[str | None] = ContextVar("fitcycle_job_id", default=None)
REQUEST_ID: ContextVar[str | None] = ContextVar("fitcycle_request_id", default=None)


class ContextFilter(logging.Filter):
    """Stamps each record with the job id and request id of the context it was logged in."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = JOB_ID.get()
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, pid, and job_id / request_id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for field in ("job_id", "request_id"):
            value = getattr(record, field, None)
            if value:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"job={v}" for v in [getattr(record, "job_id", None)] if v]
        parts += [f"request={v}" for v in [getattr(record, "request_id", None)] if v]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


class _FitcycleHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Ours, so that setting up again replaces it instead of adding a second one."""


def setup_logging(fmt: LogFormat = "text", level: int = logging.INFO) -> None:
    """Route every logger of this process to one stderr handler in `fmt`."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _FitcycleHandler)]:
        root.removeHandler(old)
    handler = _FitcycleHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own handlers would print past ours
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for chatty in ("alembic", "httpx", "httpcore"):  # a line per migration step, per HTTP call of our own
        logging.getLogger(chatty).setLevel(logging.WARNING)
