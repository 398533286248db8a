"""tus-js-client in Chromium, used as docs/tus.md's browser snippet uses it: a ``File`` from an
``<input type="file">`` of a page on another origin, uploaded to ``/files/`` whole, in chunks, in
parallel parts, with a bearer token, and resumed after a reload through ``findPreviousUploads``.

The page is served by a site of its own (another port: another origin), so every request goes
through the tus door's CORS as a web app's would. What the page uploaded is read back and compared
byte for byte.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from servers import free_port

from tests.api.test_ui import browser, in_browser, make_file, server, settings_env, throttle  # noqa: F401

TUS_JS = Path(__file__).resolve().parents[1] / "js" / "node_modules" / "tus-js-client" / "dist" / "tus.min.js"
APP = "<!doctype html><title>app</title><input type=file id=picker><script src=tus.min.js></script>"
MiB = 1024 * 1024

#: docs/tus.md's snippet: the file picked, its upload resumed if an earlier page left one unfinished.
#: Resolves with the upload's URL, or its error; ``window.started`` is the upload's URL once created.
START = """([endpoint, options]) => new Promise((resolve) => {
    const file = document.getElementById("picker").files[0];
    const upload = new tus.Upload(file, {
        endpoint, metadata: {filename: file.name, filetype: file.type}, ...options,
        onError: (err) => resolve({error: String(err)}),
        onSuccess: () => resolve({url: upload.url}),
        onAfterResponse: () => { window.started = upload.url },
    });
    upload.findPreviousUploads().then((previous) => {
        if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
        upload.start();
    });
})"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app_site():
    """A web app's site on a port of its own (another origin than the server's): a page with
    tus-js-client and a file input."""
    if not TUS_JS.exists():
        (pytest.fail if os.environ.get("CI") else pytest.skip)(  # as test_ui.py's browser
            f"{TUS_JS} is missing: scripts/test installs tests/js's packages (npm ci)")
    site = web.Application()
    async def page(_):
        return web.Response(text=APP, content_type="text/html")

    async def script(_):
        return web.FileResponse(TUS_JS)

    site.router.add_get("/", page)
    site.router.add_get("/tus.min.js", script)
    runner = web.AppRunner(site)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def app(browser, server, app_site):
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(60_000)
    await page.goto(app_site)
    assert await page.evaluate("typeof tus.Upload") == "function"
    yield page
    await context.close()


async def upload(page, server, path: Path, **options) -> dict:
    await page.set_input_files("#picker", str(path))
    return await page.evaluate(START, [server.url + "/files/", options])


async def read_back(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, str]:
    async with aiohttp.ClientSession(headers=headers) as s, s.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.read(), r.headers["Content-Type"]


def tus_requests(page) -> list[tuple[str, str, dict[str, str]]]:
    """(method, URL, headers) of every request the page sends to the tus door from now on."""
    sent: list[tuple[str, str, dict[str, str]]] = []
    page.on("request", lambda r: sent.append((r.method, r.url, r.headers)) if "/files/" in r.url else None)
    return sent


@in_browser
@pytest.mark.parametrize("options,patches", [({}, 1), ({"chunkSize": MiB}, 4), ({"parallelUploads": 4}, 4)],
                         ids=["whole", "chunks", "parallel"])
async def test_a_file_from_a_page_of_another_origin_arrives_identical(app, server, tmp_path, options, patches):
    """Whole, in 1 MiB PATCHes, or as 4 parallel parts joined by concatenation (whose parts are
    deleted once the final upload completes, so that the same file picked again starts over).
    ``filetype`` is the browser's ``File.type``, empty for a type it does not know: stored as
    ``application/octet-stream``."""
    path = make_file(tmp_path, "take.xyz", 3 * MiB + 12_345)
    sent = tus_requests(app)
    answer = await upload(app, server, path, **options)
    assert answer.get("url", "").startswith(server.url + "/files/"), answer
    assert await read_back(answer["url"]) == (path.read_bytes(), "application/octet-stream")
    assert [method for method, _, _ in sent].count("PATCH") == patches, sent
    if "parallelUploads" in options:
        parts = [url for method, url, headers in sent if method == "PATCH"]
        assert len(set(parts)) == 4 and answer["url"] not in parts
        async with aiohttp.ClientSession() as s:
            for part in parts:
                async with s.head(part, headers={"Tus-Resumable": "1.0.0"}) as r:
                    assert r.status == 404, part
        # Picked again, the same file starts over (its previous parts are gone), as docs/tus.md says.
        again = await upload(app, server, path, **options)
        assert again.get("url") not in (None, answer["url"]), again
        assert (await read_back(again["url"]))[0] == path.read_bytes()


@in_browser
async def test_a_file_with_a_newline_in_its_name_is_uploaded(app, server, tmp_path):
    """Linux allows a newline in a file's name, and tus-js-client sends File.name as it is: the creation
    was refused (400), and the file could not be uploaded. Now it is, named with U+FFFD there."""
    path = make_file(tmp_path, "two\nlines.xyz", 5000)
    answer = await upload(app, server, path)
    assert "url" in answer, answer
    assert (await read_back(answer["url"]))[0] == path.read_bytes()
    upload_id = answer["url"].rsplit("/", 1)[1]
    async with aiohttp.ClientSession() as s, s.get(f"{server.url}/v1/uploads/{upload_id}") as r:
        assert (await r.json())["filename"] == "two\ufffdlines.xyz"


@in_browser
@pytest.mark.parametrize("settings_env", [{"VEZASTREAM_AUTH__MODE": "token",
                                           "VEZASTREAM_TOKENS": "s3cret=alice,other=bob"}])
async def test_with_token_auth_the_snippets_header_is_sent_and_other_tokens_fail(app, server, tmp_path):
    """``headers: {Authorization: "Bearer <token>"}``: through the preflight, the upload is alice's
    (bob's token does not find it); a wrong token ends in ``onError`` with the server's 401."""
    path = make_file(tmp_path, "private.xyz", MiB + 1)
    wrong = await upload(app, server, path, headers={"Authorization": "Bearer guess"})
    assert "401" in wrong.get("error", ""), wrong
    answer = await upload(app, server, path, headers={"Authorization": "Bearer s3cret"})
    assert "url" in answer, answer
    bearer = {"Authorization": "Bearer s3cret"}
    assert (await read_back(answer["url"], bearer))[0] == path.read_bytes()
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer other"}) as s, s.get(answer["url"]) as r:
        assert r.status == 404  # not bob's


@in_browser
@pytest.mark.slow
async def test_after_a_reload_the_same_file_resumes_where_the_server_stopped(app, server, tmp_path):
    """A reload mid-upload aborts its PATCH; picked again, the same file is found among the page's
    previous uploads (tus-js-client keeps their URLs in localStorage) and resumed: the same upload
    URL, the first PATCH from the offset the server holds, the bytes identical."""
    path = make_file(tmp_path, "long.xyz", 4 * MiB)
    await throttle(app, MiB)
    await app.set_input_files("#picker", str(path))
    first = asyncio.ensure_future(app.evaluate(START, [server.url + "/files/", {"chunkSize": MiB // 2}]))
    url, held = await _held(app, server, at_least=MiB)
    await app.reload()
    with pytest.raises(Exception, match="context was destroyed|navigation"):  # the reload cut it off
        await first
    await throttle(app, -1)
    sent = tus_requests(app)
    answer = await upload(app, server, path, chunkSize=MiB // 2)
    assert answer.get("url") == url, answer
    assert [method for method, _, _ in sent][:2] == ["HEAD", "PATCH"], sent  # no new upload created
    assert int(next(h for m, _, h in sent if m == "PATCH")["upload-offset"]) >= held
    assert (await read_back(url))[0] == path.read_bytes()


async def _held(page, server, at_least: int, timeout: float = 30) -> tuple[str, int]:
    """The page's upload URL once the server holds ``at_least`` of its bytes, and how many it holds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            url = await page.evaluate("window.started || null")
            if url:
                async with s.head(url, headers={"Tus-Resumable": "1.0.0"}) as r:
                    offset = int(r.headers.get("Upload-Offset", 0))
                if offset >= at_least:
                    return url, offset
            await asyncio.sleep(0.05)
    raise TimeoutError(f"the server did not hold {at_least} bytes in {timeout} s")
