"""Fetching an image by URL without becoming a proxy into private networks (SSRF). Only http(s); every
hop's host must resolve to public addresses only — no loopback, private, link-local (cloud metadata lives
there), multicast, reserved or unspecified address, nor one of those wrapped in IPv6 (IPv4-mapped, 6to4,
Teredo, NAT64). The connection goes to the vetted address itself, for http and https alike (https keeps the
name for SNI and certificate checks), so a second DNS answer cannot swap in a private one. Redirects are
followed by hand and re-checked; the size is capped, and one deadline covers the whole fetch — DNS,
connects, redirects and a server that drips one byte at a time. It runs on the event loop: a slow server
holds no API thread."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from api.errors import Problem
from core.config import Settings

log = logging.getLogger("fitcycle.api")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known prefix: the last 32 bits are an IPv4 address
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # local-use translation prefix: never public


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo server and client, NAT64)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found += list(ip.teredo)
    if ip in NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_public(ip: IPAddress) -> bool:
    """True for an address a public image server may have."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in NAT64_LOCAL:
            return False
        if ip.is_site_local:  # fec0::/10, deprecated but not "private" to Python 3.11
            return False
        inner = embedded_ipv4(ip)
        if inner:
            return all(is_public(v4) for v4 in inner)
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_link_local)


def refused(host: str) -> Problem:
    """The one answer for a host that is not fetched, whatever the reason: an address that is not public, or a
    name that does not resolve. It never says what a name resolved to, nor whether it resolved at all, so a
    tenant cannot map the server's internal names and networks through it (the server's log says which)."""
    return Problem(
        400,
        "URL refused",
        f"'{host[:200]}' is not a public address; only http(s) URLs whose host is public can be fetched",
    )


async def _addresses(host: str, port: int) -> list[str]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        log.info("URL refused: host %r does not resolve (%s)", host[:200], exc)
        raise refused(host) from None
    return sorted({str(info[4][0]) for info in infos})


async def vetted_address(host: str, port: int, allow: list[str]) -> str:
    """Resolve host and refuse unless every address is public; returns the address to connect to."""
    addrs = await _addresses(host, port)
    if f"{host}:{port}" in allow or host in allow:
        return addrs[0]
    for a in addrs:
        if not is_public(ipaddress.ip_address(a.split("%")[0])):
            log.info("URL refused: host %r resolves to the non-public address %s", host[:200], a)
            raise refused(host)
    return addrs[0]


async def fetch_image(url: str, settings: Settings) -> bytes:
    """The bytes at url, after the checks above, within one deadline; 4xx Problems for what a user can fix."""
    deadline = settings.url_fetch_timeout_seconds
    try:
        async with asyncio.timeout(deadline):
            return await _fetch(url, settings)
    except TimeoutError:
        raise Problem(
            504,
            "URL fetch timed out",
            f"the image did not arrive within {deadline}s (FITCYCLE_URL_FETCH_TIMEOUT_SECONDS)",
        ) from None


async def _vetted_target(url: str, settings: Settings) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL rewritten to its vetted address, the headers (Host) and extensions (SNI) to send it with."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Problem(400, "Bad URL", f"only http:// and https:// URLs can be fetched, got '{url[:200]}'")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Problem(400, "Bad URL", f"the port of '{url[:200]}' is not a number from 1 to 65535") from None
    address = await vetted_address(parts.hostname, port, settings.url_fetch_allow_hosts)
    host = f"[{address}]" if ":" in address else address
    target = urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))
    headers = {"User-Agent": "fitcycle/0.1", "Host": parts.netloc.rsplit("@", 1)[-1]}
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    return target, headers, extensions


async def post_json(
    url: str, body: bytes, headers: dict[str, str], settings: Settings, timeout: float | None = None
) -> int:
    """POST a JSON body to url through the same checks, within `timeout` (default: the fetch deadline); no redirect
    is followed (a webhook receiver answers itself). Returns the status; a Problem when the URL is refused or
    unreachable. The answer's body is never read (nor decompressed): a receiver cannot make this process hold a
    large or compressed reply."""
    deadline = settings.url_fetch_timeout_seconds if timeout is None else timeout
    try:
        async with asyncio.timeout(deadline):
            target, base, extensions = await _vetted_target(url, settings)
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=deadline) as client:
                sent = {**base, **headers, "Content-Type": "application/json", "Accept-Encoding": "identity"}
                request = client.build_request("POST", target, content=body, headers=sent, extensions=extensions)
                resp = await client.send(request, stream=True)  # the status line and headers only
                await resp.aclose()
                return resp.status_code
    except TimeoutError:
        raise Problem(504, "Timed out", f"no answer within {deadline}s") from None
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        raise Problem(400, "Delivery failed", f"could not reach the URL: {type(exc).__name__}") from None


async def _fetch(url: str, settings: Settings) -> bytes:
    limit = settings.url_fetch_max_bytes
    for _ in range(settings.url_fetch_max_redirects + 1):
        target, headers, extensions = await _vetted_target(url, settings)
        parts = urlsplit(url)
        try:
            async with (
                httpx.AsyncClient(
                    follow_redirects=False, trust_env=False, timeout=settings.url_fetch_timeout_seconds
                ) as client,
                client.stream("GET", target, headers=headers, extensions=extensions) as resp,
            ):
                if resp.is_redirect:
                    location = resp.headers.get("location")
                    if not location:
                        raise Problem(400, "Bad URL", "a redirect without a Location header")
                    url = urljoin(url, location)
                    continue
                if resp.status_code != 200:
                    raise Problem(400, "URL fetch failed", f"{parts.hostname} answered HTTP {resp.status_code}")
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise Problem(413, "Too Large", f"the image is {int(declared):,} bytes; the limit is {limit:,}")
                data = bytearray()
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise Problem(413, "Too Large", f"the image is over {limit:,} bytes")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise Problem(400, "URL fetch failed", f"could not fetch the URL: {type(exc).__name__}") from None
    raise Problem(400, "Too many redirects", f"more than {settings.url_fetch_max_redirects} redirects")
