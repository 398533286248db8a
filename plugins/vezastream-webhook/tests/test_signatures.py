"""Standard Webhooks signatures (standardwebhooks.com, spec 1.0) on real deliveries.

Each delivery is received by a real aiohttp server on 127.0.0.1 and checked by a
verifier written here from the spec alone, independent of the plugin's own
code; the ``standardwebhooks`` reference library checks it too when installed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path

import pytest
from aiohttp import web

from vezastream.config import ConfigError
from vezastream.testing import upload
from vezastream_webhook import (SIGNATURE_HEADER, InvalidWebhook, parse_config, sign_webhook, signing_key, verify,
                                verify_webhook)

KEY = os.urandom(32)
SECRET = "whsec_" + base64.b64encode(KEY).decode()


def spec_verify(secret: str, headers, body: bytes, now: float, tolerance: int = 300) -> bool:
    """The receiver's check as the spec words it: whsec_ key, "{id}.{timestamp}.{body}", any v1 entry, 5 min."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(now - int(stamp)) > tolerance:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    for entry in headers["webhook-signature"].split(" "):
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            return True
    return False


class Receiver:
    """A webhook endpoint that keeps what it got; answers 503 ``failures`` times first."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[tuple[float, web.Request, bytes]] = []
        self.accepted = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.time(), request, await request.read()))
        if len(self.requests) <= self.failures:
            return web.Response(status=503)
        self.accepted.set()
        return web.Response(status=204)


@pytest.fixture
async def deliveries(aiohttp_server, make_settings, make_client, monkeypatch):
    """``deliveries(receiver, **plugin_settings)``: the app's client, with the webhook pointed at ``receiver``."""
    async def start(receiver: Receiver, secret: str = SECRET, **extra):
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        server = await aiohttp_server(app, host="127.0.0.1")
        monkeypatch.setenv("VZ_SIGNATURE_TEST_SECRET", secret)
        table = {"plugins.webhook.url": str(server.make_url("/hook")), "plugins.webhook.backoff": 0.05,
                 "plugins.webhook.secret_env": "VZ_SIGNATURE_TEST_SECRET", "plugins.webhook.timeout": 2.0}
        table.update({f"plugins.webhook.{k}": v for k, v in extra.items()})
        return await make_client(make_settings(**table))

    return start


async def test_a_real_delivery_carries_standard_webhooks_headers(deliveries):
    receiver = Receiver()
    client = await deliveries(receiver)
    await upload(client, b"a" * 100, chunk_size=100)
    await asyncio.wait_for(receiver.accepted.wait(), 10)
    (arrived, request, body), = receiver.requests
    headers = request.headers
    assert spec_verify(SECRET, headers, body, now=arrived)
    assert abs(int(headers["webhook-timestamp"]) - arrived) <= 2
    assert headers["webhook-id"] == json.loads(body)["id"] == headers["X-Vezastream-Delivery"]
    assert verify_webhook(SECRET, headers, body) == headers["webhook-id"]
    # The deprecated header is kept, signed with the same key.
    assert verify(KEY, body, headers[SIGNATURE_HEADER])


async def test_every_retry_is_signed_afresh_under_the_same_id(deliveries):
    receiver = Receiver(failures=2)
    client = await deliveries(receiver, max_attempts=3)
    await upload(client, b"b" * 10, chunk_size=10)
    await asyncio.wait_for(receiver.accepted.wait(), 10)
    assert len(receiver.requests) == 3
    assert len({request.headers["webhook-id"] for _, request, _ in receiver.requests}) == 1
    for arrived, request, body in receiver.requests:
        assert spec_verify(SECRET, request.headers, body, now=arrived)


async def test_the_reference_library_accepts_a_real_delivery(deliveries):
    standardwebhooks = pytest.importorskip("standardwebhooks")
    receiver = Receiver()
    client = await deliveries(receiver)
    await upload(client, b"c" * 10, chunk_size=10)
    await asyncio.wait_for(receiver.accepted.wait(), 10)
    (_, request, body), = receiver.requests
    event = standardwebhooks.Webhook(SECRET).verify(body, dict(request.headers))
    assert event["type"] == "upload.completed"


async def test_a_plain_secret_still_works(deliveries):
    """Configs from before whsec_ keep working: the string's bytes are the key, for both headers."""
    receiver = Receiver()
    client = await deliveries(receiver, secret="plain-old-secret")
    await upload(client, b"d" * 10, chunk_size=10)
    await asyncio.wait_for(receiver.accepted.wait(), 10)
    (_, request, body), = receiver.requests
    assert verify(b"plain-old-secret", body, request.headers[SIGNATURE_HEADER])
    assert verify_webhook("plain-old-secret", request.headers, body)


def test_the_specs_reference_vector():
    key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert signing_key("whsec_" + base64.b64encode(b"12345").decode().rstrip("=")) == b"12345"  # unpadded
    body = b'{"test": 2432232314}'
    signature = sign_webhook(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"Webhook-Id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "Webhook-Timestamp": "1614265330",
               "Webhook-Signature": f"v1,bm90IHRoaXMgb25l {signature} v1a,c29tZXRoaW5nIGVsc2U="}  # rotation: a list
    assert verify_webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers, body, now=1614265330 + 299)


@pytest.mark.parametrize("change, reason", [
    ({"body": b'{"test": 2432232315}'}, "no valid signature"),
    ({"secret": "whsec_" + base64.b64encode(b"another key, 24 bytes ok").decode()}, "no valid signature"),
    ({"now": 1614265330 + 301}, "too far"),  # a replay after the tolerance
    ({"now": 1614265330 - 301}, "too far"),  # a timestamp from the future
    ({"drop": "webhook-timestamp"}, "missing header webhook-timestamp"),
    ({"set": ("webhook-timestamp", "1614265330.5")}, "not a Unix time"),
    ({"set": ("webhook-id", "msg_other")}, "no valid signature"),
    ({"set": ("webhook-signature", "v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")}, "no valid signature"),
])
def test_the_verifier_refuses(change, reason):
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    headers.pop(change.get("drop"), None)
    if "set" in change:
        headers[change["set"][0]] = change["set"][1]
    with pytest.raises(InvalidWebhook, match=reason):
        verify_webhook(change.get("secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), headers,
                       change.get("body", b'{"test": 2432232314}'), now=change.get("now", 1614265330))


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_"])
def test_a_malformed_whsec_secret_stops_startup(secret):
    with pytest.raises(ConfigError, match="secret_env.*whsec_"):
        parse_config({"url": "http://127.0.0.1/hook", "secret_env": "S"}, {"S": secret})


async def test_the_readme_verifier_accepts_a_real_delivery_and_refuses_a_replay(aiohttp_client, deliveries,
                                                                              monkeypatch):
    """The stdlib receiver of the README, run as written, against a real delivery and a replay of it."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = next(block for block in readme.split("```python")[1:] if "async def hook" in block).split("```")[0]
    monkeypatch.setenv("VEZASTREAM_WEBHOOK_SECRET", SECRET)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    receiver = Receiver()
    client = await deliveries(receiver)
    await upload(client, b"e" * 10, chunk_size=10)
    await asyncio.wait_for(receiver.accepted.wait(), 10)
    (_, request, body), = receiver.requests
    headers = {k: v for k, v in request.headers.items() if k.lower().startswith("webhook-")}

    app = web.Application()
    app.router.add_post("/hook", namespace["hook"])
    readme_receiver = await aiohttp_client(app)
    assert (await readme_receiver.post("/hook", data=body, headers=headers)).status == 204
    assert namespace["seen"].keys() == {headers["webhook-id"]}
    tampered = body.replace(b'"upload.completed"', b'"upload.deleted"')
    assert (await readme_receiver.post("/hook", data=tampered, headers=headers)).status == 401
    monkeypatch.setattr(time, "time", lambda: int(headers["webhook-timestamp"]) + 301)  # replayed 5 min later
    assert (await readme_receiver.post("/hook", data=body, headers=headers)).status == 401
