"""A final (concatenated) tus upload POSTed again is the same upload (found by tests/drills/test_drill_nodes.py).

Behind a load balancer a client sends the final POST again when its answer is lost: the node died
after completing it, or a Redis failover answered 503 after the object was written. The second POST
used to find the partials consumed (400) or, when they were still there, to complete a second final
upload: a second object in the sink that no client knows. Now a final upload's id is derived from
its owner and its parts, so the second POST finds the first one and answers as it would have.
"""

from __future__ import annotations

import asyncio

from helpers import content, random_bytes
from vezastream import hookimpl
from vezastream.engine.layouts.append import final_upload_id
from vezastream.http.app import engine_key
from tus_helpers import TUS, tus_create, tus_patch, upload_path


async def partials(client, *blobs: bytes) -> list[str]:
    paths = []
    for blob in blobs:
        path = upload_path(await tus_create(client, len(blob), headers={"Upload-Concat": "partial"}))
        await tus_patch(client, path, 0, blob)
        paths.append(path)
    return paths


async def test_a_final_upload_posted_again_is_the_same_upload(client):
    a, b = random_bytes(10_000), random_bytes(20_000)
    final = {**TUS, "Upload-Concat": "final;" + " ".join(await partials(client, a, b))}
    first = await client.post("/files/", headers=final)
    assert first.status == 201, await first.text()
    again = await client.post("/files/", headers=final)
    assert again.status == 201, await again.text()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Upload-Offset"] == str(len(a + b))
    assert await content(client, upload_path(first).rsplit("/", 1)[1]) == (200, a + b)


async def test_other_parts_or_another_order_make_another_final_upload(client):
    a, b = random_bytes(1_000), random_bytes(2_000)
    one, two = await partials(client, a, b)
    three, four = await partials(client, a, b)
    first = await tus_create(client, None, filename=None, headers={"Upload-Concat": f"final;{one} {two}"})
    other = await tus_create(client, None, filename=None, headers={"Upload-Concat": f"final;{four} {three}"})
    assert upload_path(first) != upload_path(other)
    assert await content(client, upload_path(other).rsplit("/", 1)[1]) == (200, b + a)



class BothTriesPastTheCheck:
    """A validation hook that lets two tries of one final upload both pass the "made already?" check,
    then holds the second until the first has completed: the interleaving in which the second try's
    creation used to overwrite the completed record."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.second_arrived = asyncio.Event()
        self.first_done = asyncio.Event()

    @hookimpl
    async def vezastream_validate_upload(self, upload):
        if upload.protocol_data.get("concat") != "final":
            return None
        if upload.id in self.seen:  # the second try
            self.second_arrived.set()
            await asyncio.wait_for(self.first_done.wait(), 10)
        else:
            self.seen.add(upload.id)
            await asyncio.wait_for(self.second_arrived.wait(), 10)
        return None


async def test_a_final_upload_posted_twice_at_once_is_one_upload(make_client, make_settings, tmp_path):
    """Both first tries at once (a client's timeout fired while the first was still running), the second
    creating its record after the first completed: it used to overwrite the completed record and
    complete a second copy of the same bytes."""
    files = tmp_path / "files"
    hook = BothTriesPastTheCheck()
    client = await make_client(make_settings(**{"sinks.local.directory": str(files)}), plugins=[hook])
    a, b = random_bytes(300_000), random_bytes(200_000)
    final = {**TUS, "Upload-Concat": "final;" + " ".join(await partials(client, a, b))}

    async def first():
        try:
            return await client.post("/files/", headers=final)
        finally:
            hook.first_done.set()

    async def second():
        while not hook.seen:
            await asyncio.sleep(0.005)
        return await client.post("/files/", headers=final)

    one, two = await asyncio.wait_for(asyncio.gather(first(), second()), 30)
    assert (one.status, two.status) == (201, 201), (await one.text(), await two.text())
    assert one.headers["Location"] == two.headers["Location"]
    assert await content(client, upload_path(one).rsplit("/", 1)[1]) == (200, a + b)
    stored = [p for p in files.rglob("*") if p.is_file()]
    assert len(stored) == 1, stored  # one object, not a second copy


async def test_a_final_upload_its_process_died_before_completing_completes_on_head(client):
    """A node killed between recording a final upload and completing it (tests/drills/test_drill_killed_mid_request.py
    met it) left it pending: its HEAD answered 200 with Upload-Offset 0, and nothing but the same POST sent again
    would ever complete it. Its HEAD now completes it, as it does a plain upload whose completion failed."""
    a, b = random_bytes(10_000), random_bytes(20_000)
    parts = await partials(client, a, b)
    appends = client.server.app[engine_key].appends
    final_id = final_upload_id("anonymous", [p.rsplit("/", 1)[1] for p in parts])
    await appends._create_spec("anonymous", "", len(a + b), {}, "tus", {"concat": "final", "parts": [
        p.rsplit("/", 1)[1] for p in parts]}, upload_id=final_id)  # what the killed POST left
    head = await client.head(f"/files/{final_id}", headers=TUS)
    assert head.status == 200 and head.headers["Upload-Offset"] == str(len(a + b))
    assert await content(client, final_id) == (200, a + b)
    for path in parts:  # the parts' bytes are in the final upload's object now
        assert (await client.head(path, headers=TUS)).status == 404
