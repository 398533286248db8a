"""vezastream-webhook sends the events ``events`` names and no others (README: "upload.completed",
also "upload.deleted", "upload.expired"), and refuses number and ``secret_env`` settings it
cannot use. A real receiver on 127.0.0.1, the real app, the GC pass that expires uploads.
"""

from __future__ import annotations

import json
import time

import pytest
from aiohttp import web

from vezastream import ConfigError
from vezastream.http.app import engine_key, gc_key
from vezastream.testing import create, drain_notifications, put_chunk, upload
from vezastream_webhook import parse_config

SECRET = "s3cret-for-event-tests"


@pytest.fixture
async def receiver(aiohttp_server) -> tuple[str, list[dict]]:
    """A webhook endpoint on 127.0.0.1: its URL, and the events it received."""
    events: list[dict] = []

    async def handle(request: web.Request) -> web.Response:
        events.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("/hook")), events


@pytest.fixture
def webhook_client(make_settings, make_client, monkeypatch, receiver):
    monkeypatch.setenv("VZ_WEBHOOK_EVENT_SECRET", SECRET)

    async def start(events: list[str] | None):
        table = {"plugins.webhook.url": receiver[0], "plugins.webhook.secret_env": "VZ_WEBHOOK_EVENT_SECRET",
                 "plugins.webhook.backoff": 0.05, "plugins.webhook.timeout": 2.0}
        if events is not None:
            table["plugins.webhook.events"] = events
        return await make_client(make_settings(**table))

    return start


async def expire_one(client) -> str:
    """An unfinished upload that the GC pass expires (its record gone, its folder too old): its id."""
    app = client.server.app
    state = await create(client, total_size=10)
    await put_chunk(client, state["upload_id"], 1, b"q" * 10)
    store = app[engine_key].store
    await store.redis.delete(store.key(state["upload_id"]), store.chunks_key(state["upload_id"]))
    gc = app[gc_key]
    gc.clock = lambda: time.time() + gc.settings.gc.max_age + 1
    assert (await gc.run_once()).removed == [state["upload_id"]]
    return state["upload_id"]


async def test_the_expired_event_is_sent_when_chosen(webhook_client, receiver):
    client = await webhook_client(["upload.expired"])
    await upload(client, b"c" * 10, chunk_size=10)  # not chosen: not sent
    upload_id = await expire_one(client)
    await drain_notifications(client, 10)
    assert [(e["type"], e["upload"]) for e in receiver[1]] == [("upload.expired", {"upload_id": upload_id})]


async def test_deleted_and_expired_are_not_sent_by_default(webhook_client, receiver):
    client = await webhook_client(None)
    result = await upload(client, b"d" * 10, chunk_size=10)
    assert (await client.delete(f"/v1/uploads/{result['upload_id']}")).status == 204
    await expire_one(client)
    await drain_notifications(client, 10)
    assert [e["type"] for e in receiver[1]] == ["upload.completed"]


@pytest.mark.parametrize("table,message", [
    ({"timeout": True}, "plugins.webhook.timeout: expected a number >= "),
    ({"backoff": "fast"}, "plugins.webhook.backoff: expected a number >= "),
    ({"max_backoff": -1}, "plugins.webhook.max_backoff: expected a number >= "),
    ({"secret_env": ""}, "plugins.webhook.secret_env: expected the name of an environment variable"),
    ({"secret_env": 7}, "plugins.webhook.secret_env: expected the name of an environment variable"),
])
def test_unusable_numbers_and_secret_names_are_refused(table, message):
    with pytest.raises(ConfigError) as info:
        parse_config({"url": "http://127.0.0.1:9/hook", "secret_env": "S", **table}, {"S": "k"})
    assert str(info.value).startswith(message)
