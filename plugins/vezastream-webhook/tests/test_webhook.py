"""vezastream-webhook against a real receiver on 127.0.0.1, through the real app.

The fixtures (real redis-server, ``make_settings``, ``make_client``) come from
vezastream's author kit, ``vezastream.testing``; the plugin is found the way
users get it: installed with pip, through its entry point.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from vezastream import ConfigError
from vezastream.http.app import create_app, plugin_manager_key
from vezastream.plugins import describe
from vezastream.testing import configured_plugin, drain_notifications, random_bytes, sha256, upload
from vezastream_webhook import SIGNATURE_HEADER, parse_config, retry_delays, sign, verify

SECRET = "s3cret-for-tests"


class Receiver:
    """A webhook endpoint: answers ``failures`` 503s first, then ``final``."""

    def __init__(self, failures: int = 0, final: int = 204) -> None:
        self.failures, self.final = failures, final
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), dict(request.headers), await request.read()))
        if len(self.requests) <= self.failures:
            return web.Response(status=503)
        self.arrived.set()
        return web.Response(status=self.final)


@pytest.fixture
async def start_receiver(aiohttp_server):
    async def start(receiver: Receiver) -> str:
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        return str(server.make_url("/hook"))

    return start


@pytest.fixture
def webhook_settings(make_settings, monkeypatch):
    monkeypatch.setenv("VZ_WEBHOOK_TEST_SECRET", SECRET)

    def make(url: str, **extra):
        table = {"plugins.webhook.url": url, "plugins.webhook.secret_env": "VZ_WEBHOOK_TEST_SECRET",
                 "plugins.webhook.backoff": 0.05, "plugins.webhook.timeout": 2.0}
        table.update({f"plugins.webhook.{k}": v for k, v in extra.items()})
        return make_settings(**table)

    return make


def _webhook(client):
    return configured_plugin(client, "webhook")


async def test_completion_posts_a_signed_event(start_receiver, webhook_settings, make_client):
    receiver = Receiver()
    client = await make_client(webhook_settings(await start_receiver(receiver)))
    data = random_bytes(2500)
    result = await upload(client, data, chunk_size=1000, filename="song.flac", metadata={"album": "a"})
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    (_, headers, body), = receiver.requests
    assert verify(SECRET.encode(), body, headers[SIGNATURE_HEADER])
    assert not verify(b"another secret", body, headers[SIGNATURE_HEADER])
    event = json.loads(body)
    assert headers["X-Vezastream-Event"] == event["type"] == "upload.completed"
    assert headers["X-Vezastream-Delivery"] == event["id"]
    assert event["upload"] == {"upload_id": result["upload_id"], "owner": "anonymous", "filename": "song.flac",
                               "total_size": 2500, "metadata": {"album": "a"}, "status": "completed",
                               "size": 2500, "sha256": sha256(data), "sink": "local",
                               "location": result["location"]}
    assert event["created_at"].endswith("Z")


async def test_failed_deliveries_are_retried_with_exponential_backoff(start_receiver, webhook_settings,
                                                                     make_client):
    receiver = Receiver(failures=3)
    client = await make_client(webhook_settings(await start_receiver(receiver), max_attempts=4))
    await upload(client, b"x" * 10, chunk_size=10)
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    times = [t for t, _, _ in receiver.requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 4
    assert all(gap >= delay * 0.9 for gap, delay in zip(gaps, [0.05, 0.1, 0.2])), gaps
    assert len({body for _, _, body in receiver.requests}) == 1  # the same event each time
    await drain_notifications(client, 5)
    assert _webhook(client).deliveries[-1][1:] == (4, 204)


async def test_delivery_gives_up_after_max_attempts_and_the_upload_is_unaffected(
        start_receiver, webhook_settings, make_client, caplog):
    receiver = Receiver(failures=100)
    client = await make_client(webhook_settings(await start_receiver(receiver), max_attempts=3))
    result = await upload(client, b"y" * 10, chunk_size=10)
    await drain_notifications(client, 5)
    assert len(receiver.requests) == 3
    assert _webhook(client).deliveries[-1][1:] == (3, 503)
    assert "webhook not delivered" in caplog.text
    state = await (await client.get(f"/v1/uploads/{result['upload_id']}")).json()
    assert state["status"] == "completed"


async def test_a_refusal_is_not_retried(start_receiver, webhook_settings, make_client):
    receiver = Receiver(final=400)
    client = await make_client(webhook_settings(await start_receiver(receiver)))
    await upload(client, b"z" * 10, chunk_size=10)
    await drain_notifications(client, 5)
    assert len(receiver.requests) == 1 and _webhook(client).deliveries[-1][1:] == (1, 400)


async def test_unreachable_receiver_is_retried_then_given_up(webhook_settings, make_client, unused_tcp_port):
    client = await make_client(webhook_settings(f"http://127.0.0.1:{unused_tcp_port}/hook", max_attempts=2))
    await upload(client, b"w" * 10, chunk_size=10)
    await drain_notifications(client, 5)
    assert _webhook(client).deliveries[-1][1:] == (2, None)


async def test_deleted_event_when_configured(start_receiver, webhook_settings, make_client):
    receiver = Receiver()
    settings = webhook_settings(await start_receiver(receiver), events=["upload.deleted"])
    client = await make_client(settings)
    result = await upload(client, b"v" * 10, chunk_size=10)
    assert (await client.delete(f"/v1/uploads/{result['upload_id']}")).status == 204
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    (_, _, body), = receiver.requests
    event = json.loads(body)
    assert event["type"] == "upload.deleted" and event["upload"]["reason"] == "deleted"


def test_unconfigured_plugin_is_listed_and_inert(make_settings):
    app = create_app(make_settings())
    info = {p.name: p for p in describe(app[plugin_manager_key])}
    assert info["webhook"].hooks == ["vezastream_configure_plugin"]
    assert app[plugin_manager_key].get_plugin("webhook.configured") is None


@pytest.mark.parametrize("table, environ, message", [
    ({"url": "ftp://x"}, {"S": "k"}, "plugins.webhook.url: expected an http(s) URL"),
    ({"url": "http://h/", "secret_env": "S"}, {}, "plugins.webhook.secret_env: environment variable S"),
    ({"url": "http://h/", "secret_env": "S", "events": ["upload.done"]}, {"S": "k"}, "plugins.webhook.events"),
    ({"url": "http://h/", "secret_env": "S", "max_attempts": 0}, {"S": "k"}, "plugins.webhook.max_attempts"),
    ({"url": "http://h/", "secret_env": "S", "timeout": 20, "max_attempts": 3}, {"S": "k"},
     "plugins.webhook: a delivery could take"),
    ({"urll": "http://h/"}, {}, "plugins.webhook.urll: unknown setting"),
])
def test_bad_config_is_refused(table, environ, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(table, environ)


def test_bad_config_stops_startup_naming_the_plugin(make_settings, monkeypatch):
    monkeypatch.delenv("VEZASTREAM_WEBHOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match=r"^plugin 'webhook': bad configuration: .*VEZASTREAM_WEBHOOK_SECRET"):
        create_app(make_settings(**{"plugins.webhook.url": "http://127.0.0.1:9/"}))


def test_backoff_doubles_and_is_capped():
    assert retry_delays(5, 0.5, 3.0) == [0.5, 1.0, 2.0, 3.0]
    assert retry_delays(1, 0.5, 3.0) == []

def test_signature_is_hmac_sha256_of_the_body():
    # printf '{}' | openssl dgst -sha256 -hmac k
    assert sign(b"k", b"{}") == "sha256=add853b103fbcc936a194f9eb15e29c4ff08af6e47d5d1bca4f20218e31e4fff"
