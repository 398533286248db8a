"""A plugin that answers a hook with the wrong type, or raises from ``vezastream_object_key``
(docs/plugins.md, "Errors"): the request fails closed with a 503 problem naming the plugin,
never the plugin's own text; an ``UploadError`` keeps its status; nothing is created.

And the observers written as plain functions: one that returns a coroutine has it run, and
one whose wait timed out before a thread took it is skipped, not run late.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pluggy
import pytest

from vezastream import errors, hookimpl, hookspecs
from vezastream.hooks import NOTIFY_THREADS, Hooks
from vezastream.hookspecs import PROJECT
from vezastream.testing import create

from helpers import store_of

SECRET = "/srv/vz-secret/keys.db"


class Misbehaving:
    """Each hook answers what ``answers[hook]`` holds (an exception is raised); absent: None."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers

    def _answer(self, hook: str) -> Any:
        answer = self.answers.get(hook)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @hookimpl
    def vezastream_authenticate_request(self, request):
        return self._answer("authenticate")

    @hookimpl
    def vezastream_validate_upload(self, upload):
        return self._answer("validate")

    @hookimpl
    def vezastream_object_key(self, upload):
        return self._answer("object_key")


async def _refused_creation(make_settings, make_client, status: int, **answers: Any) -> dict[str, Any]:
    """Create an upload with a plugin answering ``answers``: the problem+json body of the refusal,
    once checked that it has ``status``, names the plugin, and that nothing was recorded."""
    settings = make_settings()
    client = await make_client(settings, plugins=[("bad", Misbehaving(**answers))])
    resp = await client.post("/v1/uploads", json={"filename": "a.bin", "total_size": 3})
    problem = await resp.json(content_type=None)
    assert resp.status == status and resp.content_type == "application/problem+json", problem
    assert problem["plugin"] == "bad"
    assert SECRET not in str(problem) and "returned" not in problem["detail"]
    assert await store_of(client).redis.keys(settings.redis.key_prefix + ":up:*") == []  # no upload recorded
    return problem


@pytest.mark.parametrize("answer", [42, "", b"alice"], ids=["int", "empty", "bytes"])
async def test_an_authenticate_hook_answering_no_user_id_fails_closed(make_settings, make_client, caplog, answer):
    with caplog.at_level(logging.ERROR, logger="vezastream.plugins"):
        problem = await _refused_creation(make_settings, make_client, 503, authenticate=answer)
    assert problem["detail"] == "authentication plugin 'bad' failed"
    assert "expected a user id (a non-empty str) or None" in caplog.text


async def test_a_validate_hook_answering_neither_none_nor_an_error_fails_closed(make_settings, make_client, caplog):
    with caplog.at_level(logging.ERROR, logger="vezastream.plugins"):
        problem = await _refused_creation(make_settings, make_client, 503, validate=True)
    assert problem["detail"] == "plugin 'bad' failed; try again later"
    assert "expected None or an UploadError" in caplog.text


@pytest.mark.parametrize("answer", ["", "/ /", "x" * 1025], ids=["empty", "only-slashes", "too-long"])
async def test_an_object_key_hook_answering_no_usable_key_refuses_the_upload_as_invalid(make_settings, make_client,
                                                                                     answer):
    """docs/plugins.md: a key with nothing left once made safe, or over 1024 characters, is 422 invalid."""
    problem = await _refused_creation(make_settings, make_client, 422, object_key=answer)
    assert problem["type"].endswith("/invalid"), problem


@pytest.mark.parametrize("answer,logged", [
    (7, "expected a key (str) or None"),
    (RuntimeError(f"cannot open {SECRET}"), SECRET),
], ids=["not-a-str", "raises"])
async def test_an_object_key_hook_that_fails_refuses_the_upload(make_settings, make_client, caplog, answer, logged):
    with caplog.at_level(logging.ERROR, logger="vezastream.plugins"):
        problem = await _refused_creation(make_settings, make_client, 503, object_key=answer)
    assert problem["detail"] == "plugin 'bad' failed; try again later"
    failed = [r for r in caplog.records if r.getMessage() == "plugin failed"]
    assert [(r.plugin, r.hook) for r in failed] == [("bad", "vezastream_object_key")]
    assert logged in caplog.text  # the whole error goes to the server's log


async def test_an_object_key_hook_refusal_keeps_its_status(make_settings, make_client):
    problem = await _refused_creation(make_settings, make_client, 409,
                                      object_key=errors.Conflict("an object named a.bin exists"))
    assert problem["detail"] == "an object named a.bin exists"


async def test_a_plain_observer_that_returns_a_coroutine_has_it_run(make_settings, make_client):
    ran = asyncio.Event()

    async def later() -> None:
        ran.set()

    class Deferring:
        @hookimpl
        def vezastream_observe_abort(self, upload, reason):
            return later()

    client = await make_client(make_settings(), plugins=[("deferring", Deferring())])
    state = await create(client, total_size=3)
    assert (await client.delete(f"/v1/uploads/{state['upload_id']}")).status == 204
    await asyncio.wait_for(ran.wait(), 5)


async def test_a_plain_observer_whose_wait_timed_out_before_it_began_never_runs(settings, caplog):
    """hooks.py: while all the observer threads block, a further call waits its turn; once its
    wait timed out (logged), it is skipped when a thread comes free, not run late."""
    go, calls = threading.Event(), []

    class Blocking:
        @hookimpl
        def vezastream_observe_expiry(self, upload_id):
            calls.append(upload_id)
            go.wait(5)  # bounded: the test sets it

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(Blocking(), name="blocking")
    hooks = Hooks(pm, settings, notify_timeout=0.3)
    try:
        for n in range(NOTIFY_THREADS + 1):
            hooks.expired(f"id{n}")
        deadline = time.monotonic() + 5
        while hooks.pending and time.monotonic() < deadline:  # every wait times out
            await asyncio.sleep(0.05)
        assert hooks.pending == 0 and len(calls) == NOTIFY_THREADS
    finally:
        go.set()
    await asyncio.sleep(0.3)  # the threads come free: the queued call would run now
    await hooks.aclose(timeout=1)
    assert sorted(calls) == [f"id{n}" for n in range(NOTIFY_THREADS)]
    assert caplog.text.count("notification timed out") == NOTIFY_THREADS + 1
