"""The clients' side of the Redis fault drills (tests/drills/test_drill_redis_*.py): native and tus
uploads that retry what the server refused, as real clients do, and count every answer that was not
a success."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter

import aiohttp

from helpers import sha256, split

NATIVE, TUS_UPLOADS, PIECES, PIECE = 4, 4, 40, 32 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


class Drill:
    """The clients' side: what was acknowledged, and every answer that was not."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: Counter[int] = Counter()
        self.acked_chunks: set[tuple[str, int]] = set()  # (upload, chunk) answered 201
        self.acked_offsets: dict[str, int] = {}  # tus upload -> highest offset answered 204
        self.not_problem_json = 0
        self.problems: Counter[str] = Counter()  # the problem types of the 5xx answers
        self.hung_answers: list[float] = []  # seconds to each 503 answer to a chunk PUT or a PATCH

    async def answer(self, resp: aiohttp.ClientResponse, asked: float | None = None) -> None:
        """Count a non-success answer, check its form, and wait as it asks (bounded)."""
        self.answers[resp.status] += 1
        if asked is not None and resp.status == 503:
            self.hung_answers.append(time.monotonic() - asked)
        if resp.status >= 500:
            if resp.content_type != "application/problem+json" or "Retry-After" not in resp.headers:
                self.not_problem_json += 1
            elif resp.method != "HEAD":  # a HEAD's answer has no body
                self.problems[(await resp.json())["type"].rsplit("/", 1)[1]] += 1
            await asyncio.sleep(min(float(resp.headers.get("Retry-After", 1)), 0.5))
        else:
            await asyncio.sleep(0.1)

    async def native(self, s: aiohttp.ClientSession, data: bytes) -> str:
        async with s.post("/v1/uploads", json={"filename": "n.bin", "total_size": len(data),
                                               "chunk_size": PIECE}) as r:
            assert r.status == 201
            uid = (await r.json())["upload_id"]
        for n, piece in enumerate(split(data, PIECE), 1):
            while True:
                asked = time.monotonic()
                async with s.put(f"/v1/uploads/{uid}/chunks/{n}", data=piece) as r:
                    if r.status in (200, 201):
                        self.acked_chunks.add((uid, n))
                        break
                    await self.answer(r, asked)
        while True:
            async with s.post(f"/v1/uploads/{uid}/complete") as r:
                if r.status == 200:
                    assert (await r.json())["sha256"] == sha256(data)
                    return f"/v1/uploads/{uid}/content"
                await self.answer(r)

    async def tus(self, s: aiohttp.ClientSession, data: bytes) -> str:
        meta = "filename " + base64.b64encode(b"t.bin").decode()
        async with s.post("/files/", headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": meta}) as r:
            assert r.status == 201
            path = "/files/" + r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
        offset = 0
        while offset < len(data):
            asked = time.monotonic()
            async with s.patch(path, data=data[offset:offset + PIECE],
                               headers={**TUS, "Upload-Offset": str(offset),
                                        "Content-Type": "application/offset+octet-stream"}) as r:
                if r.status == 204:
                    offset = int(r.headers["Upload-Offset"])
                    self.acked_offsets[path] = offset
                    continue
                await self.answer(r, asked)
            offset = await self.tus_offset(s, path)  # as a tus client resumes: ask where it stands
        return path

    async def tus_offset(self, s: aiohttp.ClientSession, path: str) -> int:
        while True:
            async with s.head(path, headers=TUS) as r:
                if r.status == 200:
                    return int(r.headers["Upload-Offset"])
                await self.answer(r)

    async def a_third_sent(self, s: aiohttp.ClientSession, natives: list[bytes], tuses: list[bytes]
                           ) -> list[asyncio.Task[str]]:
        """Start the uploads; return their tasks once a third of their pieces are acknowledged."""
        tasks = [asyncio.create_task(self.native(s, d)) for d in natives]
        tasks += [asyncio.create_task(self.tus(s, d)) for d in tuses]
        total = (len(natives) + len(tuses)) * PIECES
        deadline = time.monotonic() + 30
        while len(self.acked_chunks) + sum(self.acked_offsets.values()) // PIECE < total // 3:
            assert time.monotonic() < deadline and not any(t.done() for t in tasks)
            await asyncio.sleep(0.01)
        return tasks

    async def lost(self, probe: aiohttp.ClientSession, chunks: set[tuple[str, int]], offsets: dict[str, int]) -> int:
        """Of ``chunks`` and ``offsets`` (acknowledged before the fault), how many the server lacks now."""
        native_state: dict[str, list[int]] = {}
        for uid in {uid for uid, _ in chunks}:
            async with probe.get(f"/v1/uploads/{uid}") as r:
                assert r.status == 200
                native_state[uid] = (await r.json())["chunks_received"]
        tus_offsets = {path: await self.tus_offset(probe, path) for path in offsets}
        missing = sum(1 for uid, n in chunks if n not in native_state.get(uid, []))
        return missing + sum(1 for path, acked in offsets.items() if tus_offsets.get(path, 0) < acked)


async def identical(s: aiohttp.ClientSession, paths: list[str], datas: list[bytes]) -> int:
    """How many of the uploads read back equal to what was sent."""
    same = 0
    for path, data in zip(paths, datas):
        async with s.get(path) as r:
            same += r.status == 200 and await r.read() == data
    return same


async def deep_status(s: aiohttp.ClientSession) -> int:
    try:
        async with s.get("/v1/health/deep") as r:
            return r.status
    except aiohttp.ClientError:
        return 0
