"""Object keys from ``key_template`` on both sinks: where objects land, and collisions refused (409 key-exists)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from helpers import create, put_chunk, random_bytes, upload
from vezastream.testing import send_chunks
from s3_servers import PREFIX, object_keys
from tus_helpers import TUS, b64, tus_create, tus_patch, upload_path

from vezastream import UploadSpec, hookimpl
from vezastream.config import ConfigError
from vezastream.errors import KeyExists
from vezastream.plugins import make_plugin_manager
from vezastream.testing import sink_of
from vezastream_local import make_local_sink
from vezastream_s3.settings import parse_settings

MiB = 1024 * 1024


SPEC = UploadSpec(id="x" * 22, owner="anonymous", filename="f", total_size=9, chunk_size=9, total_chunks=1,
                  created_at=0.0)


async def one_block(data: bytes):
    yield data


def today() -> str:
    return time.strftime("%Y/%m/%d", time.gmtime())


async def refused(client, data: bytes, chunk_size: int, filename: str, **body) -> str:
    """Upload ``data`` whose key is taken: complete answers 409 key-exists and the upload stays pending."""
    state = await create(client, total_size=len(data), chunk_size=chunk_size, filename=filename, **body)
    uid = state["upload_id"]
    await send_chunks(client, uid, data, chunk_size, 2)
    resp = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await resp.json(content_type=None)
    assert resp.status == 409 and problem["type"].endswith("key-exists"), problem
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"
    return uid


# -- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize("template, problem", [
    ("{user}/{nope}", "unknown placeholder {nope}"),
    ("../{upload_id}", "relative key"),
    ("/abs/{upload_id}", "relative key"),
    ("a//{upload_id}", "relative key"),
    ("a\\{upload_id}", "relative key"),
    ("{upload_id", "relative key"),
    ("", "non-empty"),
])
def test_bad_templates_are_config_errors(settings, template, problem):
    with pytest.raises(ConfigError, match=f"sinks.local.key_template: .*{problem}"):
        make_local_sink({"key_template": template}, settings)
    with pytest.raises(ConfigError, match=f"sinks.s3.key_template: .*{problem}"):
        parse_settings({"bucket": "ok-bucket", "key_template": template})


# -- local sink ---------------------------------------------------------------------------------
async def test_local_default_layout_is_unchanged(make_client, make_settings):
    settings = make_settings()
    client = await make_client(settings)
    result = await upload(client, b"same as ever", chunk_size=5, filename="a b.txt")
    assert (settings.storage.data_dir / "files" / result["upload_id"] / "a_b.txt").read_bytes() == b"same as ever"


async def test_local_templated_key_lands_and_is_served(make_client, make_settings):
    settings = make_settings(**{"sinks.local": {"key_template": "{user}/{yyyy}/{mm}/{dd}/{filename}"}})
    client = await make_client(settings)
    data = random_bytes(3000)
    result = await upload(client, data, chunk_size=1000, filename="../../etc/report.pdf")
    path = settings.storage.data_dir / "files" / "anonymous" / today() / "_.._etc_report.pdf"
    assert path.read_bytes() == data
    resp = await client.get(f"/v1/uploads/{result['upload_id']}/content")
    assert await resp.read() == data


async def test_local_collision_is_409_and_keeps_the_first(make_client, make_settings):
    settings = make_settings(**{"sinks.local": {"key_template": "shared/{filename}"}})
    client = await make_client(settings)
    first = await upload(client, b"first", chunk_size=5, filename="x.bin")
    second = await refused(client, b"second!", 4, "x.bin")
    path = settings.storage.data_dir / "files" / "shared" / "x.bin"
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]  # no temporary file left
    assert (await client.delete(f"/v1/uploads/{second}")).status == 204
    assert path.read_bytes() == b"first"
    # Deleting a templated upload removes its own file, not its neighbours.
    other = await upload(client, b"other", chunk_size=5, filename="y.bin")
    assert (await client.delete(f"/v1/uploads/{other['upload_id']}")).status == 204
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]
    assert (await client.get(f"/v1/uploads/{first['upload_id']}/content")).status == 200


async def test_a_changed_template_that_needs_a_folder_where_a_file_stands_fails_with_502(make_client,
                                                                                       make_settings):
    """docs/storage.md: {user} became {user}/{filename}, and <directory>/anonymous is a file of the old
    layout: the completion answers 502 sink-failed naming FileExistsError, the upload stays pending."""
    old = make_settings(**{"sinks.local": {"key_template": "{user}"}})
    client = await make_client(old)
    await upload(client, b"old layout", chunk_size=10, filename="a.bin")
    directory = old.storage.data_dir / "files"
    assert (directory / "anonymous").read_bytes() == b"old layout"
    await client.close()
    client = await make_client(make_settings(**{"storage.data_dir": str(old.storage.data_dir),
                                                "redis.key_prefix": old.redis.key_prefix,
                                                "sinks.local": {"key_template": "{user}/{filename}"}}))
    uid = (await create(client, total_size=3, chunk_size=3, filename="b.bin"))["upload_id"]
    await put_chunk(client, uid, 1, b"new")
    done = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await done.json()
    assert (done.status, problem["type"].rsplit("/", 1)[1]) == (502, "sink-failed"), problem
    assert "FileExistsError" in problem["detail"] and str(directory) not in str(problem), problem
    assert (await (await client.get(f"/v1/uploads/{uid}")).json())["status"] == "pending"
    assert (directory / "anonymous").read_bytes() == b"old layout"


async def test_a_shared_folder_stays_when_its_last_file_is_deleted(make_client, make_settings):
    """docs/storage.md: only the default layout's own folder goes with its upload; a shared one stays."""
    settings = make_settings(**{"sinks.local": {"key_template": "{yyyy}/{filename}"}})
    client = await make_client(settings)
    result = await upload(client, b"only one", chunk_size=8, filename="one.bin")
    folder = settings.storage.data_dir / "files" / today()[:4]
    assert [p.name for p in folder.iterdir()] == ["one.bin"]
    assert (await client.delete(f"/v1/uploads/{result['upload_id']}")).status == 204
    assert folder.is_dir() and list(folder.iterdir()) == []


async def test_local_collision_through_tus(make_client, make_settings):
    settings = make_settings(**{"sinks.local": {"key_template": "{filename}"}})
    client = await make_client(settings)
    native = await upload(client, b"native", chunk_size=6, filename="t.txt")
    path = upload_path(await tus_create(client, 3, filename="t.txt"))
    resp = await tus_patch(client, path, 0, b"tus", expect=409)
    assert (await resp.json(content_type=None))["type"].endswith("key-exists")
    assert (settings.storage.data_dir / "files" / "t.txt").read_bytes() == b"native"
    # Every later HEAD runs the completion again (docs/tus.md): 409, no offset, until the key is free.
    for _ in range(2):
        head = await client.head(path, headers=TUS)
        assert (head.status, "Upload-Offset" in head.headers) == (409, False)
    assert (await client.delete(f"/v1/uploads/{native['upload_id']}")).status == 204
    head = await client.head(path, headers=TUS)
    assert (head.status, head.headers.get("Upload-Offset")) == (200, "3")
    assert (settings.storage.data_dir / "files" / "t.txt").read_bytes() == b"tus"


# -- S3 sink (moto) -------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [MiB, 5 * MiB], ids=["staged", "direct"])
async def test_s3_templated_key_and_collision(make_client, sink_settings, s3, bucket, chunk_size):
    client = await make_client(sink_settings(key_template="{user}/{yyyy}/{mm}/{filename}", content="proxy"))
    data = random_bytes(chunk_size + 10)
    result = await upload(client, data, chunk_size=chunk_size, filename="clip.mp4")
    key = f"{PREFIX}anonymous/{today()[:7]}/clip.mp4"
    assert object_keys(s3, bucket) == [key]
    assert result["location"] == f"s3://{bucket}/{key}"
    uid = await refused(client, random_bytes(chunk_size + 20), chunk_size, "clip.mp4")
    body = await asyncio.to_thread(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert body == data
    assert (await client.delete(f"/v1/uploads/{uid}")).status == 204
    assert object_keys(s3, bucket) == [key]
    assert await (await client.get(f"/v1/uploads/{result['upload_id']}/content")).read() == data


async def test_s3_collision_with_a_foreign_object_and_an_empty_upload(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings(key_template="{filename}"))
    await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=PREFIX + "e.txt", Body=b"not ours")
    await refused(client, b"", 1, "e.txt")
    await refused(client, b"abc", 3, "e.txt")
    body = await asyncio.to_thread(lambda: s3.get_object(Bucket=bucket, Key=PREFIX + "e.txt")["Body"].read())
    assert body == b"not ours"


async def test_s3_templated_key_through_tus(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings(key_template="tus/{filename}"))
    path = upload_path(await tus_create(client, 4, headers={"Upload-Metadata": f"filename {b64('t.bin')}"},
                                        filename=None))
    await tus_patch(client, path, 0, b"data")
    assert object_keys(s3, bucket) == [PREFIX + "tus/t.bin"]


async def test_s3_complete_never_overwrites_even_past_the_check(make_client, sink_settings, s3, bucket):
    """An object landing between the HEAD check and the completion: If-None-Match refuses it."""
    client = await make_client(sink_settings(key_template="{filename}"))
    sink = sink_of(client)
    await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=PREFIX + "r.txt", Body=b"raced")
    with pytest.raises(KeyExists):
        await sink.finish(PREFIX + "r.txt", None, [], 0, guard="x" * 22)
    key, mpu = PREFIX + "r.txt", await sink.create_multipart(dataclasses.replace(SPEC, filename="r.txt"))
    parts = await sink._send_parts(key, mpu, one_block(b"new bytes"), 5 * MiB)
    with pytest.raises(KeyExists):
        await sink.finish(key, mpu, parts, 9, guard="x" * 22)
    body = await asyncio.to_thread(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert body == b"raced"


# -- a plugin chooses the key ---------------------------------------------------------------------
class AlbumKeys:
    """Keys ``<owner>/<album>/<filename>`` for uploads that name an album; the template for the others."""

    @hookimpl
    def vezastream_object_key(self, upload):
        album = upload.metadata.get("album")
        return f"{upload.owner}/{album}/{upload.filename}" if album is not None else None


async def test_hook_vezastream_object_key(make_client, make_settings):
    settings = make_settings(**{"sinks.local": {"key_template": "t/{upload_id}"}})
    client = await make_client(settings, plugins=[AlbumKeys()])
    files = settings.storage.data_dir / "files"
    await upload(client, b"one", chunk_size=3, filename="01.flac", metadata={"album": "../../Blue Train"})
    assert (files / "anonymous/_/_/Blue_Train/01.flac").read_bytes() == b"one"  # .. made safe
    other = await upload(client, b"two", chunk_size=3, filename="02.flac")
    assert (files / "t" / other["upload_id"]).read_bytes() == b"two"  # no album: the template
    await refused(client, b"again", 5, "01.flac", metadata={"album": "../../Blue Train"})
    assert (files / "anonymous/_/_/Blue_Train/01.flac").read_bytes() == b"one"


async def test_a_plugin_chooses_the_s3_key(make_client, sink_settings, s3, bucket):
    client = await make_client(sink_settings(content="proxy"), plugins=[AlbumKeys()])
    data = random_bytes(5 * MiB + 3)
    result = await upload(client, data, chunk_size=5 * MiB, filename="a.flac", metadata={"album": "x"})
    assert object_keys(s3, bucket) == [PREFIX + "anonymous/x/a.flac"]
    await refused(client, b"other", 5, "a.flac", metadata={"album": "x"})
    assert await (await client.get(f"/v1/uploads/{result['upload_id']}/content")).read() == data


def test_an_async_object_key_hook_stops_startup(make_settings):
    class Async:
        @hookimpl
        async def vezastream_object_key(self, upload):
            return None
    with pytest.raises(ConfigError, match="vezastream_object_key must be a plain function"):
        make_plugin_manager([Async()], load_entry_points=False, settings=make_settings())
