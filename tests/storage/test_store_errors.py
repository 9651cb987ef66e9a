"""An S3 server that stays away past the retry budget is a StoreUnavailable that says what failed and what to
check, never the server's address: a job's error and the API's 503 show it to users."""

from __future__ import annotations

import socket

import pytest
import urllib3

from core.storage.base import StoreUnavailable
from core.storage.s3 import S3Store, failure


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on leaving: nothing listens there


def test_a_store_that_stays_away_is_unavailable_and_the_error_names_no_host() -> None:
    port = closed_port()
    store = S3Store(f"127.0.0.1:{port}", "key", "secret-key", "bucket", retry_seconds=0.5)
    with pytest.raises(StoreUnavailable) as caught:
        store.put_bytes("projects/p/jobs/j/attempts/1/checkpoints/last.pt", b"x")
    message = str(caught.value)
    assert "upload of projects/p/jobs/j/attempts/1/checkpoints/last.pt" in message
    assert "check that the S3 server is up and has space left" in message
    assert "127.0.0.1" not in message and str(port) not in message and "secret" not in message


def test_a_full_store_is_described_by_its_answers_not_its_address() -> None:
    """SeaweedFS out of volumes answers 500 to every part: urllib3 gives up with a ResponseError."""
    exc = urllib3.exceptions.MaxRetryError(
        None,  # type: ignore[arg-type]
        "http://10.1.2.3:9000/bucket/key",
        urllib3.exceptions.ResponseError("too many 500 error responses"),
    )
    assert failure(exc) == "too many 500 error responses"
