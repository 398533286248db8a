"""``vezastream gc`` while another node's pass holds the GC lease (docs/operations.md): it says so,
removes nothing and exits 0, so a cron job does not alarm; once the lease is free it does the pass.
Beside a server on the bundled Redis, it uses that Redis and leaves it running.

The other node is the real app, live (its heartbeat in Redis); the command runs in-process
(``cli.main``) in a thread, so that the app keeps its heartbeat meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis
import vezastream_local

from vezastream import gc, hookimpl
from vezastream.cli import main
from vezastream.http.app import engine_key, gc_key

#: The command starts the app's parts as aiohttp's runner does: what they store in the app while
#: starting is stored before the app is frozen (aiohttp deprecates changing a started app).
pytestmark = pytest.mark.filterwarnings("error:Changing state of started or joined application:DeprecationWarning")


async def test_gc_while_another_nodes_pass_runs_does_nothing_and_says_so(make_client, settings, monkeypatch,
                                                                          capsys):
    client = await make_client(settings)
    engine = client.server.app[engine_key]
    store = engine.store
    orphan = settings.storage.chunks_dir / ("Q" * 22)
    orphan.mkdir(parents=True)
    old = time.time() - 10 * 86400
    os.utime(orphan, (old, old))
    monkeypatch.setenv("VEZASTREAM_STORAGE__DATA_DIR", str(settings.storage.data_dir))
    monkeypatch.setenv("VEZASTREAM_REDIS__URL", settings.redis.url)
    monkeypatch.setenv("VEZASTREAM_REDIS__KEY_PREFIX", settings.redis.key_prefix)
    monkeypatch.chdir(settings.storage.data_dir.parent)  # no ./config.toml here

    token = engine.new_token()
    assert await store.acquire_lease(store.gc_lease_key, token, 30)
    assert await asyncio.to_thread(main, ["gc"]) == 0
    assert capsys.readouterr().out == "another node is running a gc pass; nothing done\n"
    assert orphan.exists()

    await store.release_lease(store.gc_lease_key, token)
    assert await asyncio.to_thread(main, ["gc"]) == 0
    assert f"removed {'Q' * 22}" in capsys.readouterr().out and not orphan.exists()


async def test_gc_beside_a_server_on_the_bundled_redis_leaves_that_redis_running(make_client, make_settings,
                                                                                 monkeypatch, capsys):
    """The command finds the server's bundled Redis answering on its socket: it uses it and, when
    done, leaves it running (it did not start it), so the server goes on serving."""
    from vezastream.http.app import bundled_redis_key
    from vezastream.testing import upload

    settings = make_settings(**{"redis.url": ""})
    client = await make_client(settings)
    served = client.server.app[bundled_redis_key].proc
    monkeypatch.setenv("VEZASTREAM_STORAGE__DATA_DIR", str(settings.storage.data_dir))
    monkeypatch.setenv("VEZASTREAM_REDIS__KEY_PREFIX", settings.redis.key_prefix)
    monkeypatch.delenv("VEZASTREAM_REDIS__URL", raising=False)
    monkeypatch.chdir(settings.storage.data_dir.parent)
    assert await asyncio.to_thread(main, ["gc"]) == 0
    assert "removed the staged data of 0 upload(s), kept 0" in capsys.readouterr().out
    assert served.poll() is None
    fresh = redis.Redis(unix_socket_path=str(client.server.app[bundled_redis_key].socket), socket_timeout=2)
    try:  # a connection made now (as the server's pool makes one after a drop) reaches the same Redis
        assert fresh.keys(settings.redis.key_prefix + ":node:*")  # the server's heartbeat: its Redis
    finally:
        fresh.close()
    assert (await client.get("/v1/health/deep")).status == 200
    assert (await upload(client, b"after gc", chunk_size=8))["size"] == 8


def test_gc_with_redis_unreachable_stops_with_one_line(tmp_path, monkeypatch, capsys):
    """What had started is stopped, and the refusal is one line, exit status 1."""
    monkeypatch.setenv("VEZASTREAM_STORAGE__DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VEZASTREAM_REDIS__URL", f"unix://{tmp_path / 'none.sock'}")
    monkeypatch.chdir(tmp_path)
    assert main(["gc"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vezastream: cannot start: Redis (redis.url) did not answer") and err.count("\n") == 1


class SlowSweepSink(vezastream_local.LocalSink):
    """A sink whose sweep takes a while, as a sweep of a large bucket does."""

    async def sweep(self, older_than, is_live, dry_run=False):
        await asyncio.sleep(SLOW_SWEEP)
        return []


#: Seconds the slow sink's sweep takes: two and a half lives of the lease below.
SLOW_SWEEP = 2.5


async def test_a_pass_longer_than_its_lease_is_still_the_only_one(make_client, make_settings, tmp_path,
                                                                  monkeypatch):
    """Two nodes; one's pass outlasts its lease (1 s) in the sink's sweep: the other's pass, asked
    then, finds the lease held and is skipped (before, the lease expired mid-pass and the second pass
    ran beside the first); once the first is done, the lease is free for the next."""
    monkeypatch.setattr(gc, "LEASE_SECONDS_MIN", 0)  # the lease lasts gc.interval, 1 s

    class Plugin:
        @hookimpl
        def vezastream_register_sinks(self, register):
            register("slow", lambda config, settings: SlowSweepSink(tmp_path / "objects", fsync=False))

    settings = make_settings(**{"storage.sink": "slow", "gc.interval": 1})
    nodes = [await make_client(settings, plugins=[("slow", Plugin())]) for _ in range(2)]
    first = asyncio.ensure_future(nodes[0].server.app[gc_key].run_once())
    await asyncio.sleep(SLOW_SWEEP - 0.5)  # the lease has lived twice over
    second = await nodes[1].server.app[gc_key].run_once()
    assert second.skipped and not (await first).skipped
    store = nodes[1].server.app[engine_key].store
    assert await store.holder(store.gc_lease_key) is None  # given back: the next pass, anywhere, runs
