"""A lean HTTP/1.1 client for load generators: prebuilt requests over keep-alive asyncio connections.

A load generator on the machine it measures takes CPU from what it measures. httpx spends about 10 ms of CPU per
multipart POST here (building the body, its models, its connection pool); sending bytes built once and reading
back a status line, headers and a Content-Length body costs a small fraction of that, so more of the two cores
are left to the server under test. Only what uvicorn answers is handled: Content-Length or chunked bodies, and
`Connection: close`.
"""

from __future__ import annotations

import asyncio
import uuid


def multipart_post(
    host: str, path: str, headers: dict[str, str], field: str, filename: str, data: bytes, content_type: str
) -> bytes:
    """A whole HTTP/1.1 POST of one file as multipart/form-data, ready to write to a socket."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = {
        "Host": host,
        **headers,
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(body)),
    }
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"POST {path} HTTP/1.1\r\n{lines}\r\n".encode() + body


class Connection:
    """One keep-alive connection to host:port, opened on first use and again after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """Write a prebuilt request, return (status, body). A broken connection raises (and is dropped: the next
        call opens a new one)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None
        try:
            self._writer.write(request)
            status_line = await self._reader.readline()
            if not status_line:
                raise ConnectionResetError("the server closed the connection")
            status = int(status_line.split(b" ", 2)[1])
            length, chunked, close = 0, False, False
            while (line := await self._reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            body = await self._chunked() if chunked else await self._reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts = []
        while size := int((await self._reader.readline()).split(b";")[0], 16):
            parts.append(await self._reader.readexactly(size))
            await self._reader.readline()
        while await self._reader.readline() not in (b"\r\n", b""):  # trailers
            pass
        return b"".join(parts)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
