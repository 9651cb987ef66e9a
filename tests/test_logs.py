"""Log lines: JSON when asked, one object a line, with the job id or request id of where they were logged."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from core.logs import JOB_ID, REQUEST_ID, setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers  # ours wrote to the captured stderr, which is gone after the test
    root.setLevel(level)


def test_json_lines_carry_the_job_and_request_they_belong_to(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json")
    setup_logging("json")  # twice: still one handler
    log = logging.getLogger("fitcycle.test")
    token = JOB_ID.set("job-1")
    log.info("epoch %d done", 3)
    JOB_ID.reset(token)
    token = REQUEST_ID.set("req-9")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    REQUEST_ID.reset(token)
    log.warning('a "quoted"\nline')
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [x["message"] for x in lines] == ["epoch 3 done", "failed", 'a "quoted"\nline']
    assert lines[0]["job_id"] == "job-1" and "request_id" not in lines[0]
    assert lines[1]["request_id"] == "req-9" and "ValueError: boom" in lines[1]["exception"]
    assert lines[2]["level"] == "WARNING" and lines[2]["logger"] == "fitcycle.test" and "job_id" not in lines[2]
    setup_logging("text")
    token = JOB_ID.set("job-2")
    log.info("hello")
    JOB_ID.reset(token)
    assert capsys.readouterr().err.rstrip().endswith("INFO fitcycle.test [job=job-2]: hello")
