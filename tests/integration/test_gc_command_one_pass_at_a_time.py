"""``vezastream gc`` while another node's pass holds the GC lease (docs/operations.md): it says so,
removes nothing and exits 0, so a cron job does not alarm; once the lease is free it does the pass.

The other node is the real app, live (its heartbeat in Redis); the command runs in-process
(``cli.main``) in a thread, so that the app keeps its heartbeat meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time

from vezastream.cli import main
from vezastream.http.app import engine_key


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
