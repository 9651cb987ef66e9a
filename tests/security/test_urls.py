"""The URL fetcher: IPv6 wrappings of private addresses are private, and one deadline covers the fetch."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from api.errors import Problem
from api.services.urlfetch import fetch_image, is_public
from core.config import Settings
from tests.security.conftest import Victim


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),  # 6to4 of the metadata address
        ("64:ff9b::7f00:1", False),  # NAT64 of loopback
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::a00:1", False),  # local-use NAT64
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo with a non-public client
        ("::ffff:169.254.169.254", False),
        ("fd00::1", False),
        ("fec0::1", False),  # site-local
        ("8.8.8.8", True),
        ("2002:808:808::1", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_wrapped_private_addresses_are_private(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_urls_wrapping_private_addresses_are_refused(victim: Victim, victim_model: str) -> None:
    for url in ["http://[2002:7f00:1::1]/x.png", "https://[64:ff9b::a9fe:a9fe]/latest/meta-data/"]:
        res = victim.client.post(f"/models/{victim_model}/predict-url", json={"url": url})
        assert res.status_code == 400 and res.json()["title"] == "URL refused", res.text
        assert "not a public address" in res.json()["detail"], res.text


@pytest.mark.parametrize(
    ("host", "secret"),
    [
        ("localhost", "127.0.0.1"),  # a name that resolves to loopback: the answer does not say so
        ("metadata.google.internal", "resolve"),  # a name that does not resolve here
        ("no-such-host.invalid", "resolve"),
    ],
)
def test_a_refusal_says_nothing_of_what_a_name_resolved_to(host: str, secret: str) -> None:
    """A tenant must not map internal names through the guard: a name that resolves to a private address and one
    that does not resolve at all are refused with the same words, naming no address and no resolver error."""
    with pytest.raises(Problem) as refused:
        asyncio.run(fetch_image(f"http://{host}/x.png", Settings(url_fetch_timeout_seconds=5)))
    problem = refused.value
    assert (problem.status, problem.title) == (400, "URL refused")
    assert problem.detail == (
        f"'{host}' is not a public address; only http(s) URLs whose host is public can be fetched"
    )
    for leak in (secret, "127.", "::1", "resolve", "Name or service", "getaddrinfo", "Errno"):
        assert leak not in problem.detail


def test_a_dripping_server_is_cut_at_the_deadline(drip_server: str) -> None:
    """The server answers at once and then sends one byte every 0.4 s: every read succeeds, so only a deadline
    over the whole fetch stops it (the old per-read timeout held a request 4.3 s past 1.5 s)."""
    settings = Settings(url_fetch_timeout_seconds=1.5, url_fetch_allow_hosts=[drip_server])
    start = time.monotonic()
    with pytest.raises(Problem) as refused:
        asyncio.run(fetch_image(f"http://{drip_server}/slow.png", settings))
    assert refused.value.status == 504
    assert time.monotonic() - start < 2.0
