"""What docs/plugins.md promises a sink author, through HTTP (real app, real Redis).

* "Capabilities": a sink without ``open_content`` answers 501 ``not-implemented`` to
  ``GET /v1/uploads/{id}/content`` and to a tus GET; a sink without ``remove`` lets a
  DELETE of a completed upload forget it while the object stays in storage.
* "Sink reference": a sink method written as a plain ``def`` answers 502 when called.
* "Errors": an ``UploadError`` raised from ``open_content`` reaches the client with its
  status, a ``sink`` member naming the sink, its extra members and its ``Retry-After``.
"""

from __future__ import annotations

import logging

import pytest

from vezastream import (BackendUnavailable, Content, ObjectNotFound, SinkFailed, UploadError, errors, hookimpl)
from vezastream.testing import create, random_bytes, send_chunks, upload
from tests.tus_helpers import tus_create, tus_patch, upload_path


class BareAssembly:
    def __init__(self, sink: "BareSink", location: str, data: bytes) -> None:
        self.sink, self.location, self.data = sink, location, data

    async def commit(self) -> None:
        self.sink.objects[self.location] = self.data

    async def discard(self) -> None:
        return None


class BareSink:
    """Only the core of ``Sink``: no ``open_content`` (content), no ``remove``, no ``abort``."""

    name = "bare"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def assemble(self, upload, source) -> BareAssembly:
        return BareAssembly(self, f"bare/{upload.id}", b"".join([b async for b in source.iter_bytes()]))

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class ServingSink(BareSink):
    """Reads back; ``fail`` makes ``open_content`` raise it."""

    name = "serving"

    def __init__(self) -> None:
        super().__init__()
        self.fail: BaseException | None = None

    async def open_content(self, upload, result) -> Content:
        if self.fail is not None:
            raise self.fail
        data = self.objects[result.location]

        async def reader(start: int, end: int):
            yield data[start:end]
        return Content(size=len(data), reader=reader)

    async def remove(self, upload, result) -> None:
        self.objects.pop(result.location, None)


class SinkPlugin:
    def __init__(self, sink) -> None:
        self.sink = sink

    @hookimpl
    def vezastream_register_sinks(self, register):
        register(self.sink.name, lambda config, settings: self.sink)


async def _client_with(make_settings, make_client, sink):
    return await make_client(make_settings(**{"storage.sink": sink.name}), plugins=[(sink.name, SinkPlugin(sink))])


async def _problem(resp, status: int) -> dict:
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/problem+json"
    return await resp.json()


async def _tus_upload(client, data: bytes) -> str:
    """A tus upload sent whole (so completed); its path."""
    path = upload_path(await tus_create(client, length=len(data)))
    await tus_patch(client, path, 0, data)
    return path


# -- the content capability ---------------------------------------------------------------------
async def test_a_sink_without_open_content_answers_501_not_implemented(make_settings, make_client):
    sink = BareSink()
    client = await _client_with(make_settings, make_client, sink)
    data = random_bytes(3000)
    result = await upload(client, data, chunk_size=1000)
    assert sink.objects[result["location"]] == data  # the upload did complete

    problem = await _problem(await client.get(f"/v1/uploads/{result['upload_id']}/content"), 501)
    assert problem["type"].endswith("/not-implemented") and "'bare'" in problem["detail"]

    path = await _tus_upload(client, data)
    problem = await _problem(await client.get(path, headers={"Tus-Resumable": "1.0.0"}), 501)
    assert problem["type"].endswith("/not-implemented")


# -- the remove capability ----------------------------------------------------------------------
async def test_a_sink_without_remove_forgets_a_deleted_upload_and_keeps_its_object(make_settings, make_client):
    sink = BareSink()
    client = await _client_with(make_settings, make_client, sink)
    data = random_bytes(3000)
    result = await upload(client, data, chunk_size=1000)
    upload_id = result["upload_id"]

    assert (await client.delete(f"/v1/uploads/{upload_id}")).status == 204
    await _problem(await client.get(f"/v1/uploads/{upload_id}"), 404)
    await _problem(await client.delete(f"/v1/uploads/{upload_id}"), 404)
    assert sink.objects == {result["location"]: data}  # left in storage, as the table says


# -- a plain def where a coroutine is due ---------------------------------------------------------
def _plain(method: str):
    """A ServingSink whose ``method`` is a plain function (which does its work and returns)."""

    class PlainSink(ServingSink):
        name = "plain"

    if method == "assemble":
        def assemble(self, upload, source):
            return BareAssembly(self, f"plain/{upload.id}", b"")
        PlainSink.assemble = assemble
    elif method == "open_content":
        def open_content(self, upload, result):
            data = self.objects[result.location]

            async def reader(start: int, end: int):
                yield data[start:end]
            return Content(size=len(data), reader=reader)
        PlainSink.open_content = open_content
    else:
        def remove(self, upload, result):
            self.objects.pop(result.location, None)
        PlainSink.remove = remove
    return PlainSink()


@pytest.mark.parametrize("method", ["assemble", "open_content", "remove"])
async def test_a_sink_method_written_as_a_plain_def_answers_502(make_settings, make_client, method, caplog):
    sink = _plain(method)
    client = await _client_with(make_settings, make_client, sink)
    caplog.set_level(logging.ERROR)
    data = random_bytes(2000)
    if method == "assemble":
        state = await create(client, total_size=len(data), chunk_size=1000)
        upload_id = state["upload_id"]
        await send_chunks(client, upload_id, data, 1000)
        resp = await client.post(f"/v1/uploads/{upload_id}/complete")
    else:
        upload_id = (await upload(client, data, chunk_size=1000))["upload_id"]
        resp = await (client.get(f"/v1/uploads/{upload_id}/content") if method == "open_content"
                      else client.delete(f"/v1/uploads/{upload_id}"))
    problem = await _problem(resp, 502)
    assert problem["type"].endswith("/sink-failed") and problem["sink"] == "plain"
    assert f"sink 'plain' failed in {method}()" in problem["detail"]
    # The server log tells the author why (assemble is awaited by the engine itself, not through
    # the host's call_sink, so its log shows Python's own TypeError instead).
    if method == "assemble":
        assert "TypeError: object BareAssembly can't be used in 'await' expression" in caplog.text
    else:
        assert f"{method}() returned" in caplog.text and "sink methods must be async def" in caplog.text
    if method == "assemble":  # a failed completion leaves the upload pending with its chunks
        state = await (await client.get(f"/v1/uploads/{upload_id}")).json()
        assert state["status"] == "pending" and not sink.objects


# -- an UploadError from open_content -------------------------------------------------------------
class Throttled(UploadError):
    """A plugin's own error class: its status and code are its own."""

    code, status, title = "throttled", 429, "Slow down"


@pytest.mark.parametrize("front", ["native", "tus"])
@pytest.mark.parametrize("exc, status, code, retry_after", [
    (ObjectNotFound("gone from the bucket", bucket="b1"), 404, "object-not-found", None),
    (BackendUnavailable("storage is in maintenance", retry_after=7), 503, "unavailable", 7),
    (SinkFailed("the bucket refused the read"), 502, "sink-failed", None),
    (Throttled("too many reads", retry_after=3), 429, "throttled", 3),
], ids=["ObjectNotFound", "BackendUnavailable", "SinkFailed", "own-class"])
async def test_an_upload_error_from_open_content_reaches_the_client_naming_the_sink(
        make_settings, make_client, front, exc, status, code, retry_after):
    sink = ServingSink()
    client = await _client_with(make_settings, make_client, sink)
    data = random_bytes(1000)
    if front == "native":
        path = f"/v1/uploads/{(await upload(client, data, chunk_size=1000))['upload_id']}/content"
    else:
        path = await _tus_upload(client, data)
    assert (await client.get(path)).status == 200  # served while the sink is fine
    sink.fail = exc
    resp = await client.get(path, headers={"Tus-Resumable": "1.0.0"} if front == "tus" else {})
    problem = await _problem(resp, status)
    assert problem["type"].endswith("/" + code) and problem["detail"] == exc.detail
    assert problem["sink"] == "serving"
    if retry_after is None:
        assert "Retry-After" not in resp.headers
    else:
        assert resp.headers["Retry-After"] == str(retry_after) and problem["retry_after"] == retry_after
    if isinstance(exc, errors.ObjectNotFound):
        assert problem["bucket"] == "b1"  # extra keyword arguments become members
