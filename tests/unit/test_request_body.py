"""Large bodies read straight into the caller's buffers (``http/body.py``), on both event loops.

Each test runs a small aiohttp app whose handler reads a ``RequestBody``,
and talks to it over raw loopback connections, so what a client sees on the
wire (the bytes, the next request on the same connection, a response instead
of a reset) is what is checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import importlib.util
import json

import pytest
from aiohttp import web

from vezastream.http.app import create_app
from vezastream.http import body as body_module
from vezastream.http.body import TAKE_OVER_AT, RequestBody, Receiver, body_idle_key, close_taken, zero_copy_key
from helpers import random_bytes

LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])


def run_on(kind: str, coro) -> object:
    if kind == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 60))
    finally:
        loop.close()


async def serve(handler, zero_copy: bool = True, idle: float | None = None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app[zero_copy_key] = zero_copy
    if idle is not None:
        app[body_idle_key] = idle
    app.router.add_put("/", handler)
    app.on_response_prepare.append(close_taken)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


async def exchange(port: int, body: bytes, pieces: int = 1, close_after: int | None = None
                   ) -> tuple[int, dict[str, str], bytes, bool]:
    """Send one PUT (its body in ``pieces`` writes); returns status, headers, body, and whether the
    server then closed the connection. ``close_after``: send only that many bytes, then hang up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    sent = body if close_after is None else body[:close_after]
    step = -(-len(sent) // pieces)
    for i in range(0, len(sent), step):
        writer.write(sent[i:i + step])
        await writer.drain()
        await asyncio.sleep(0.01)
    if close_after is not None:
        writer.close()
        return 0, {}, b"", True
    head = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    data = await reader.readexactly(int(headers["content-length"]))
    closed = await asyncio.wait_for(reader.read(1), 5) == b"" if headers.get("connection") == "close" else False
    writer.close()
    return int(head[0].split()[1]), headers, data, closed


def _summing(request_body_buffer: int = 1_000_003):
    """A handler that reads its body into one buffer (odd sizes: reads straddle the socket's reads)."""
    async def handler(request: web.Request) -> web.Response:
        reader = RequestBody(request)
        assert reader.fills
        buf = memoryview(bytearray(request_body_buffer))
        hasher, size = hashlib.sha256(), 0
        while n := await reader.readinto(buf):
            hasher.update(buf[:n])
            size += n
        return web.json_response({"size": size, "sha256": hasher.hexdigest()})
    return handler


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    return int(head[0].split()[1]), headers, await reader.readexactly(int(headers["content-length"]))


def put(body: bytes) -> bytes:
    return f"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def summed(body: bytes) -> dict[str, object]:
    return {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize("pieces", [1, 7])
def test_a_large_body_arrives_whole_and_the_connection_goes_on(kind, pieces):
    body = random_bytes(3 * TAKE_OVER_AT + 12_345)

    async def main() -> None:
        runner, port = await serve(_summing())
        try:
            status, headers, data, closed = await exchange(port, body, pieces)
            assert (status, "connection" in headers, closed) == (200, False, False)
            assert json.loads(data) == summed(body)
        finally:
            await runner.cleanup()

    run_on(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
def test_requests_sent_back_to_back_on_one_connection_each_get_their_own_body(kind):
    """The body read into buffers ends exactly where the next request begins, even when the
    client sends them all in one write (pipelined): large, small and large bodies."""
    bodies = [random_bytes(2 * TAKE_OVER_AT + 1), random_bytes(5), random_bytes(TAKE_OVER_AT)]

    async def handler(request: web.Request) -> web.Response:
        reader = RequestBody(request)
        if reader.fills:
            return await _summing(333_333)(request)
        data = b"".join([piece async for piece in reader])
        return web.json_response(summed(data))

    async def main() -> None:
        runner, port = await serve(handler)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"".join(put(body) for body in bodies))
            for body in bodies:
                status, headers, data = await answer(reader)
                assert (status, "connection" in headers, json.loads(data)) == (200, False, summed(body))
            # and one more after a pause, on the same connection
            writer.write(put(bodies[0]))
            assert json.loads((await answer(reader))[2]) == summed(bodies[0])
        finally:
            writer.close()
            await runner.cleanup()

    run_on(kind, main())


async def _refusing(request: web.Request) -> web.Response:
    """A handler that reads a body's first MiB, then answers without the rest."""
    await RequestBody(request).readinto(memoryview(bytearray(TAKE_OVER_AT)))
    return web.json_response({"error": "no"}, status=422)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_body_the_handler_stops_reading_is_drained_and_the_client_gets_the_answer(kind):
    body = random_bytes(6 * TAKE_OVER_AT)

    async def main() -> None:
        runner, port = await serve(_refusing)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            request = put(body)
            for i in range(0, len(request), len(request) // 3 + 1):  # in pieces, with pauses
                writer.write(request[i:i + len(request) // 3 + 1])
                await writer.drain()
                await asyncio.sleep(0.01)
            status, headers, data = await answer(reader)
            assert (status, json.loads(data), "connection" in headers) == (422, {"error": "no"}, False)
            # The rest of the body was read and thrown away: the connection serves the next request.
            writer.write(put(body))
            assert (await answer(reader))[0] == 422
        finally:
            writer.close()
            await runner.cleanup()

    run_on(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
def test_a_body_that_does_not_come_whole_in_time_closes_its_connection(kind, monkeypatch):
    """The handler answered early and the rest of the body stays away past the linger: the answer
    goes out with ``Connection: close``, and the connection is closed after it."""
    monkeypatch.setattr(body_module, "LINGER", 0.3)

    async def main() -> None:
        runner, port = await serve(_refusing)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(put(random_bytes(4 * TAKE_OVER_AT))[:2 * TAKE_OVER_AT])  # half, then silence
            status, headers, _ = await answer(reader)
            assert (status, headers.get("connection")) == (422, "close")
            try:  # closed (with a reset: the client's unread bytes were still in the server's socket)
                assert await asyncio.wait_for(reader.read(1), 5) == b""
            except ConnectionResetError:
                pass
        finally:
            writer.close()
            await runner.cleanup()

    run_on(kind, main())


def test_without_a_new_parser_the_connection_closes_after_the_answer(monkeypatch):
    """Another aiohttp whose private parts differ: the body still arrives whole, and the
    connection closes after its answer instead of going on with a parser in mid-body."""
    monkeypatch.setattr(body_module, "_new_parser", lambda protocol: False)
    body = random_bytes(2 * TAKE_OVER_AT)

    async def main() -> None:
        runner, port = await serve(_summing())
        try:
            status, headers, data, closed = await exchange(port, body)
            assert (status, headers.get("connection"), closed, json.loads(data)) == (200, "close", True, summed(body))
        finally:
            await runner.cleanup()

    run_on("asyncio", main())


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize("size, zero_copy", [(TAKE_OVER_AT - 1, True), (3 * TAKE_OVER_AT, False)])
def test_a_small_body_or_zero_copy_off_is_iterated_and_the_connection_kept(kind, size, zero_copy):
    body = random_bytes(size)

    async def handler(request: web.Request) -> web.Response:
        reader = RequestBody(request)
        assert not reader.fills
        data = b"".join([piece async for piece in reader])
        return web.json_response({"sha256": hashlib.sha256(data).hexdigest()})

    async def main() -> None:
        runner, port = await serve(handler, zero_copy)
        try:
            status, headers, data, _ = await exchange(port, body)
            assert status == 200 and "connection" not in headers
            assert json.loads(data) == {"sha256": hashlib.sha256(body).hexdigest()}
        finally:
            await runner.cleanup()

    run_on(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize("size", [300_000, 2 * TAKE_OVER_AT], ids=["iterated", "filled"])
def test_a_body_read_to_its_end_leaves_no_idle_timer_behind(kind, size):
    """The body idle timer goes with the body, not ``server.body_idle_timeout`` later (one per
    request would pile up on the event loop, each holding its connection's transport)."""
    left: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        reader, got = RequestBody(request), 0
        if reader.fills:
            buf = memoryview(bytearray(300_000))
            while n := await reader.readinto(buf):
                got += n
        else:
            got = sum([len(piece) async for piece in reader])
        left.append(reader._silence._timer)
        return web.json_response({"size": got})

    async def main() -> None:
        runner, port = await serve(handler, idle=3600.0)
        try:
            status, _, data, _ = await exchange(port, random_bytes(size), pieces=3)
            assert status == 200 and json.loads(data) == {"size": size}
        finally:
            await runner.cleanup()
        assert left == [None]

    run_on(kind, main())


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize("until_disconnect", [False, True])
def test_a_client_that_hangs_up_mid_body(kind, until_disconnect):
    """Raises ConnectionResetError, or (``until_disconnect``) ends the body with the bytes that came."""
    body = random_bytes(4 * TAKE_OVER_AT)
    sent = 2 * TAKE_OVER_AT + 777

    async def main() -> None:
        outcome: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        async def handler(request: web.Request) -> web.Response:
            reader = RequestBody(request, until_disconnect=until_disconnect)
            buf = memoryview(bytearray(TAKE_OVER_AT))
            hasher, size = hashlib.sha256(), 0
            try:
                while n := await reader.readinto(buf):
                    hasher.update(buf[:n])
                    size += n
            except ConnectionResetError as exc:
                outcome.set_result(exc)
                raise
            outcome.set_result((size, hasher.hexdigest()))
            return web.Response()

        runner, port = await serve(handler)
        try:
            await exchange(port, body, pieces=4, close_after=sent)
            got = await asyncio.wait_for(outcome, 10)
            if until_disconnect:
                assert got == (sent, hashlib.sha256(body[:sent]).hexdigest())
            else:
                assert isinstance(got, ConnectionResetError)
        finally:
            await runner.cleanup()

    run_on(kind, main())


def test_the_setting_reaches_the_app(settings):
    off = dataclasses.replace(settings, server=dataclasses.replace(settings.server, zero_copy_bodies=False))
    assert create_app(settings)[zero_copy_key] is True
    assert create_app(off)[zero_copy_key] is False


class _StubTransport:
    """Just what Receiver calls on a transport: reading on or off, no socket."""

    def __init__(self) -> None:
        self.reading = False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_extra_info(self, name: str) -> None:
        return None


def test_bytes_read_while_no_buffer_waits_are_kept_and_never_past_the_body():
    """The receiver's safety net: a read the transport makes with no caller's buffer waiting
    is kept aside (bounded by what is left of the body) and served first."""
    receiver = Receiver(_StubTransport(), asyncio.Protocol(), remaining=10)
    scratch = receiver.get_buffer(-1)
    assert len(scratch) == 10  # never more than the body has left: nothing of a next request
    scratch[:6] = b"abcdef"
    receiver.buffer_updated(6)
    assert receiver.remaining == 4 and not receiver.transport.is_reading()
    view = memoryview(bytearray(4))
    assert receiver.take_spilled(view) == 4 and bytes(view) == b"abcd"
    assert receiver.take_spilled(view) == 2 and bytes(view[:2]) == b"ef"
    assert receiver.take_spilled(view) == 0
