"""What a plugin raises reaches the client as problem+json (docs/plugins.md, "Errors").

A test sink whose every method can be made to raise runs in the real app, on
real Redis: an ``UploadError`` keeps its status, anything else is a 502 naming
the sink and the method and never the error's text (which may hold a server
path); the full error goes to the server log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vezastream import (BackendUnavailable, Content, ObjectNotFound, Rejected, TooLarge, errors, fsync_dir,
                        hookimpl)
from vezastream.testing import EventRecorder, create, random_bytes, send_chunks, upload

SECRET_PATH = "/srv/vz-secret/objects/abc"


class FaultyAssembly:
    def __init__(self, sink: "FaultySink", location: str, data: bytes) -> None:
        self.sink, self.location, self.data = sink, location, data

    async def commit(self) -> None:
        self.sink.maybe_fail("commit")
        self.sink.objects[self.location] = self.data

    async def discard(self) -> None:
        self.sink.discarded += 1
        self.sink.maybe_fail("discard")


class FaultySink:
    """Objects in a dict; ``fail[method] = exception`` makes that method raise it."""

    name = "faulty"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects: dict[str, bytes] = {}
        self.fail: dict[str, BaseException] = {}
        self.answer: object = None  # what open_content returns, when set
        self.discarded = 0

    def maybe_fail(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    async def assemble(self, upload, source) -> FaultyAssembly:
        self.maybe_fail("assemble")
        return FaultyAssembly(self, upload.id, b"".join([b async for b in source.iter_bytes()]))

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def open_content(self, upload, result):
        self.maybe_fail("open_content")
        if self.answer is not None:
            return self.answer
        data = self.objects[result.location]

        async def reader(start: int, end: int):
            yield data[start:end]
        return Content(size=len(data), reader=reader)

    async def remove(self, upload, result) -> None:
        self.maybe_fail("remove")
        self.objects.pop(result.location, None)

    async def abort(self, upload) -> None:
        self.maybe_fail("abort")


class FaultyPlugin:
    def __init__(self, root: Path) -> None:
        self.sink = FaultySink(root)

    @hookimpl
    def vezastream_register_sinks(self, register):
        register("faulty", lambda config, settings: self.sink)


@pytest.fixture
async def faulty(make_settings, make_client, tmp_path):
    plugin = FaultyPlugin(tmp_path / "objects")
    client = await make_client(make_settings(**{"storage.sink": "faulty"}), plugins=[("faulty", plugin)])
    return client, plugin.sink


async def _problem(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/problem+json"
    return await resp.json()


def _assert_hidden(problem: dict, caplog) -> None:
    assert SECRET_PATH not in str(problem) and "/srv" not in str(problem)
    assert SECRET_PATH in caplog.text  # the operator gets the whole error


async def _pending(client, size: int = 3000) -> str:
    state = await create(client, total_size=size, chunk_size=1000)
    await send_chunks(client, state["upload_id"], random_bytes(size), 1000)
    return state["upload_id"]


@pytest.mark.parametrize("method", ["open_content", "remove"])
async def test_an_unexpected_error_after_completion_is_a_502_naming_the_sink(faulty, method, caplog):
    client, sink = faulty
    result = await upload(client, random_bytes(3000), chunk_size=1000)
    sink.fail[method] = RuntimeError(f"cannot open {SECRET_PATH}")
    caplog.set_level(logging.ERROR)
    request = client.get if method == "open_content" else client.delete
    suffix = "/content" if method == "open_content" else ""
    problem = await _problem(await request(f"/v1/uploads/{result['upload_id']}{suffix}"), 502)
    assert problem["type"].endswith("/sink-failed") and problem["sink"] == "faulty"
    assert f"sink 'faulty' failed in {method}() (RuntimeError)" in problem["detail"]
    _assert_hidden(problem, caplog)


async def test_a_delete_whose_remove_fails_forgets_the_upload_and_tells_its_observers(make_settings, make_client,
                                                                                      tmp_path):
    """The object may stay (502 says so), but the upload is gone: observers (the metrics, a webhook)
    hear of the deletion as of any other."""
    plugin, rec = FaultyPlugin(tmp_path / "objects"), EventRecorder()
    client = await make_client(make_settings(**{"storage.sink": "faulty"}), plugins=[("faulty", plugin),
                                                                                     ("rec", rec)])
    result = await upload(client, random_bytes(3000), chunk_size=1000)
    plugin.sink.fail["remove"] = RuntimeError("storage says no")
    assert (await client.delete(f"/v1/uploads/{result['upload_id']}")).status == 502
    assert (await client.get(f"/v1/uploads/{result['upload_id']}")).status == 404
    (event,) = await rec.wait_for("abort", result["upload_id"], timeout=5)
    assert event.args["reason"] == "deleted"


async def test_a_delete_while_storage_is_down_changes_nothing_and_its_retry_removes_the_object(
        make_settings, make_client, tmp_path):
    """A 503 from ``remove`` (storage down) leaves the upload completed and its object served, so
    that the client's retry removes it; forgetting it first left an object no one could remove."""
    plugin, rec = FaultyPlugin(tmp_path / "objects"), EventRecorder()
    client = await make_client(make_settings(**{"storage.sink": "faulty"}), plugins=[("faulty", plugin),
                                                                                     ("rec", rec)])
    data = random_bytes(3000)
    uid = (await upload(client, data, chunk_size=1000))["upload_id"]
    plugin.sink.fail["remove"] = BackendUnavailable("storage is down")
    problem = await _problem(await client.delete(f"/v1/uploads/{uid}"), 503)
    assert problem["type"].endswith("/unavailable"), problem
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "completed"
    served = await client.get(f"/v1/uploads/{uid}/content")
    assert served.status == 200 and await served.read() == data
    assert rec.of("abort", uid) == []

    del plugin.sink.fail["remove"]
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert plugin.sink.objects == {}
    assert (await client.get(f"/v1/uploads/{uid}")).status == 404
    (event,) = await rec.wait_for("abort", uid, timeout=5)
    assert event.args["reason"] == "deleted"


async def test_an_unexpected_error_in_abort_still_deletes_the_upload(faulty, caplog):
    """Deleting works while the sink fails: its leftovers are the GC sweep's (issue 15, finding 8)."""
    client, sink = faulty
    upload_id = await _pending(client)
    sink.fail["abort"] = PermissionError(13, "Permission denied", SECRET_PATH)
    assert (await client.delete(f"/v1/uploads/{upload_id}")).status == 204
    assert (await client.get(f"/v1/uploads/{upload_id}")).status == 404
    assert "failed in abort() (PermissionError)" in caplog.text


@pytest.mark.parametrize("method", ["assemble", "commit"])
async def test_a_failed_assembly_is_a_502_without_the_error_text_and_the_upload_stays_pending(faulty, method,
                                                                                               caplog):
    client, sink = faulty
    upload_id = await _pending(client)
    sink.fail[method] = OSError(5, "I/O error", SECRET_PATH)
    problem = await _problem(await client.post(f"/v1/uploads/{upload_id}/complete"), 502)
    assert problem["type"].endswith("/sink-failed") and "'faulty'" in problem["detail"]
    _assert_hidden(problem, caplog)
    assert sink.discarded == (1 if method == "commit" else 0)
    (logged,) = [r for r in caplog.records if getattr(r, "event", None) == "sink_failed"]  # the sink named
    assert (logged.sink, logged.upload_id, logged.levelname) == ("faulty", upload_id, "ERROR") and logged.exc_info
    del sink.fail[method]
    assert (await client.post(f"/v1/uploads/{upload_id}/complete")).status == 200


async def test_a_failing_discard_is_logged_and_the_refusal_still_answers(faulty, caplog):
    client, sink = faulty
    state = await create(client, total_size=1000, chunk_size=1000, sha256="0" * 64)
    await send_chunks(client, state["upload_id"], random_bytes(1000), 1000)
    sink.fail["discard"] = RuntimeError(f"unlink {SECRET_PATH}")
    problem = await _problem(await client.post(f"/v1/uploads/{state['upload_id']}/complete"), 422)
    assert problem["type"].endswith("/integrity-error") and sink.discarded == 1
    _assert_hidden(problem, caplog)


@pytest.mark.parametrize("method, exc, status, code", [
    ("assemble", Rejected("no executables here"), 422, "rejected"),
    ("assemble", TooLarge("the bucket is full"), 413, "too-large"),
    ("assemble", BackendUnavailable("storage is down"), 503, "unavailable"),
    ("open_content", ObjectNotFound("gone from the bucket"), 404, "object-not-found"),
    ("open_content", BackendUnavailable("storage is down"), 503, "unavailable"),
])
async def test_a_plugin_error_keeps_its_status(faulty, method, exc, status, code):
    client, sink = faulty
    if method == "assemble":
        sink.fail[method] = exc
        resp = await client.post(f"/v1/uploads/{await _pending(client)}/complete")
    else:
        result = await upload(client, random_bytes(3000), chunk_size=1000)
        sink.fail[method] = exc
        resp = await client.get(f"/v1/uploads/{result['upload_id']}/content")
    problem = await _problem(resp, status)
    assert problem["type"].endswith("/" + code) and problem["detail"] == str(exc)


async def test_backend_unavailable_sends_retry_after(faulty):
    client, sink = faulty
    result = await upload(client, random_bytes(100), chunk_size=100)
    sink.fail["open_content"] = BackendUnavailable("maintenance", retry_after=7.2)
    resp = await client.get(f"/v1/uploads/{result['upload_id']}/content")
    problem = await _problem(resp, 503)
    assert resp.headers["Retry-After"] == "8" and problem["retry_after"] == 8


async def test_open_content_returning_a_path_is_a_clear_502(faulty, tmp_path):
    client, sink = faulty
    result = await upload(client, random_bytes(100), chunk_size=100)
    sink.answer = tmp_path / "object.bin"
    problem = await _problem(await client.get(f"/v1/uploads/{result['upload_id']}/content"), 502)
    assert "open_content() returned PosixPath, not vezastream.Content" in problem["detail"]
    assert str(tmp_path) not in str(problem)


async def test_a_missing_file_is_a_404_problem_not_an_empty_body(faulty, tmp_path):
    client, sink = faulty
    result = await upload(client, random_bytes(100), chunk_size=100)
    sink.answer = Content(size=100, path=tmp_path / "never-written.bin")
    problem = await _problem(await client.get(f"/v1/uploads/{result['upload_id']}/content"), 404)
    assert problem["type"].endswith("/object-not-found") and str(tmp_path) not in str(problem)


async def test_a_file_that_exists_is_served(faulty, tmp_path):
    client, sink = faulty
    result = await upload(client, random_bytes(100), chunk_size=100)
    (tmp_path / "object.bin").write_bytes(b"x" * 100)
    fsync_dir(tmp_path)
    sink.answer = Content(size=100, path=tmp_path / "object.bin")
    resp = await client.get(f"/v1/uploads/{result['upload_id']}/content")
    assert resp.status == 200 and await resp.read() == b"x" * 100


def test_content_takes_exactly_one_way_back():
    with pytest.raises(TypeError, match="exactly one of path, url or reader"):
        Content(size=1)
    with pytest.raises(TypeError, match="exactly one of path, url or reader"):
        Content(size=1, path=Path("/x"), url="https://example.org/x")


async def test_a_crashing_hook_is_problem_json_naming_the_plugin(make_settings, make_client, caplog):
    class Crashing:
        @hookimpl
        def vezastream_validate_upload(self, upload):
            raise RuntimeError(f"cannot read {SECRET_PATH}")

    client = await make_client(make_settings(), plugins=[("crashing", Crashing())])
    problem = await _problem(await client.post("/v1/uploads", json={"filename": "a", "total_size": 1}), 503)
    assert problem["plugin"] == "crashing"
    _assert_hidden(problem, caplog)


def test_the_error_classes_are_the_catalog_s():
    assert issubclass(ObjectNotFound, errors.NotFound) and ObjectNotFound.status == 404
    assert issubclass(BackendUnavailable, errors.Unavailable) and BackendUnavailable.status == 503


@pytest.mark.parametrize("exc, status, code", [
    (RuntimeError(f"GET {SECRET_PATH}: connection refused"), 502, "sink-failed"),
    (ObjectNotFound("NoSuchKey"), 404, "object-not-found"),
])
async def test_a_reader_that_fails_to_open_answers_problem_json(faulty, caplog, exc, status, code):
    client, sink = faulty
    result = await upload(client, random_bytes(100), chunk_size=100)

    async def reader(start: int, end: int):
        raise exc
        yield b""  # an async generator

    sink.answer = Content(size=100, reader=reader)
    problem = await _problem(await client.get(f"/v1/uploads/{result['upload_id']}/content"), status)
    assert problem["type"].endswith("/" + code) and problem["sink"] == "faulty"
    assert "/srv" not in str(problem)
