"""The browser uploader at ``/`` (vezastream/http/ui/) and CORS on ``/v1/``.

The page is driven end to end in headless Chromium: Debian's ``/usr/bin/chromium`` (scripts/test
installs it) through Playwright's Python package, with no browser download. Each browser test runs
a real ``vezastream serve``; what the page uploaded is read back through the API and compared
byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from helpers import nginx
from servers import Server, server_env

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # the browser tests skip; the others run
    async_playwright = expect = None

CHROMIUM = Path("/usr/bin/chromium")
CHUNK = 256 * 1024
WEB = "https://app.example.com"
PREFLIGHT = {"Origin": WEB, "Access-Control-Request-Method": "PUT",
             "Access-Control-Request-Headers": "authorization, content-type, x-chunk-sha256"}


# -- served or not ---------------------------------------------------------------------------
async def test_the_page_and_its_files_are_served_with_a_strict_policy(make_client, make_settings):
    client = await make_client(make_settings())
    resp = await client.get("/")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()
    assert '<script src="/ui/uploader.js"' in page and "{{config}}" not in page
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for path, kind in (("/ui/uploader.js", "text/javascript"), ("/ui/uploader.css", "text/css")):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == kind and len(await resp.read()) > 1000


async def test_the_page_takes_its_settings_from_the_config(make_client, make_settings):
    client = await make_client(make_settings(**{"ui.parallel_chunks": 2, "ui.sha256_max_size": "1MiB"}))
    page = await (await client.get("/")).text()
    start = page.index('name="vezastream-ui" content="') + len('name="vezastream-ui" content="')
    raw = page[start:page.index('"', start)].replace("&quot;", '"')
    assert json.loads(raw) == {"parallel_chunks": 2, "sha256_max_size": 1024 * 1024, "token": False}


async def test_the_page_can_be_switched_off(make_client, make_settings):
    client = await make_client(make_settings(**{"ui.enabled": False}))
    for path in ("/", "/ui/uploader.js"):
        resp = await client.get(path)
        assert resp.status == 404 and resp.content_type == "application/problem+json"
    assert (await client.get("/v1/health")).status == 200


# -- CORS on /v1 -----------------------------------------------------------------------------
async def test_v1_answers_preflights_and_lets_an_allowed_origin_read_its_answers(make_client, make_settings):
    client = await make_client(make_settings(**{"native.cors_origins": [WEB]}))
    resp = await client.options("/v1/uploads/anything/chunks/1", headers=PREFLIGHT)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == WEB
    assert "PUT" in resp.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-chunk-sha256", "content-digest"} <= allowed
    resp = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1}, headers={"Origin": WEB})
    assert resp.status == 201 and resp.headers["Access-Control-Allow-Origin"] == WEB
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "Retry-After"} <= exposed and "Origin" in resp.headers["Vary"]
    # Errors too: a page must be able to read a problem+json.
    resp = await client.get("/v1/uploads/unknown", headers={"Origin": WEB})
    assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == WEB
    # Another origin gets no CORS header at all; unknown paths stay 404.
    resp = await client.options("/v1/uploads", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert (await client.options("/v1/nothing-here", headers=PREFLIGHT)).status == 404
    assert (await client.patch("/v1/uploads")).status == 405


async def test_v1_sends_no_cors_headers_when_no_origin_is_allowed(make_client, make_settings):
    client = await make_client(make_settings(**{"native.cors_origins": []}))
    resp = await client.options("/v1/uploads", headers=PREFLIGHT)
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.post("/v1/uploads", json={"filename": "a", "total_size": 1}, headers={"Origin": WEB})
    assert resp.status == 201 and "Access-Control-Allow-Origin" not in resp.headers


@pytest.mark.parametrize("key,value", [("native.cors_origins", ["ftp://x"]), ("native.cors_origins", "*"),
                                       ("ui.parallel_chunks", 0), ("ui.sha256_max_size", -1)])
def test_bad_ui_and_cors_settings_are_refused(make_settings, key, value):
    from vezastream.config import ConfigError
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_settings(**{key: value})


# -- in Chromium -----------------------------------------------------------------------------
@pytest.fixture
def settings_env() -> dict[str, str]:
    """More settings for the server (a test overrides it by parametrizing ``settings_env``)."""
    return {}


#: The browser tests share one Chromium per module (and pytest-xdist worker): a launch, with its
#: Playwright driver, costs about 1 CPU-s, and each test has a browser context of its own (its own
#: storage). Playwright's objects belong to the event loop that made them, so these tests and their
#: async fixtures run in the module's loop.
in_browser = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module")
async def server(tmp_path, settings_env):
    env = {**server_env(tmp_path), "VEZASTREAM_LIMITS__DEFAULT_CHUNK_SIZE": str(CHUNK), **settings_env}
    srv = Server(env, tmp_path)
    try:
        await srv.wait_ready()
        yield srv
    finally:
        srv.kill(signal.SIGTERM)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    missing = pytest.fail if os.environ.get("CI") else pytest.skip  # CI must run them
    if async_playwright is None:
        missing("the playwright package is missing: pip install '.[test]'")
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium when run as root")
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser, server):
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(60_000)
    await page.goto(server.url + "/")
    yield page
    await context.close()


def make_file(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def item(path: Path) -> str:
    return f'.item[data-name="{path.name}"]'


async def throttle(page, bytes_per_second: int) -> None:
    """Slow the page's uploads down (Chromium's own network emulation), to act on one mid-way."""
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                        "uploadThroughput": bytes_per_second})


def chunk_puts(page) -> list[int]:
    """The chunk numbers the page PUTs from now on, in order."""
    sent: list[int] = []
    page.on("request", lambda r: sent.append(int(r.url.rsplit("/", 1)[1]))
            if r.method == "PUT" and "/chunks/" in r.url else None)
    return sent


async def state(server: Server, upload_id: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession(headers=headers) as s, s.get(f"{server.url}/v1/uploads/{upload_id}") as r:
        return r.status, await r.json()


async def content(server: Server, upload_id: str, headers: dict[str, str] | None = None) -> bytes:
    async with aiohttp.ClientSession(headers=headers) as s, s.get(f"{server.url}/v1/uploads/{upload_id}/content") as r:
        assert r.status == 200
        return await r.read()


async def upload_id(page, path: Path) -> str:
    await page.wait_for_selector(f"{item(path)}[data-upload-id]", state="attached")
    return await page.get_attribute(item(path), "data-upload-id")


async def until_received(server: Server, uid: str, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = await state(server, uid)
        if status == 200 and len(body["chunks_received"]) >= count:
            return body["chunks_received"]
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the server did not receive {count} chunks")


async def start_slowly(page, server: Server, path: Path, chunks: int) -> str:
    """Give the page ``path`` at 1 MiB/s; once the server holds ``chunks`` of its chunks, its upload id."""
    await throttle(page, 1024 * 1024)
    await page.set_input_files("#picker", str(path))
    uid = await upload_id(page, path)
    await until_received(server, uid, chunks)
    return uid


@in_browser
@pytest.mark.slow
async def test_three_files_from_chromium_arrive_byte_identical(page, server, tmp_path):
    files = [make_file(tmp_path, f"file-{i}.bin", 2 * 1024 * 1024 + i * 100_003 + 17) for i in range(3)]
    created = []
    page.on("request", lambda r: created.append(r.post_data_json)
            if r.method == "POST" and r.url.endswith("/v1/uploads") else None)
    puts = chunk_puts(page)
    await page.set_input_files("#picker", [str(f) for f in files])
    await expect(page.locator('.item[data-state="done"]')).to_have_count(3, timeout=60_000)
    for f in files:
        data = f.read_bytes()
        uid = await upload_id(page, f)
        assert await content(server, uid) == data
        status, body = await state(server, uid)
        assert body["result"]["sha256"] == hashlib.sha256(data).hexdigest()
    # Each file declared its SHA-256 (checked at completion), and each chunk was sent once.
    assert sorted(c["filename"] for c in created) == sorted(f.name for f in files)
    assert all(c["sha256"] == hashlib.sha256((tmp_path / c["filename"]).read_bytes()).hexdigest() for c in created)
    assert len(puts) == sum(-(-f.stat().st_size // CHUNK) for f in files)
    assert await page.evaluate("localStorage.getItem('vezastream.uploads')") == "{}"


@in_browser
@pytest.mark.slow
async def test_dropped_files_are_uploaded_an_empty_one_included(page, server):
    """Each keeps the type the browser gave it (docs/ui.md); one of a type it does not know is octet-stream."""
    files = {"dropped.txt": b"dropped on the zone\n" * 40_000, "empty.txt": b"", "odd.xyz": b"?"}
    types = {"dropped.txt": "text/plain", "empty.txt": "", "odd.xyz": ""}
    transfer = await page.evaluate_handle("""([files, types]) => {
        const transfer = new DataTransfer();
        for (const [name, text] of Object.entries(files)) transfer.items.add(new File([text], name, {type: types[name]}));
        return transfer;
    }""", [{name: data.decode() for name, data in files.items()}, types])
    await page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    await expect(page.locator('.item[data-state="done"]')).to_have_count(3)
    for name, data in files.items():
        uid = await page.get_attribute(f'.item[data-name="{name}"]', "data-upload-id")
        assert await content(server, uid) == data
        assert (await state(server, uid))[1]["content_type"] == (types[name] or "application/octet-stream")


@in_browser
@pytest.mark.slow
async def test_a_refused_chunk_is_sent_again_after_retry_after(page, server, tmp_path):
    f = make_file(tmp_path, "busy.bin", 4 * CHUNK + 3)
    refused: list[float] = []

    async def busy_once(route) -> None:
        if refused:
            return await route.continue_()
        refused.append(time.monotonic())
        await route.fulfill(status=503, headers={"Retry-After": "2"}, content_type="application/problem+json",
                            body=json.dumps({"title": "Service Unavailable", "status": 503, "detail": "busy"}))

    await page.route("**/v1/uploads/*/chunks/2", busy_once)
    again: list[float] = []
    page.on("request", lambda r: again.append(time.monotonic()) if r.url.endswith("/chunks/2") and refused else None)
    await page.set_input_files("#picker", str(f))
    await page.wait_for_selector(f'{item(f)}[data-state="done"]')
    assert len(refused) == 1 and len(again) == 1 and again[0] - refused[0] >= 1.9
    assert await content(server, await upload_id(page, f)) == f.read_bytes()


@in_browser
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["damaged", "502", "408"])
async def test_a_chunk_damaged_on_the_way_or_answered_with_a_passing_error_is_sent_again(page, server, tmp_path,
                                                                                        fault):
    """docs/ui.md: each chunk goes with its X-Chunk-Sha256, so one whose bytes change on the way is
    refused (422) and sent again; a 502 or 408 is tried again too. The file arrives whole."""
    f = make_file(tmp_path, "again.bin", 3 * CHUNK + 5)
    data = f.read_bytes()
    sent: list[str | None] = []  # chunk 2's X-Chunk-Sha256, each time it goes

    async def once(route) -> None:
        sent.append(route.request.headers.get("x-chunk-sha256"))
        if len(sent) > 1:
            return await route.continue_()
        if fault == "damaged":  # one bit flipped between the page and the server
            body = bytearray(route.request.post_data_buffer)
            body[0] ^= 1
            return await route.continue_(post_data=bytes(body))
        await route.fulfill(status=int(fault), content_type="application/problem+json",
                            body=json.dumps({"title": "passing", "status": int(fault), "detail": "try again"}))

    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if r.url.endswith("/chunks/2") else None)
    await page.route("**/v1/uploads/*/chunks/2", once)
    await page.set_input_files("#picker", str(f))
    await page.wait_for_selector(f'{item(f)}[data-state="done"]')
    assert sent == [hashlib.sha256(data[CHUNK:2 * CHUNK]).hexdigest()] * 2
    assert answers == [422 if fault == "damaged" else int(fault), 201]
    assert await content(server, await upload_id(page, f)) == data


@in_browser
@pytest.mark.slow
@pytest.mark.parametrize("settings_env", [{"VEZASTREAM_AUTH__MODE": "token", "VEZASTREAM_TOKENS": "s3cret=alice"}])
async def test_with_token_auth_the_page_sends_the_token_typed_in(page, server, tmp_path):
    f = make_file(tmp_path, "private.bin", 3 * CHUNK)
    assert await page.locator("#auth").get_attribute("open") is not None  # the page asks for it
    await page.set_input_files("#picker", str(f))
    await page.wait_for_selector(f'{item(f)}[data-state="failed"]')
    assert "Bearer" in await page.text_content(f"{item(f)} .detail")
    await page.fill("#token", "s3cret")
    await page.click(f"{item(f)} .pause")  # labelled Retry
    await page.wait_for_selector(f'{item(f)}[data-state="done"]')
    uid = await upload_id(page, f)
    assert await content(server, uid, {"Authorization": "Bearer s3cret"}) == f.read_bytes()
    assert await page.evaluate("sessionStorage.getItem('vezastream.token')") == "s3cret"


@in_browser
@pytest.mark.slow
async def test_a_chunk_that_arrived_whole_before_the_pause_is_not_sent_again_on_resume(page, server, tmp_path):
    """The pause aborts chunk 2's request after the server has stored its body (its answer is held
    back from the page); on resume the page asks the server, and sends only what it lacks."""
    f = make_file(tmp_path, "held.bin", 4 * CHUNK + 9)
    stored, release = asyncio.Event(), asyncio.Event()

    async def store_then_hold(route) -> None:
        answer = await route.fetch()  # the server receives and stores the chunk
        stored.set()
        await release.wait()
        try:
            await route.fulfill(response=answer)
        except Exception:  # the page aborted the request meanwhile: nothing is left to answer
            pass

    await page.route("**/v1/uploads/*/chunks/2", store_then_hold, times=1)
    await throttle(page, 256 * 1024)  # the other chunks take about a second each
    await page.set_input_files("#picker", str(f))
    uid = await upload_id(page, f)
    await asyncio.wait_for(stored.wait(), 30)
    await page.click(f"{item(f)} .pause")
    await page.wait_for_selector(f'{item(f)}[data-state="paused"]')
    release.set()
    _, held = await state(server, uid)
    assert 2 in held["chunks_received"] and held["received_count"] < held["total_chunks"]
    await throttle(page, 64 * 1024 * 1024)
    puts = chunk_puts(page)
    await page.click(f"{item(f)} .pause")  # now labelled Resume
    await page.wait_for_selector(f'{item(f)}[data-state="done"]')
    assert 2 not in puts and set(puts) == set(range(1, held["total_chunks"] + 1)) - set(held["chunks_received"])
    assert await content(server, uid) == f.read_bytes()


@in_browser
@pytest.mark.slow
async def test_pause_stops_sending_and_resume_finishes(page, server, tmp_path):
    f = make_file(tmp_path, "paused.bin", 3 * 1024 * 1024 + 5)
    uid = await start_slowly(page, server, f, 2)
    await page.click(f"{item(f)} .pause")
    await page.wait_for_selector(f'{item(f)}[data-state="paused"]')
    puts = chunk_puts(page)
    await asyncio.sleep(0.5)  # a chunk whose last byte had left may still land
    _, before = await state(server, uid)
    await asyncio.sleep(1.5)
    _, after = await state(server, uid)
    assert after["chunks_received"] == before["chunks_received"] and puts == []
    assert before["received_count"] < before["total_chunks"]
    await page.click(f"{item(f)} .pause")  # now labelled Resume
    await page.wait_for_selector(f'{item(f)}[data-state="done"]')
    assert set(puts) == set(range(1, before["total_chunks"] + 1)) - set(before["chunks_received"])
    assert await content(server, uid) == f.read_bytes()


@in_browser
@pytest.mark.slow
@pytest.mark.parametrize("settings_env", [{"VEZASTREAM_AUTH__MODE": "token", "VEZASTREAM_TOKENS": "s3cret=alice"}])
async def test_a_new_tab_asks_for_the_token_then_shows_what_the_server_holds(page, server, tmp_path):
    """The token lives in the tab (sessionStorage); the unfinished uploads in the browser (localStorage). A new
    tab's restored row says the token is needed, and once it is typed shows the bytes the server holds."""
    alice = {"Authorization": "Bearer s3cret"}
    await page.fill("#token", "s3cret")
    f = make_file(tmp_path, "tab.bin", 3 * 1024 * 1024 + 1234)
    await throttle(page, 1024 * 1024)
    await page.set_input_files("#picker", str(f))
    uid = await upload_id(page, f)
    deadline = time.monotonic() + 30
    while not (await state(server, uid, alice))[1].get("chunks_received"):
        assert time.monotonic() < deadline, "no chunk arrived"
        await asyncio.sleep(0.05)
    tab = await page.context.new_page()
    await page.close()  # the upload stops where it is
    await tab.goto(server.url + "/")
    await tab.wait_for_selector(f'{item(f)}[data-state="waiting"]')
    await expect(tab.locator(f"{item(f)} .detail")).to_contain_text("access token")
    await tab.fill("#token", "s3cret")
    await tab.press("#token", "Enter")
    # e.g. "1.0 MiB of 3.0 MiB on the server · drop or choose this file again to resume"
    await expect(tab.locator(f"{item(f)} .detail")).to_have_text(re.compile(r"^[1-9][0-9.]* [KM]iB of .* on the server"))
    await tab.set_input_files("#picker", str(f))
    await tab.wait_for_selector(f'{item(f)}[data-state="done"]')
    assert await content(server, uid, alice) == f.read_bytes()


@in_browser
@pytest.mark.slow
async def test_after_a_reload_the_same_file_resumes_with_only_the_missing_chunks(page, server, tmp_path):
    f = make_file(tmp_path, "reloaded.bin", 3 * 1024 * 1024 + 1234)
    uid = await start_slowly(page, server, f, 3)
    await page.reload()
    await page.wait_for_selector(f'{item(f)}[data-state="waiting"]')
    await asyncio.sleep(0.5)  # a chunk whose last byte had left before the reload may still land
    _, before = await state(server, uid)
    missing = set(range(1, before["total_chunks"] + 1)) - set(before["chunks_received"])
    assert before["chunks_received"] and missing
    created = []
    page.on("request", lambda r: created.append(r) if r.method == "POST" and r.url.endswith("/v1/uploads") else None)
    puts = chunk_puts(page)
    await page.set_input_files("#picker", str(f))
    await page.wait_for_selector(f'{item(f)}[data-state="done"]')
    assert await page.get_attribute(item(f), "data-upload-id") == uid and created == []
    assert Counter(puts) == Counter(missing)  # each missing chunk once, nothing the server had
    assert await content(server, uid) == f.read_bytes()


@in_browser
@pytest.mark.slow
async def test_cancel_deletes_the_upload(page, server, tmp_path):
    f = make_file(tmp_path, "cancelled.bin", 3 * 1024 * 1024)
    uid = await start_slowly(page, server, f, 1)
    await page.click(f"{item(f)} .cancel")
    await page.wait_for_selector(f'{item(f)}[data-state="cancelled"]')
    deadline = time.monotonic() + 10
    while (await state(server, uid))[0] != 404:
        assert time.monotonic() < deadline, "the upload was not deleted"
        await asyncio.sleep(0.05)
    assert await page.evaluate("localStorage.getItem('vezastream.uploads')") == "{}"


@in_browser
async def test_a_file_with_a_newline_in_its_name_is_uploaded_under_that_name_with_the_newline_replaced(
        page, server, tmp_path):
    """Linux allows a newline in a name; the server takes names without control characters, and the
    row failed ("filename must be valid Unicode without control characters"). Sent as U+FFFD."""
    f = make_file(tmp_path, "two\nlines.bin", 3000)
    await page.set_input_files("#picker", str(f))
    await page.wait_for_selector('.item[data-state="done"]')
    uid = await page.get_attribute(".item[data-upload-id]", "data-upload-id")
    assert (await state(server, uid))[1]["filename"] == "two\ufffdlines.bin"
    assert await content(server, uid) == f.read_bytes()


@in_browser
@pytest.mark.parametrize("settings_env", [{"VEZASTREAM_LIMITS__DEFAULT_CHUNK_SIZE": str(2 << 20)}])
async def test_behind_a_proxy_that_takes_smaller_bodies_than_a_chunk_the_row_says_so(browser, server, tmp_path):
    """The page through Debian's nginx with its default body limit (1 MB), 2 MiB chunks: nginx refuses
    each chunk with 413 and a page of its own, and the row said "chunk 1: HTTP 413". It now says who
    refused and what to change."""
    with nginx(tmp_path / "nginx", server.url) as url:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            await page.goto(url + "/")
            f = make_file(tmp_path, "big.bin", 3 << 20)
            await page.set_input_files("#picker", str(f))
            await page.wait_for_selector(f'{item(f)}[data-state="failed"]', timeout=30_000)
            detail = await page.text_content(f"{item(f)} .detail")
        finally:
            await context.close()
    assert re.search(r"· chunk \d: HTTP 413 from a proxy in front of the server: it takes smaller bodies than a "
                     r"chunk \(its limit must be raised, e\.g\. nginx's client_max_body_size\)$", detail), detail


@in_browser
@pytest.mark.slow
async def test_a_page_on_another_origin_calls_v1(browser, server):
    """A page of http://localhost:<port> (another origin than http://127.0.0.1:<port>) uploads through fetch."""
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await page.goto(f"http://localhost:{server.port}/v1/health")  # JSON: no policy of the uploader page
        answer = await page.evaluate("""async (api) => {
            const r = await fetch(api + "/v1/uploads", {method: "POST", headers: {"Content-Type": "application/json"},
                                  body: JSON.stringify({filename: "x.txt", total_size: 3})});
            const id = (await r.json()).upload_id;
            const put = await fetch(api + "/v1/uploads/" + id + "/chunks/1",
                                    {method: "PUT", headers: {"X-Chunk-Sha256": "%s"}, body: "abc"});
            const done = await fetch(api + "/v1/uploads/" + id + "/complete", {method: "POST"});
            return [r.status, r.headers.get("Location"), put.status, done.status, id];
        }""" % hashlib.sha256(b"abc").hexdigest(), server.url)
    finally:
        await context.close()
    status, location, put, done, uid = answer
    assert (status, location, put, done) == (201, f"/v1/uploads/{uid}", 201, 200)
    assert await content(server, uid) == b"abc"


#: An uploaded page whose script, were it run as a page of the server's origin, would leave a mark in
#: that origin's storage and in its own title.
EVIL_PAGE = (b"<!doctype html><title>uploaded</title><p id=shown>shown as text</p>"
             b"<script>localStorage.setItem('ran', 'yes'); document.title = 'ran'</script>")


@in_browser
async def test_an_uploaded_page_is_a_download_and_never_runs_as_a_page_of_the_server(browser, server):
    """An uploaded ``text/html`` file opened in Chromium is saved as a download, byte for byte; served
    without its ``attachment`` disposition (a proxy that drops it, stood in for by Playwright's
    routing), Chromium shows it, but its script does not run and the server origin's storage stays
    untouched (before: the script ran as a page of the server)."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.post("/v1/uploads", json={"filename": "evil.html", "total_size": len(EVIL_PAGE),
                                               "content_type": "text/html"}) as r:
            uid = (await r.json())["upload_id"]
        async with s.put(f"/v1/uploads/{uid}/chunks/1", data=EVIL_PAGE) as r:
            assert r.status == 201
        async with s.post(f"/v1/uploads/{uid}/complete") as r:
            assert r.status == 200
    url = f"{server.url}/v1/uploads/{uid}/content"
    context = await browser.new_context(accept_downloads=True)
    page = await context.new_page()
    try:
        await page.goto(server.url + "/v1/health")
        async with page.expect_download() as saved:
            await page.evaluate("url => { location.href = url }", url)
        download = await saved.value
        assert download.suggested_filename == "evil.html"
        assert Path(await download.path()).read_bytes() == EVIL_PAGE

        async def without_disposition(route):
            answer = await route.fetch()
            headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-disposition"}
            await route.fulfill(response=answer, headers=headers)

        await page.route(url, without_disposition)
        await page.goto(url)
        assert await page.text_content("#shown") == "shown as text"  # rendered as a page
        assert await page.title() == "uploaded"
        await page.goto(server.url + "/v1/health")
        assert await page.evaluate("localStorage.getItem('ran')") is None
    finally:
        await context.close()
