"""A small HTTP/1.1 client for the benchmark: keep-alive connections to one loopback server.

aiohttp's ClientSession costs about as much CPU per request as the server it
measures, and the benchmark client shares the machine's cores with that
server. This client does only what the upload requests need: one header block
formatted per request and written together with the body (a memoryview, never
copied by us), the response read as headers plus a Content-Length, chunked or
read-until-close body. Every request is bounded by the client's timeout.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlparse

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, head: bytes, body, bodyless: bool) -> tuple[Response, bool]:
        """Send one request; return the response and whether the connection may be reused."""
        self.writer.write(head)
        if body:
            self.writer.write(body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        reusable = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        if bodyless or status in ("204", "304"):
            data = b""
        elif "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                parts.append(await self.reader.readexactly(size))
                await self.reader.readuntil(b"\r\n")
            while await self.reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields
            data = b"".join(parts)
        else:  # neither: the body ends when the server closes
            data, reusable = await self.reader.read(), False
        return Response(int(status), headers, data), reusable

    def close(self) -> None:
        self.writer.close()


class LeanClient:
    """``await client.request("PUT", "/path", {"Header": "v"}, body)`` -> Response, body read."""

    def __init__(self, base_url: str, limit: int, timeout: float) -> None:
        url = urlparse(base_url)
        if url.hostname not in LOOPBACK or url.scheme != "http":
            raise ValueError(f"lean client: only http:// on loopback, not {base_url}")
        self.host, self.port = url.hostname, url.port or 80
        self.host_header = f"Host: {url.netloc}\r\n"
        self.timeout = timeout
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body=b"") -> Response:
        head = "".join([f"{method} {path} HTTP/1.1\r\n", self.host_header, f"Content-Length: {len(body)}\r\n",
                        *(f"{k}: {v}\r\n" for k, v in (headers or {}).items()), "\r\n"]).encode("latin-1")
        async with self._slots, asyncio.timeout(self.timeout):
            for attempt in (1, 2):
                reused = bool(self._idle)
                conn = self._idle.pop() if reused else _Connection(*await asyncio.open_connection(
                    self.host, self.port))
                try:
                    response, reusable = await conn.exchange(head, body, method == "HEAD")
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    conn.close()
                    # A kept-alive connection the server closed while idle: retry once on a new one.
                    stale = reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial)
                    if stale and attempt == 1:
                        continue
                    raise
                except BaseException:
                    conn.close()
                    raise
                if reusable:
                    self._idle.append(conn)
                else:
                    conn.close()
                return response
        raise AssertionError("unreachable")

    async def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            conn.close()
            try:
                await conn.writer.wait_closed()
            except ConnectionError:
                pass
