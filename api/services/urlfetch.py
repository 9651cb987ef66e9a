"""Fetching an image by URL without becoming a proxy into private networks (SSRF): only http(s), every
hop's host must resolve to public addresses only (no loopback, private, link-local — cloud metadata
lives there —, multicast, reserved or unspecified), redirects are followed by hand and re-checked,
and size and time are capped. Plain-http requests go to the checked address itself, so a second DNS
answer cannot swap in a private one; https keeps the name for TLS (see the closing note on limits)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from api.errors import Problem
from core.config import Settings


def _addresses(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Problem(400, "Bad URL", f"cannot resolve host '{host}': {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


def check_public(host: str, port: int, allow: list[str]) -> str:
    """Resolve host and refuse unless every address is public; returns one address to connect to."""
    addrs = _addresses(host, port)
    if f"{host}:{port}" in allow or host in allow:
        return addrs[0]
    for a in addrs:
        ip = ipaddress.ip_address(a.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            raise Problem(
                400,
                "URL refused",
                f"'{host}' resolves to {a}, a non-public address (loopback, private, link-local or "
                "metadata); only public http(s) URLs can be fetched",
            )
    return addrs[0]


def fetch_image(url: str, settings: Settings) -> bytes:
    """The bytes at url, after the checks above; 4xx Problems for everything a user can fix."""
    for _ in range(settings.url_fetch_max_redirects + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Problem(400, "Bad URL", f"only http:// and https:// URLs can be fetched, got '{url[:200]}'")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = check_public(parts.hostname, port, settings.url_fetch_allow_hosts)
        target, headers = url, {"User-Agent": "fitcycle/0.1"}
        if parts.scheme == "http":
            host = f"[{address}]" if ":" in address else address
            target = urlunsplit(("http", f"{host}:{port}", parts.path or "/", parts.query, ""))
            headers["Host"] = parts.netloc
        try:
            with (
                httpx.Client(timeout=settings.url_fetch_timeout_seconds, follow_redirects=False) as client,
                client.stream("GET", target, headers=headers) as resp,
            ):
                if resp.is_redirect:
                    location = resp.headers.get("location")
                    if not location:
                        raise Problem(400, "Bad URL", "a redirect without a Location header")
                    url = urljoin(url, location)
                    continue
                if resp.status_code != 200:
                    raise Problem(400, "URL fetch failed", f"{parts.hostname} answered HTTP {resp.status_code}")
                declared = int(resp.headers.get("content-length") or 0)
                if declared > settings.url_fetch_max_bytes:
                    raise Problem(
                        413,
                        "Too Large",
                        f"the image is {declared:,} bytes; the limit is {settings.url_fetch_max_bytes:,}",
                    )
                data = bytearray()
                for chunk in resp.iter_bytes():
                    data += chunk
                    if len(data) > settings.url_fetch_max_bytes:
                        raise Problem(413, "Too Large", f"the image is over {settings.url_fetch_max_bytes:,} bytes")
                return bytes(data)
        except httpx.TimeoutException as exc:
            raise Problem(
                504,
                "URL fetch timed out",
                f"no answer from {parts.hostname} within {settings.url_fetch_timeout_seconds}s",
            ) from exc
        except httpx.HTTPError as exc:
            raise Problem(400, "URL fetch failed", f"could not fetch the URL: {exc}") from exc
    raise Problem(400, "Too many redirects", f"more than {settings.url_fetch_max_redirects} redirects")
