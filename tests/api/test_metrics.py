"""``/metrics``: Prometheus text that moves as users upload, behind its token, off when asked, one set for N workers."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from prometheus_client.parser import text_string_to_metric_families

from helpers import create, put_chunk, random_bytes, samples, scrape, sha256, split, upload, value
from servers import Server, server_env
from tus_helpers import TUS, drop_mid_body, tus_create, tus_patch, upload_path

CHUNK = "/v1/uploads/{upload_id}/chunks/{n}"


async def test_counts_follow_uploads_through_both_doors(make_client, make_settings):
    client = await make_client(make_settings())
    before = await scrape(client)
    assert value(before, "vezastream_uploads_created_total") == 0
    native = random_bytes(3 * 1000 + 10)
    assert (await upload(client, native, 1000))["sha256"] == sha256(native)
    tus = random_bytes(2500)
    path = upload_path(await tus_create(client, len(tus)))
    await tus_patch(client, path, 0, tus[:1000])
    # A PATCH sent as POST with X-HTTP-Method-Override (docs/tus.md) is counted as the PATCH it is.
    resp = await client.post(path, data=tus[1000:], headers={**TUS, "X-HTTP-Method-Override": "PATCH",
                                                             "Content-Type": "application/offset+octet-stream",
                                                             "Upload-Offset": "1000"})
    assert resp.status == 204, await resp.text()
    failed = await create(client, total_size=10, chunk_size=10)  # completed before its chunk came
    assert (await client.post(f"/v1/uploads/{failed['upload_id']}/complete")).status == 409
    gone = await create(client, total_size=10, chunk_size=10)
    assert (await client.delete(f"/v1/uploads/{gone['upload_id']}")).status == 204

    found = await scrape(client)
    assert value(found, "vezastream_uploads_created_total", door="native", sink="local") == 3
    assert value(found, "vezastream_uploads_created_total", door="tus", sink="local") == 1
    for door in ("native", "tus"):
        assert value(found, "vezastream_uploads_completed_total", door=door, sink="local") == 1
        assert value(found, "vezastream_upload_duration_seconds_count", door=door) == 1
    assert value(found, "vezastream_uploads_failed_total", door="native", status="409") == 1
    assert value(found, "vezastream_uploads_aborted_total", door="native", reason="deleted") == 1
    assert value(found, "vezastream_received_bytes_total", door="native") == len(native)
    assert value(found, "vezastream_received_bytes_total", door="tus") == len(tus)
    assert value(found, "vezastream_http_request_duration_seconds_count", method="PUT", route=CHUNK) == 4
    assert value(found, "vezastream_http_request_duration_seconds_count", method="PATCH",
                 route="/files/{upload_id}") == 2
    assert value(found, "vezastream_http_requests_total", method="PATCH", route="/files/{upload_id}",
                 status="204") == 2
    assert value(found, "vezastream_http_requests_total", method="PUT", route=CHUNK, status="201") == 4
    assert value(found, "vezastream_http_requests_total", method="POST",
                 route="/v1/uploads/{upload_id}/complete", status="409") == 1
    assert value(found, "vezastream_http_requests_in_flight", route=CHUNK) == 0
    assert value(found, "vezastream_redis_roundtrip_seconds_count") > 0
    # Upload ids never become labels.
    for upload_id in (failed["upload_id"], gone["upload_id"], path.rsplit("/", 1)[1]):
        assert not any(upload_id in v for _, labels in found for _, v in labels)


async def test_a_digest_refusal_a_concatenation_and_a_creation_with_data_are_counted(make_client, make_settings):
    """metrics.md: a native complete refused for its digest counts as failed (422); a tus partial joined
    into its final upload as aborted (concatenated); the body of a tus creation with data as received."""
    from vezastream.http.app import hooks_key

    client = await make_client(make_settings())
    wrong = await create(client, total_size=10, chunk_size=10, sha256=sha256(b"other bytes"))
    await put_chunk(client, wrong["upload_id"], 1, b"0123456789")
    assert (await client.post(f"/v1/uploads/{wrong['upload_id']}/complete")).status == 422
    part = upload_path(await tus_create(client, 3, headers={"Upload-Concat": "partial"}))
    await tus_patch(client, part, 0, b"abc")
    final = await client.post("/files/", headers={"Tus-Resumable": "1.0.0", "Upload-Concat": f"final;{part}"})
    assert final.status == 201, await final.text()
    await tus_create(client, 7, data=b"whole!!")  # creation with upload: all its bytes in the POST
    await client.server.app[hooks_key].drain()  # the counters are observers: they run after the answers

    found = await scrape(client)
    assert value(found, "vezastream_uploads_failed_total", door="native", status="422") == 1
    assert value(found, "vezastream_uploads_aborted_total", door="tus", reason="concatenated") == 1
    assert value(found, "vezastream_received_bytes_total", door="tus") == 3 + 7
    assert value(found, "vezastream_uploads_completed_total", door="tus") == 2  # the final one, the whole one


async def test_a_request_in_progress_is_in_flight_and_one_whose_client_leaves_is_a_499(make_client, make_settings):
    """metrics.md: the in-flight gauge counts requests being answered now, and a client that goes
    away before its answer is counted with status 499."""
    client = await make_client(make_settings())
    uid = (await create(client, total_size=2000, chunk_size=1000))["upload_id"]
    _, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(f"PUT /v1/uploads/{uid}/chunks/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
                 + b"x" * 10)  # then nothing: the handler waits for the rest of the body
    await writer.drain()

    async def in_flight(n: int, what: str) -> None:
        for _ in range(100):  # 5 s at most
            found = await scrape(client)
            if value(found, "vezastream_http_requests_in_flight", method="PUT", route=CHUNK) == n:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(what)

    await in_flight(1, "the PUT never showed in flight")
    writer.close()  # the client leaves mid-body
    await in_flight(0, "the PUT stayed in flight after its client left")
    found = await scrape(client)
    assert value(found, "vezastream_http_requests_total", method="PUT", route=CHUNK, status="499") == 1


async def test_unmatched_paths_share_one_label(make_client, make_settings):
    client = await make_client(make_settings())
    for path in ("/nope/1", "/nope/2", "/v1/uploads/zz/what"):
        assert (await client.get(path)).status == 404
    found = await scrape(client)
    assert value(found, "vezastream_http_requests_total", route="unmatched", status="404") == 3


async def test_gc_removals_and_expiries_are_counted(make_client, make_settings):
    from vezastream.http.app import gc_key

    client = await make_client(make_settings(**{"limits.upload_ttl": 1, "gc.max_age": 1}))
    abandoned = (await create(client, total_size=20, chunk_size=10))["upload_id"]
    await put_chunk(client, abandoned, 1, b"a" * 10)
    await asyncio.sleep(2.2)  # its state expired, and its chunks are older than gc.max_age
    assert (await client.app[gc_key].run_once()).removed == [abandoned]
    found = await scrape(client)
    assert value(found, "vezastream_gc_removed_total", what="removed") == 1
    assert value(found, "vezastream_uploads_expired_total", sink="local") == 1


async def test_dropped_notifications_are_counted(make_client, make_settings):
    from vezastream.http.app import hooks_key

    stalled = asyncio.Event()

    class Slow:
        from vezastream import hookimpl

        @hookimpl
        async def vezastream_observe_chunk(self, upload):
            await stalled.wait()

    client = await make_client(make_settings(), plugins=[("slow", Slow())])
    client.app[hooks_key].max_pending = 1
    state = await create(client, total_size=30, chunk_size=10)
    for n, piece in enumerate(split(b"x" * 30, 10), 1):
        await put_chunk(client, state["upload_id"], n, piece)
    stalled.set()
    found = await scrape(client)
    assert value(found, "vezastream_hook_notifications_dropped_total", hook="vezastream_observe_chunk") == 2


@pytest.mark.parametrize("hook, setting", [("vezastream_validate_upload", "validate_timeout"),
                                           ("vezastream_authenticate_request", "auth_timeout"),
                                           ("vezastream_inspect_upload", "inspect_timeout")])
async def test_hook_timeouts_are_counted(make_client, make_settings, hook, setting):
    from vezastream import hookimpl

    released = asyncio.Event()

    async def stuck(self):
        async with asyncio.timeout(10):  # bounded: released below
            await released.wait()

    plugin = type("Stuck", (), {hook: hookimpl(stuck)})()
    client = await make_client(make_settings(**{f"hooks.{setting}": 0.2}), plugins=[("quota", plugin)])
    try:
        for _ in range(2):
            if hook == "vezastream_inspect_upload":  # at completion
                uid = (await create(client, total_size=1, chunk_size=1))["upload_id"]
                await put_chunk(client, uid, 1, b"x")
                resp = await client.post(f"/v1/uploads/{uid}/complete")
            else:
                resp = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1})
            assert resp.status == 503, await resp.text()
    finally:
        released.set()
    found = await scrape(client)
    assert value(found, "vezastream_hook_timeouts_total", hook=hook, plugin="quota") == 2


@pytest.mark.parametrize("held", ["s3cret", "s3cret\n"], ids=["plain", "newline"])
async def test_token_protects_metrics(make_client, make_settings, monkeypatch, held):
    """The variable may hold the token with a newline after it (a Kubernetes secret made from a file):
    the scraper sends it without (Prometheus trims its credentials_file), and was refused for ever."""
    monkeypatch.setenv("VZ_METRICS_TOKEN", held)
    client = await make_client(make_settings(**{"metrics.token_env": "VZ_METRICS_TOKEN"}))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert resp.content_type == "application/problem+json"
        assert "s3cret" not in await resp.text()
    await scrape(client, Authorization="Bearer s3cret")
    assert (await client.get("/v1/health")).status == 200  # the token guards /metrics only


def test_token_variable_must_be_named_and_set(make_settings, monkeypatch):
    from vezastream.http.app import create_app
    from vezastream.config import ConfigError

    with pytest.raises(ConfigError, match="metrics.token_env"):
        make_settings(**{"metrics.token_env": "not a name"})
    monkeypatch.delenv("VZ_METRICS_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="VZ_METRICS_TOKEN is empty"):  # never open by mistake
        create_app(make_settings(**{"metrics.token_env": "VZ_METRICS_TOKEN"}))
    monkeypatch.setenv("VZ_METRICS_TOKEN", " \n")
    with pytest.raises(ConfigError, match="VZ_METRICS_TOKEN is empty"):
        create_app(make_settings(**{"metrics.token_env": "VZ_METRICS_TOKEN"}))


async def test_off_switch(make_client, make_settings):
    client = await make_client(make_settings(**{"metrics.enabled": False}))
    resp = await client.get("/metrics")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    await upload(client, random_bytes(100), 50)  # and uploads work without it


@pytest.mark.slow
async def test_workers_report_one_coherent_set(tmp_path, redis_url):
    stale = tmp_path / "data" / "metrics" / "counter_4242.db"  # an earlier run's values (metrics.md)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"values of a run before: not to be summed in")
    server = Server(server_env(tmp_path, redis_url), tmp_path, "--workers", "2")
    uploads, size = 12, 4000
    try:
        await server.wait_ready()
        assert not stale.exists()  # the folder is emptied at start
        # A new connection per request: the kernel spreads them over both workers.
        async with aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(uploads):
                data = random_bytes(size)
                async with s.post("/v1/uploads", json={"filename": "w", "total_size": size,
                                                       "chunk_size": 1000}) as r:
                    uid = (await r.json())["upload_id"]
                for n, piece in enumerate(split(data, 1000), 1):
                    async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=piece) as r:
                        assert r.status == 201
                async with s.post(f"/v1/uploads/{uid}/complete") as r:
                    assert r.status == 200
            scrapes = []
            for _ in range(6):  # whichever worker answers, the same totals
                async with s.get("/metrics") as r:
                    assert r.status == 200
                    scrapes.append(samples(await r.text()))
        for found in scrapes:
            assert value(found, "vezastream_uploads_created_total", door="native") == uploads
            assert value(found, "vezastream_uploads_completed_total", door="native") == uploads
            assert value(found, "vezastream_received_bytes_total", door="native") == uploads * size
            assert value(found, "vezastream_http_request_duration_seconds_count", method="PUT",
                         route=CHUNK) == uploads * 4
            assert not [name for name, _ in found if name.endswith("_created")]  # metrics.md: none with workers
        assert len(list((tmp_path / "data" / "metrics").glob("counter_*.db"))) == 2  # both workers counted
    finally:
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0


@pytest.mark.slow
async def test_requests_in_flight_on_both_workers_are_summed(tmp_path, redis_url):
    """metrics.md: the in-flight gauge is summed over live workers. 12 chunk requests held mid-body,
    each on its own connection (the kernel spreads them over both workers), then let go."""
    server = Server(server_env(tmp_path, redis_url), tmp_path, "--workers", "2")
    held: list[asyncio.StreamWriter] = []

    async def until_in_flight(count: int) -> None:
        """Until four scrapes (whichever worker answers each) read ``count`` chunk requests; 10 s at most."""
        found: list[float] = []
        async with aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(force_close=True)) as s:
            for _ in range(100):
                found.clear()
                for _ in range(4):
                    async with s.get("/metrics") as r:
                        found.append(value(samples(await r.text()), "vezastream_http_requests_in_flight",
                                           method="PUT", route=CHUNK))
                if found == [count] * 4:
                    return
                await asyncio.sleep(0.1)
        raise AssertionError(f"in flight: {found}, not {count}")

    try:
        await server.wait_ready()
        async with aiohttp.ClientSession(server.url) as s, s.post("/v1/uploads", json={
                "filename": "held", "total_size": 12_000, "chunk_size": 1000}) as r:
            uid = (await r.json())["upload_id"]
        for n in range(1, 13):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"PUT /v1/uploads/{uid}/chunks/{n} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         f"application/octet-stream\r\nContent-Length: 1000\r\n\r\n".encode() + b"x" * 10)
            await writer.drain()
            held.append(writer)
        await until_in_flight(12)  # every body has reached its handler
        assert len(list((tmp_path / "data" / "metrics").glob("gauge_livesum_*.db"))) == 2  # both workers'
        for writer in held:
            writer.close()
        await until_in_flight(0)
    finally:
        for writer in held:
            writer.close()
        server.kill(signal.SIGTERM)


async def test_dashboard_and_docs_name_only_real_metrics(make_client, make_settings):
    import json
    import re
    from pathlib import Path

    docs = Path(__file__).parent.parent.parent / "docs"
    text = (await (await (await make_client(make_settings())).get("/metrics")).text())
    names = {f.name for f in text_string_to_metric_families(text)}
    exported = {n for n in names if n.removesuffix("_created") == n or n.removesuffix("_created") not in names}
    assert "vezastream_http_request_duration_seconds_created" in names  # metrics.md: one process has _created
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"vezastream_\w+", target["expr"])}
    documented = set(re.findall(r"^\| `(vezastream_\w+)`", (docs / "metrics.md").read_text(), re.M))
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used | documented}
    assert families <= exported  # nothing named that does not exist...
    assert {re.sub(r"_total$", "", n) for n in documented} == exported  # ...and every metric documented


async def test_a_request_whose_client_left_is_counted_as_499_whatever_it_did(make_client, make_settings):
    """metrics.md: the bytes a tus PATCH kept after its client went away are not in received_bytes, and a
    completion that finished after its client left counts as completed and as failed with status 499."""
    from vezastream import hookimpl

    class SlowInspector:
        @hookimpl
        async def vezastream_inspect_upload(self):
            await asyncio.sleep(0.5)

    client = await make_client(make_settings(), plugins=[("slow", SlowInspector())])
    base = str(client.make_url("")).rstrip("/")
    data = random_bytes(300_000)
    path = upload_path(await tus_create(client, len(data)))
    kept = await drop_mid_body(base, path, data, 100_000)
    assert kept > 0
    uid = (await create(client, total_size=10, chunk_size=10))["upload_id"]
    await put_chunk(client, uid, 1, b"0123456789")
    with pytest.raises(asyncio.TimeoutError):
        async with asyncio.timeout(0.1):
            await client.post(f"/v1/uploads/{uid}/complete")
    for _ in range(50):  # bounded: the completion ends about 0.5 s on
        if (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "completed":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # its request's end is counted once the handler returns
    found = await scrape(client)
    assert value(found, "vezastream_received_bytes_total", door="tus") == 0
    assert value(found, "vezastream_http_requests_total", method="PATCH", route="/files/{upload_id}",
                 status="499") == 1
    assert value(found, "vezastream_uploads_completed_total", door="native", sink="local") == 1
    assert value(found, "vezastream_uploads_failed_total", door="native", sink="local", status="499") == 1
