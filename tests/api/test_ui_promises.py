"""Promises of docs/ui.md the browser tests of test_ui.py leave out: retries, the parallel_chunks
cap over all files, ``ui.sha256_max_size``, Discard, and the page's Cache-Control and connect-src.

Same set-up as test_ui.py (its fixtures and helpers): a real ``vezastream serve`` with its bundled
Redis, the page driven in Debian's Chromium; Playwright's ``page.route`` stands in for a busy
server or a failing network where a test needs one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time

import pytest
import pytest_asyncio

from tests.api.test_ui import (  # noqa: F401  (browser, server, settings_env: fixtures)
    CHROMIUM, CHUNK, browser, content, expect, in_browser, item, make_file, server, settings_env, start_slowly, state,
    throttle, upload_id)

CHUNKS = "**/v1/uploads/*/chunks/*"
WAIT = 10_000  # ms: the longest a test waits for a state of the page
#: The waits the page asks of setTimeout, kept in window.__waits and run 50 times faster: the
#: backoff series (up to 45 s in all) is read in about a second.
FAST_WAITS = """(() => {
  const real = window.setTimeout;
  window.__waits = [];
  window.setTimeout = (fn, ms = 0, ...args) => { window.__waits.push(ms); return real(fn, ms / 50, ...args); };
})();"""


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser, server):  # noqa: F811  (test_ui's, with waits bounded at 10 s)
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(WAIT)
    await page.goto(server.url + "/")
    yield page
    await context.close()


async def until(check, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def problem(status: int, detail: str, retry_after: str | None = None, code: str | None = None) -> dict:
    """A problem+json answer for ``route.fulfill`` (``code``: its type's last part)."""
    body = {"title": "busy", "status": status, "detail": detail}
    if code is not None:
        body["type"] = f"https://vezastream.dev/problems/{code}"
    return {"status": status, "headers": {"Retry-After": retry_after} if retry_after is not None else {},
            "content_type": "application/problem+json", "body": json.dumps(body)}


def in_turn(answers: list[dict]):
    """A route handler that gives ``answers`` (popped) one request each, then lets requests through."""
    async def answer(route) -> None:
        if not answers:
            return await route.continue_()
        await route.fulfill(**answers.pop(0))
    return answer


# -- Retries ---------------------------------------------------------------------------------
@in_browser
@pytest.mark.slow
async def test_a_chunk_refused_8_times_stops_the_file_with_the_reason_and_retry_finishes_it(page, server, tmp_path):
    f = make_file(tmp_path, "refused.bin", 4 * CHUNK + 5)
    tries: list[int] = []

    async def busy(route) -> None:
        tries.append(len(tries) + 1)
        await route.fulfill(**problem(503, f"busy, try {len(tries)}", retry_after="0"))

    await page.route("**/v1/uploads/*/chunks/3", busy)
    await page.set_input_files("#picker", str(f))
    row = page.locator(item(f))
    await expect(row).to_have_attribute("data-state", "failed", timeout=WAIT)
    await asyncio.sleep(1)  # 4 times the longest wait after a Retry-After of 0: a 9th try would be here
    assert tries == list(range(1, 9))
    await expect(row.locator(".state")).to_have_text("failed")
    await expect(row.locator(".detail")).to_contain_text("chunk 3: busy, try 8")  # the reason: the last answer
    retry = row.locator(".pause")
    await expect(retry).to_be_visible()
    await expect(retry).to_have_text("Retry")
    await page.unroute("**/v1/uploads/*/chunks/3")
    await retry.click()
    await expect(row).to_have_attribute("data-state", "done", timeout=WAIT)
    assert await content(server, await upload_id(page, f)) == f.read_bytes()


@in_browser
@pytest.mark.slow
async def test_the_wait_between_tries_starts_at_half_a_second_and_doubles_up_to_15_s(page, server, tmp_path):
    """A network error, 429, 503 and 507 in turn, none with a Retry-After: 8 tries, 7 waits."""
    await page.add_init_script(FAST_WAITS)
    await page.reload()
    f = make_file(tmp_path, "backoff.bin", 3 * CHUNK)
    tries: list[int] = []

    async def failing(route) -> None:
        tries.append(len(tries) + 1)
        kind = (None, 429, 503, 507)[(len(tries) - 1) % 4]
        if kind is None:
            return await route.abort("connectionreset")
        await route.fulfill(**problem(kind, f"answer {len(tries)}: {kind}"))

    await page.route("**/v1/uploads/*/chunks/2", failing)
    await page.set_input_files("#picker", str(f))
    row = page.locator(item(f))
    await expect(row).to_have_attribute("data-state", "failed", timeout=WAIT)
    await asyncio.sleep(0.5)
    assert tries == list(range(1, 9))
    await expect(row.locator(".detail")).to_contain_text("chunk 2: answer 8: 507")
    waits = await page.evaluate("window.__waits")
    nominal = [min(15_000, 500 * 2 ** k) for k in range(7)]  # 0.5, 1, 2, 4, 8, 15, 15 s
    assert len(waits) == 7
    # Never above the doc's figure: the page draws each wait in its upper half (a jitter), so
    # they grow until the cap, and the capped ones are 7.5 to 15 s.
    assert all(n / 2 <= w <= n for w, n in zip(waits, nominal)), (waits, nominal)
    assert waits[:5] == sorted(waits[:5]) and min(waits[5:]) >= 7_500


@in_browser
@pytest.mark.slow
async def test_a_retry_after_sets_the_wait_before_the_next_try(page, server, tmp_path):
    await page.add_init_script(FAST_WAITS)
    await page.reload()
    f = make_file(tmp_path, "retry-after.bin", 3 * CHUNK + 1)
    answers = [problem(429, "slow down", "4"), problem(503, "busy", "2"), problem(507, "full", "6")]
    await page.route("**/v1/uploads/*/chunks/2", in_turn(answers))
    await page.set_input_files("#picker", str(f))
    await expect(page.locator(item(f))).to_have_attribute("data-state", "done", timeout=WAIT)
    waits = await page.evaluate("window.__waits")
    assert len(waits) == 3 and all(s * 1000 <= w <= s * 1000 + 250 for w, s in zip(waits, (4, 2, 6))), waits
    assert await content(server, await upload_id(page, f)) == f.read_bytes()


@in_browser
@pytest.mark.slow
async def test_a_chunk_another_connection_still_holds_is_sent_again(page, server, tmp_path):
    """`409 conflict` on a chunk: another connection still holds it (S3 direct mode, an earlier sending
    that went silent mid-body; stood in for here). The file stopped with the reason; now it is tried
    again, and a chunk stored with other bytes (`409 chunk-conflict`) still stops the file at once."""
    await page.add_init_script(FAST_WAITS)
    await page.reload()
    f = make_file(tmp_path, "held.bin", 3 * CHUNK)
    held = problem(409, "chunk 2 is being received on another connection; retry later", code="conflict")
    answers = [held, held]
    await page.route("**/v1/uploads/*/chunks/2", in_turn(answers))
    await page.set_input_files("#picker", str(f))
    await expect(page.locator(item(f))).to_have_attribute("data-state", "done", timeout=WAIT)
    assert not answers and len(await page.evaluate("window.__waits")) == 2
    assert await content(server, await upload_id(page, f)) == f.read_bytes()

    other = make_file(tmp_path, "other.bin", 3 * CHUNK)
    tries: list[int] = []

    async def stored_otherwise(route) -> None:
        tries.append(1)
        await route.fulfill(**problem(409, "chunk 2 is already stored with different bytes", code="chunk-conflict"))

    await page.unroute("**/v1/uploads/*/chunks/2")
    await page.route("**/v1/uploads/*/chunks/2", stored_otherwise)
    await page.set_input_files("#picker", str(other))
    row = page.locator(item(other))
    await expect(row).to_have_attribute("data-state", "failed", timeout=WAIT)
    await expect(row.locator(".detail")).to_contain_text("chunk 2: chunk 2 is already stored with different bytes")
    assert tries == [1]


# -- ui.parallel_chunks over all files -------------------------------------------------------
@in_browser
@pytest.mark.slow
@pytest.mark.parametrize("settings_env", [{"VEZASTREAM_UI__PARALLEL_CHUNKS": "3"}])
async def test_parallel_chunks_caps_the_chunks_in_flight_over_all_files_oldest_first(page, server, tmp_path):
    first = make_file(tmp_path, "first.bin", 5 * CHUNK)
    second = make_file(tmp_path, "second.bin", 3 * CHUNK + 9)  # 4 chunks
    held: list[tuple[str, asyncio.Event]] = []  # chunk PUTs the browser sent, not let through yet
    sent: list[str] = []  # upload id of each chunk PUT, in order
    flying = {"now": 0, "most": 0}  # chunk PUTs sent and not answered, as the browser sees them

    async def hold(route) -> None:
        gate = asyncio.Event()
        sent.append(route.request.url.split("/uploads/")[1].split("/")[0])
        held.append((route.request.url, gate))
        await asyncio.wait_for(gate.wait(), 15)
        await route.continue_()

    def count(request, step: int) -> None:
        if request.method == "PUT" and "/chunks/" in request.url:
            flying["now"] += step
            flying["most"] = max(flying["most"], flying["now"])

    page.on("request", lambda r: count(r, 1))
    page.on("requestfinished", lambda r: count(r, -1))
    page.on("requestfailed", lambda r: count(r, -1))
    await page.route(CHUNKS, hold)
    await page.set_input_files("#picker", str(first))
    await until(lambda: len(held) == 3, "the first file did not fill the 3 slots")
    await page.set_input_files("#picker", str(second))
    await expect(page.locator(item(second))).to_have_attribute("data-state", "uploading", timeout=WAIT)
    await asyncio.sleep(0.5)
    assert len(held) == 3 and flying["most"] == 3  # the second file, ready, waits for a free slot
    while held:
        url, gate = held.pop(0)
        gate.set()
        before = len(sent)
        await until(lambda: len(sent) == min(before + 1, 9), f"no chunk took the slot of {url}")
    rows = page.locator('.item[data-state="done"]')
    await expect(rows).to_have_count(2, timeout=WAIT)
    ids = {await upload_id(page, f): f.name for f in (first, second)}
    assert [ids[u] for u in sent] == ["first.bin"] * 5 + ["second.bin"] * 4  # the oldest file first
    assert flying["most"] == 3
    for f in (first, second):
        assert await content(server, await upload_id(page, f)) == f.read_bytes()


# -- ui.sha256_max_size ----------------------------------------------------------------------
LIMIT = 3 * CHUNK + 7


@pytest.mark.slow
@pytest.mark.parametrize("settings_env,hashed", [
    ({"VEZASTREAM_UI__SHA256_MAX_SIZE": str(LIMIT)}, {"tiny.bin", "at-limit.bin"}),
    ({"VEZASTREAM_UI__SHA256_MAX_SIZE": "0"}, set()),
], ids=["limit", "zero-never"])
@in_browser
async def test_files_up_to_sha256_max_size_declare_their_sha256_at_creation(page, server, tmp_path, hashed):
    files = [make_file(tmp_path, "tiny.bin", 10), make_file(tmp_path, "at-limit.bin", LIMIT),
             make_file(tmp_path, "over-limit.bin", LIMIT + 1)]
    created: dict[str, dict] = {}
    page.on("request", lambda r: created.update({r.post_data_json["filename"]: r.post_data_json})
            if r.method == "POST" and r.url.endswith("/v1/uploads") else None)
    await page.set_input_files("#picker", [str(f) for f in files])
    await expect(page.locator('.item[data-state="done"]')).to_have_count(3, timeout=WAIT)
    for f in files:
        if f.name in hashed:
            assert created[f.name].get("sha256") == hashlib.sha256(f.read_bytes()).hexdigest(), f.name
        else:
            assert "sha256" not in created[f.name], f.name
        assert await content(server, await upload_id(page, f)) == f.read_bytes()


@in_browser
@pytest.mark.slow
@pytest.mark.parametrize("settings_env", [{"VEZASTREAM_UI__SHA256_MAX_SIZE": str(LIMIT)}])
async def test_outside_a_secure_context_nothing_is_hashed_and_files_still_arrive(server, tmp_path, settings_env):
    """ui.md: hashing needs a secure context (https, or http on localhost/127.0.0.1); elsewhere nothing
    is hashed. The page is opened as http://insecure.test:<port>/, a name Chromium maps to 127.0.0.1
    (so no traffic leaves the machine) and which is no secure context."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM),
                                           args=["--host-resolver-rules=MAP insecure.test 127.0.0.1"])
        try:
            page = await (await chromium.new_context()).new_page()
            page.set_default_timeout(WAIT)
            await page.goto(f"http://insecure.test:{server.port}/")
            assert await page.evaluate("window.isSecureContext") is False
            f = make_file(tmp_path, "tiny.bin", 10)
            created: list[dict] = []
            page.on("request", lambda r: created.append(r.post_data_json)
                    if r.method == "POST" and r.url.endswith("/v1/uploads") else None)
            await page.set_input_files("#picker", [str(f)])
            await expect(page.locator('.item[data-state="done"]')).to_have_count(1, timeout=WAIT)
            assert len(created) == 1 and "sha256" not in created[0], created
            assert await content(server, await upload_id(page, f)) == f.read_bytes()
        finally:
            await chromium.close()


@in_browser
@pytest.mark.slow
async def test_a_row_shows_the_rate_and_the_time_left_while_it_uploads(page, server, tmp_path):
    """ui.md: each file's row shows its progress in bytes, its rate and the time left. At about 384 KiB/s
    (Chromium's own throttle) a 2 MiB file shows a rate near that and a time left that shrinks."""
    f = make_file(tmp_path, "slow.bin", 2 * 1024 * 1024)
    await throttle(page, 384 * 1024)
    await page.set_input_files("#picker", str(f))
    detail = page.locator(f"{item(f)} .detail")
    shown = re.compile(r"^([0-9.]+) (B|KiB|MiB) of 2\.0 MiB · ([0-9.]+) (KiB|MiB)/s · ([0-9]+) s left$")
    seen: list[tuple[float, float]] = []  # (rate in KiB/s, seconds left)
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        match = shown.match(await detail.text_content() or "")
        if match and float(match.group(1)) > 0:
            rate = float(match.group(3)) * (1024 if match.group(4) == "MiB" else 1)
            if not seen or int(match.group(5)) < seen[-1][1]:
                seen.append((rate, int(match.group(5))))
        await asyncio.sleep(0.2)
    assert len(seen) == 2 and all(128 <= rate <= 2048 for rate, _ in seen), seen
    await expect(page.locator(f'{item(f)}[data-state="done"]')).to_have_count(1, timeout=30_000)


# -- Discard ---------------------------------------------------------------------------------
@in_browser
@pytest.mark.slow
async def test_discard_deletes_an_interrupted_upload_on_the_server(page, server, tmp_path):
    f = make_file(tmp_path, "interrupted.bin", 3 * 1024 * 1024)
    uid = await start_slowly(page, server, f, 1)
    await page.reload()
    row = page.locator(item(f))
    await expect(row).to_have_attribute("data-state", "waiting", timeout=WAIT)
    await expect(row.locator(".state")).to_have_text("interrupted")
    discard = row.locator(".cancel")
    await expect(discard).to_have_text("Discard")
    await discard.click()
    await expect(row).to_have_count(0, timeout=WAIT)
    deadline = time.monotonic() + 10
    while (await state(server, uid))[0] != 404:
        assert time.monotonic() < deadline, "the upload was not deleted"
        await asyncio.sleep(0.05)
    assert await page.evaluate("localStorage.getItem('vezastream.uploads')") == "{}"
    await page.reload()
    await page.wait_for_load_state("load")
    await asyncio.sleep(0.3)
    await expect(page.locator(".item")).to_have_count(0)  # no longer listed as interrupted


# -- headers of the page ---------------------------------------------------------------------
async def test_the_page_is_sent_no_cache_and_may_connect_only_to_its_server(make_client, make_settings):
    client = await make_client(make_settings())
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-cache"
    policy = {d.split()[0]: d.split()[1:] for d in resp.headers["Content-Security-Policy"].split(";") if d.strip()}
    assert policy["connect-src"] == ["'self'"]
    assert policy["default-src"] == ["'none'"] and policy["style-src"] == ["'self'"]
