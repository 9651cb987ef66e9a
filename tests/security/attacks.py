"""Hostile inputs, made on the spot: archives, images that lie about their size, raw HTTP requests."""

from __future__ import annotations

import io
import select
import socket
import struct
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image


def png_bytes(size: tuple[int, int] = (32, 32), value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, "PNG")
    return buf.getvalue()


def noise_png(side: int, seed: int) -> bytes:
    """A PNG of random pixels: it does not compress, so its size is about side * side bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def good_members(n: int = 6) -> dict[str, bytes]:
    return {
        **{f"cats/{i}.png": png_bytes(value=40 + i) for i in range(n)},
        **{f"dogs/{i}.png": png_bytes(value=200 - i) for i in range(n)},
    }


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def many_entry_zip(path: Path, entries: int) -> Path:
    """A zip of `entries` empty members: small on disk, huge as a parsed directory."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(entries):
            zf.writestr(f"x/{i}", b"")
    return path


def raw_post(
    base: str, path: str, headers: dict[str, str], declared: int, limit: int = 64 * 1024**2
) -> tuple[int, int]:
    """POST a body that claims `declared` bytes — a well-formed multipart file part that goes on and on — sending
    it until the server answers (or `limit` bytes went out). Returns (status, bytes of body sent before the
    answer). A server that reads bodies before checking who sends them keeps reading to the limit."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=30)
    head = [f"POST {url.path}{path} HTTP/1.1", f"Host: {url.netloc}", f"Content-Length: {declared}"]
    head += ["Content-Type: multipart/form-data; boundary=xyz", *(f"{k}: {v}" for k, v in headers.items())]
    part = b'--xyz\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n\r\n'
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + part)
    sent, block = len(part), b"\0" * 65536
    try:
        while sent < limit:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(block)
                except OSError:  # the server closed the connection: its answer is waiting
                    break
        sock.settimeout(10)
        answer = sock.recv(65536)
    except TimeoutError:  # still reading the body: no answer at all
        answer = b""
    finally:
        sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, sent
