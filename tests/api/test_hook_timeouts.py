"""A request-path hook that never answers (its auth service, quota database or virus scanner hangs)
costs a request its ``[hooks]`` timeout, then a 503 naming the plugin, and holds nothing else: the
event loop keeps serving, nothing is stored, an upload under inspection goes back to pending.

A plain-function validator or inspector that blocks runs in a thread of its own, so that it holds
neither the event loop nor, past its timeout, the request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from vezastream import hookimpl
from vezastream.hooks import HOOK_THREADS
from vezastream.http.app import engine_key
from vezastream.testing import content, create, random_bytes, send_chunks
from tus_helpers import TUS, tus_create, tus_patch, upload_path

TIMEOUT = 0.5
#: The most a hook here ever waits: the bound on a test that fails (a hook the server never gives up on).
HOOK_WAIT = 8.0


class Stuck:
    """Each hook waits until ``release()`` (at most HOOK_WAIT seconds): ``async def`` ones on an
    asyncio event, plain ones blocking their thread on a threading one."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.calls = 0

    def release(self) -> None:
        self.released.set()

    async def wait(self) -> None:
        self.calls += 1
        async with asyncio.timeout(HOOK_WAIT):
            while not self.released.is_set():
                await asyncio.sleep(0.02)

    def block(self) -> None:
        self.calls += 1
        self.released.wait(HOOK_WAIT)


class StuckAuth(Stuck):
    @hookimpl
    async def vezastream_authenticate_request(self, request):
        await self.wait()
        return None


class StuckValidator(Stuck):
    @hookimpl
    async def vezastream_validate_upload(self, upload):
        await self.wait()


class BlockingValidator(Stuck):
    @hookimpl
    def vezastream_validate_upload(self, upload):
        self.block()


class StuckInspector(Stuck):
    @hookimpl
    async def vezastream_inspect_upload(self, upload, source):
        async for _ in source.iter_bytes():
            pass
        await self.wait()


class BlockingInspector(Stuck):
    """Reads the staged files itself, as a scanner handed paths would, then blocks."""

    @hookimpl
    def vezastream_inspect_upload(self, upload, source):
        for staged in source.files:
            with open(staged.path, "rb") as f:
                while f.read(1 << 20):
                    pass
        self.block()


async def _keys(client) -> list[str]:
    store = client.server.app[engine_key].store
    return sorted(await store.redis.keys(f"{store.prefix}:*"))


async def _timed(request) -> tuple[float, object]:
    started = time.monotonic()
    async with asyncio.timeout(HOOK_WAIT + 2):
        resp = await request
        return time.monotonic() - started, resp


async def _health_while(client, pending: asyncio.Task) -> float:
    """Seconds ``/v1/health`` took while ``pending`` waits for its stuck hook."""
    await asyncio.sleep(0.1)
    assert not pending.done()
    seconds, resp = await _timed(client.get("/v1/health"))
    assert resp.status == 200
    return seconds


async def _unavailable(resp, plugin: str) -> None:
    problem = await resp.json()
    assert resp.status == 503 and resp.content_type == "application/problem+json", problem
    assert problem["plugin"] == plugin and "did not answer within 0.5 s" in problem["detail"], problem


async def test_an_authenticator_that_never_answers_costs_its_timeout_then_503(make_settings, make_client, caplog):
    auth = StuckAuth()
    client = await make_client(make_settings(**{"hooks.auth_timeout": TIMEOUT}), plugins=[("sso", auth)])
    try:
        seconds, resp = await _timed(client.post("/v1/uploads", json={"filename": "a", "total_size": 1}))
        await _unavailable(resp, "sso")
        assert seconds < TIMEOUT + 2
        # docs/operations.md's event: one error line naming the plugin, the hook and the limit.
        (line,) = [r for r in caplog.records if getattr(r, "event", None) == "plugin_timeout"]
        assert (line.levelname, line.plugin, line.hook, line.seconds) == (
            "ERROR", "sso", "vezastream_authenticate_request", TIMEOUT)
        # The health check has no user to refuse: it answers, once the plugin's time is up.
        seconds, resp = await _timed(client.get("/v1/health"))
        assert resp.status == 200 and seconds < TIMEOUT + 2
    finally:
        auth.release()
    resp = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1})
    assert resp.status == 201


@pytest.mark.parametrize("validator", [StuckValidator, BlockingValidator])
async def test_a_validator_that_never_answers_gets_503_and_stores_nothing(make_settings, make_client, validator):
    policy = validator()
    client = await make_client(make_settings(**{"hooks.validate_timeout": TIMEOUT}), plugins=[("quota", policy)])
    before = await _keys(client)
    try:
        pending = asyncio.ensure_future(_timed(client.post("/v1/uploads", json={"filename": "a", "total_size": 1})))
        assert await _health_while(client, pending) < TIMEOUT  # the event loop is not held
        seconds, resp = await pending
        await _unavailable(resp, "quota")
        assert seconds < TIMEOUT + 2
        assert await _keys(client) == before
    finally:
        policy.release()
    state = await create(client, total_size=1)
    assert state["upload_id"] and policy.calls == 2


@pytest.mark.parametrize("inspector", [StuckInspector, BlockingInspector])
async def test_an_inspector_that_never_answers_leaves_the_upload_pending(make_settings, make_client, tmp_path: Path,
                                                                         inspector):
    """Before, the completion waited for good, its lease renewed: the upload stayed ``completing``
    and every later complete answered 409 after ``limits.complete_wait``."""
    scanner = inspector()
    settings = make_settings(**{"hooks.inspect_timeout": TIMEOUT, "sinks.local.directory": str(tmp_path / "files")})
    client = await make_client(settings, plugins=[("scanner", scanner)])
    data = random_bytes(4500)
    upload_id = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    await send_chunks(client, upload_id, data, 1000)
    try:
        pending = asyncio.ensure_future(_timed(client.post(f"/v1/uploads/{upload_id}/complete")))
        assert await _health_while(client, pending) < TIMEOUT
        seconds, resp = await pending
        await _unavailable(resp, "scanner")
        assert seconds < TIMEOUT + 2
        state = await (await client.get(f"/v1/uploads/{upload_id}")).json()
        assert state["status"] == "pending" and state["received_count"] == 5, state
        assert not [p for p in (tmp_path / "files").rglob("*") if p.is_file()]  # nothing reached the sink
    finally:
        scanner.release()
    resp = await client.post(f"/v1/uploads/{upload_id}/complete")
    assert resp.status == 200, await resp.text()
    assert await content(client, upload_id) == (200, data) and scanner.calls == 2


async def test_a_tus_upload_whose_inspector_never_answers_completes_on_a_later_head(make_settings, make_client):
    """The PATCH that brings a tus upload to its length runs the completion: it answers 503, and each
    HEAD runs the completion again (tests/api/test_tus_inspected.py), until the inspector answers."""
    scanner = StuckInspector()
    client = await make_client(make_settings(**{"hooks.inspect_timeout": TIMEOUT}), plugins=[("scanner", scanner)])
    data = random_bytes(3000)
    path = upload_path(await tus_create(client, len(data)))
    upload_id = path.rsplit("/", 1)[1]
    try:
        seconds, resp = await _timed(tus_patch(client, path, 0, data, expect=503))
        await _unavailable(resp, "scanner")
        assert seconds < TIMEOUT + 2
        seconds, resp = await _timed(client.head(path, headers=TUS))
        assert resp.status == 503 and seconds < TIMEOUT + 2 and scanner.calls == 2
        assert (await (await client.get(f"/v1/uploads/{upload_id}")).json())["status"] == "pending"
    finally:
        scanner.release()
    resp = await client.head(path, headers=TUS)
    assert (resp.status, resp.headers["Upload-Offset"]) == (200, str(len(data)))
    assert await content(client, upload_id) == (200, data)


class ScanAndPolicy(Stuck):
    """A plain inspector that blocks, beside a quick plain validator."""

    @hookimpl
    def vezastream_inspect_upload(self, upload, source):
        self.block()

    @hookimpl
    def vezastream_validate_upload(self, upload):
        return None


async def test_scans_filling_every_inspector_thread_do_not_hold_up_new_uploads(make_settings, make_client):
    """Validators and inspectors written as plain functions run in a pool each: with every inspector
    thread busy (HOOK_THREADS long scans), an upload is still created at once."""
    plugin = ScanAndPolicy()
    settings = make_settings(**{"hooks.validate_timeout": TIMEOUT, "hooks.inspect_timeout": HOOK_WAIT})
    client = await make_client(settings, plugins=[("scan", plugin)])
    ids = []
    for _ in range(HOOK_THREADS):
        upload_id = (await create(client, total_size=10, chunk_size=10))["upload_id"]
        await send_chunks(client, upload_id, b"0123456789", 10)
        ids.append(upload_id)
    try:
        scans = [asyncio.ensure_future(client.post(f"/v1/uploads/{u}/complete")) for u in ids]
        async with asyncio.timeout(HOOK_WAIT):
            while plugin.calls < HOOK_THREADS:
                await asyncio.sleep(0.02)
        seconds, resp = await _timed(client.post("/v1/uploads", json={"filename": "a", "total_size": 1}))
        assert resp.status == 201 and seconds < TIMEOUT, (resp.status, seconds)
    finally:
        plugin.release()
    assert [r.status for r in await asyncio.gather(*scans)] == [200] * HOOK_THREADS


class SlowPlainAuth:
    """A plain authenticate that blocks (a blocking HTTP call to an auth service)."""

    @hookimpl
    def vezastream_authenticate_request(self, request):
        time.sleep(0.3)
        return None


async def test_a_plain_authenticator_that_blocks_is_named_in_the_log(make_settings, make_client, caplog):
    """A plain authenticate runs on the event loop, where no limit can stop it: the server cannot
    help it, but says which plugin held everything up, and for how long."""
    client = await make_client(make_settings(), plugins=[("sso", SlowPlainAuth())])
    with caplog.at_level(logging.WARNING, logger="vezastream.plugins"):
        assert (await client.get("/v1/health")).status == 200
    held = [r for r in caplog.records if getattr(r, "event", None) == "plugin_held_loop"]
    assert len(held) == 1 and held[0].plugin == "sso", caplog.records
    assert held[0].hook == "vezastream_authenticate_request" and 0.3 <= held[0].seconds < 2


class OwnTimeout:
    """A validator whose own HTTP client gave up: it raises TimeoutError well inside the server's limit."""

    @hookimpl
    async def vezastream_validate_upload(self, upload):
        raise TimeoutError("the quota service did not answer")


async def test_a_timeout_the_plugin_raises_itself_is_a_failure_not_the_servers_limit(make_settings, make_client):
    client = await make_client(make_settings(**{"hooks.validate_timeout": 30}), plugins=[("quota", OwnTimeout())])
    seconds, resp = await _timed(client.post("/v1/uploads", json={"filename": "a", "total_size": 1}))
    problem = await resp.json()
    assert resp.status == 503 and problem["plugin"] == "quota" and seconds < 2, problem
    assert problem["detail"] == "plugin 'quota' failed; try again later", problem
