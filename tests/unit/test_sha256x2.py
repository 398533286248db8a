"""The C module's SHA-256 (staging/sha256x2.c): the same digests as hashlib, two of them in one pass."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vezastream.staging import WRITE_BUFFER, ChunkStaging
from vezastream.staging import digests

from engine_parts import staging  # noqa: F401  (fixture)
from helpers import random_bytes
from test_memory import CountingExecutor, GreedyBody


def cpu_has_sha() -> bool:
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return "sha_ni" in flags.split()


def test_the_module_is_built_and_used_on_a_cpu_with_sha_instructions():
    """Installing the project builds it: a failed build would only show as a slower native door."""
    if not cpu_has_sha():
        pytest.skip("this CPU has no SHA instructions: hashlib is used, as it should be")
    assert digests._Sha256x2 is not None
    assert type(digests.new_sha256()) is digests._Sha256x2
    assert digests.Tee(digests.new_sha256(), digests.new_sha256()).paired


def test_without_the_module_hashlib_does_the_work(monkeypatch):
    """Where it was not built (or the CPU lacks SHA instructions), a Tee feeds two hashlib digests in turn."""
    monkeypatch.setattr(digests, "_Sha256x2", None)
    first, second = digests.new_sha256(), digests.new_sha256()
    assert type(first) is type(hashlib.sha256())
    second.update(b"before ")
    tee = digests.Tee(first, second)
    assert not tee.paired
    tee.update(b"bytes")
    assert (first.hexdigest(), second.hexdigest()) == (hashlib.sha256(b"bytes").hexdigest(),
                                                      hashlib.sha256(b"before bytes").hexdigest())


needs_module = pytest.mark.skipif(digests._Sha256x2 is None, reason="the C module is not usable here")
Sha256 = digests._Sha256x2


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@needs_module
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_any_bytes_in_any_pieces_give_hashlibs_digest(data, cuts):
    ours = Sha256()
    for piece in pieces(data, cuts):
        ours.update(memoryview(piece))
    assert ours.hexdigest() == hashlib.sha256(data).hexdigest()
    assert ours.digest() == hashlib.sha256(data).digest()
    assert ours.hexdigest() == hashlib.sha256(data).hexdigest()  # taking a digest left the state as it was


@needs_module
@settings(max_examples=300, deadline=None)
@given(first=st.binary(max_size=300), second=st.binary(max_size=300), data=st.binary(max_size=9000),
       cuts=st.lists(st.integers(0, 9000), max_size=6))
def test_two_digests_advanced_together_equal_each_advanced_alone(first, second, data, cuts):
    """Whatever each had hashed before (so their unfinished blocks differ), both come out right."""
    a, b = Sha256(first), Sha256()
    b.update(second)
    for piece in pieces(data, cuts):
        digests.Tee(a, b).update(piece)
    assert a.hexdigest() == hashlib.sha256(first + data).hexdigest()
    assert b.hexdigest() == hashlib.sha256(second + data).hexdigest()


@needs_module
def test_large_pieces_past_the_gil_threshold_and_a_copy_that_goes_its_own_way():
    data = random_bytes(3 * 1024 * 1024 + 17)
    running = Sha256(data[:1000])
    fork = running.copy()
    own = Sha256()
    digests.Tee(own, running).update(data[1000:])
    fork.update(b"other")
    assert running.hexdigest() == hashlib.sha256(data).hexdigest()
    assert own.hexdigest() == hashlib.sha256(data[1000:]).hexdigest()
    assert fork.hexdigest() == hashlib.sha256(data[:1000] + b"other").hexdigest()
    assert (own.name, own.digest_size, own.block_size) == ("sha256", 32, 64)


@needs_module
def test_a_digest_being_updated_in_one_thread_refuses_another():
    """Never a torn state: a second update while the first runs without the GIL is an error."""
    big = bytes(256 * 1024 * 1024)  # about 0.15 s of hashing
    ours, started, outcome = Sha256(), threading.Event(), []

    def long_update() -> None:
        started.set()
        ours.update(big)
        outcome.append("done")
    thread = threading.Thread(target=long_update)
    thread.start()
    started.wait(5)
    with pytest.raises(RuntimeError, match="another thread"):
        for _ in range(200):  # until the update above has begun (bounded: 2 s)
            threading.Event().wait(0.01)
            ours.copy()
    thread.join(30)
    assert outcome == ["done"] and ours.hexdigest() == hashlib.sha256(big).hexdigest()


@needs_module
def test_update_pair_refuses_what_it_cannot_pair():
    with pytest.raises(TypeError):
        digests._update_pair(Sha256(), hashlib.sha256(), b"x")
    one = Sha256()
    with pytest.raises(ValueError):
        digests._update_pair(one, one, b"x")


@needs_module
async def test_a_native_chunks_two_digests_take_one_thread_trip_per_buffer_beside_its_write(staging: ChunkStaging):
    """A large buffer of a chunk after the first goes to two trips (its write, and both digests in one
    pass), not three (a thread per digest), and both digests are right."""
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    uid = "p" * 22
    before, data = random_bytes(1000), random_bytes(3 * WRITE_BUFFER + 5)
    running, own = Sha256(before), Sha256()
    body = GreedyBody(data, executor)
    staged = await staging.receive(uid, 2, body, limit=len(data), hasher=digests.Tee(own, running),
                                   final_for=lambda digest: staging.chunk_path(uid, 2, digest))
    assert staged.sha256 == hashlib.sha256(data).hexdigest() and staged.path.read_bytes() == data
    assert running.hexdigest() == hashlib.sha256(before + data).hexdigest()
    assert body.trips_at_read[:3] == [0, 2, 4]


@needs_module
@settings(max_examples=300, deadline=None)
@given(first=st.binary(max_size=300), second=st.binary(max_size=300),
       first_data=st.binary(max_size=9000), second_data=st.binary(max_size=9000))
def test_two_digests_of_different_bytes_in_one_pass_equal_each_alone(first, second, first_data, second_data):
    """update_two(): two uploads' bodies, of any lengths, after any unfinished blocks."""
    a, b = Sha256(first), Sha256(second)
    digests._update_two(a, b, first_data, memoryview(second_data))
    assert a.hexdigest() == hashlib.sha256(first + first_data).hexdigest()
    assert b.hexdigest() == hashlib.sha256(second + second_data).hexdigest()


@needs_module
def test_update_two_refuses_what_it_cannot_pair():
    with pytest.raises(TypeError):
        digests._update_two(Sha256(), hashlib.sha256(), b"x", b"y")
    one = Sha256()
    with pytest.raises(ValueError):
        digests._update_two(one, one, b"x", b"y")
    with pytest.raises(TypeError):
        digests._update_two(Sha256(), Sha256(), b"x", 5)


@needs_module
async def test_updates_queued_in_one_loop_turn_run_two_by_two_at_the_next():
    pairs = digests.LoopPairs()
    bodies = [random_bytes(1000 + 333 * i) for i in range(5)]
    hashers = [Sha256(b"before") for _ in bodies]
    for hasher, body in zip(hashers, bodies):
        pairs.update(hasher, body)
    assert hashers[0].hexdigest() == hashlib.sha256(b"before").hexdigest()  # not yet
    await asyncio.sleep(0)
    assert [h.hexdigest() for h in hashers] == [hashlib.sha256(b"before" + body).hexdigest() for body in bodies]
    assert (pairs.paired, pairs.alone) == (4, 1)


@needs_module
async def test_settle_runs_what_is_queued_and_one_digest_queued_twice_stays_in_order():
    pairs = digests.LoopPairs()
    one, other = Sha256(), Sha256()
    pairs.update(one, b"first ")
    pairs.update(other, b"other")
    pairs.update(one, b"second")
    pairs.settle()
    assert one.hexdigest() == hashlib.sha256(b"first second").hexdigest()
    assert other.hexdigest() == hashlib.sha256(b"other").hexdigest()
    await asyncio.sleep(0)  # the turn's own settle finds nothing left
    assert one.hexdigest() == hashlib.sha256(b"first second").hexdigest()


async def test_other_digests_are_updated_at_once():
    """hashlib's (no C module, or another algorithm), alone or two in a Tee."""
    pairs = digests.LoopPairs()
    plain, tee = hashlib.sha256(), digests.Tee(hashlib.sha256(), hashlib.sha256())
    pairs.update(plain, b"bytes")
    pairs.update(tee, b"bytes")
    assert plain.hexdigest() == tee.hexdigest() == tee.second.hexdigest() == hashlib.sha256(b"bytes").hexdigest()


@needs_module
async def test_tees_queued_in_one_turn_run_two_by_two_beside_the_single_digests():
    """A native chunk after the first feeds a Tee (its own digest and its upload's running one): two
    such chunks' four digests go in one pass; single digests pair among themselves."""
    pairs = digests.LoopPairs()
    bodies = [random_bytes(70_000 + 1_000 * i) for i in range(5)]
    tees = [digests.Tee(Sha256(), Sha256(b"earlier chunks")) for _ in range(3)]
    singles = [Sha256(b"before") for _ in range(2)]
    jobs = [pairs.update(hasher, body) for hasher, body in zip(tees + singles, bodies)]
    assert tees[0].second.hexdigest() == hashlib.sha256(b"earlier chunks").hexdigest()  # not yet
    await asyncio.sleep(0)
    for job in jobs:
        job.done()
    for tee, body in zip(tees, bodies):
        assert tee.hexdigest() == hashlib.sha256(body).hexdigest()
        assert tee.second.hexdigest() == hashlib.sha256(b"earlier chunks" + body).hexdigest()
    for single, body in zip(singles, bodies[3:]):
        assert single.hexdigest() == hashlib.sha256(b"before" + body).hexdigest()
    assert (pairs.paired, pairs.alone) == (4, 1)


@needs_module
async def test_a_digest_in_a_tee_and_queued_alone_too_stays_in_order():
    pairs = digests.LoopPairs()
    running = Sha256()
    pairs.update(digests.Tee(Sha256(), running), b"first ")
    pairs.update(digests.Tee(Sha256(), Sha256()), b"other")
    pairs.update(running, b"second")
    pairs.settle()
    assert running.hexdigest() == hashlib.sha256(b"first second").hexdigest()


@needs_module
async def test_an_update_that_fails_in_the_loops_turn_fails_its_own_request_only():
    """A failure at the next turn reaches the request that queued the update (``done()``), never a
    digest read as if it were fed; the update paired with it still runs."""
    pairs = digests.LoopPairs()
    good, bad = Sha256(b"before"), Sha256()
    good_job = pairs.update(good, b" bytes")
    bad_job = pairs.update(bad, 5)  # not bytes: update() refuses it
    await asyncio.sleep(0)
    good_job.done()
    assert good.hexdigest() == hashlib.sha256(b"before bytes").hexdigest()
    with pytest.raises(TypeError):
        bad_job.done()
    assert (pairs.paired, pairs.alone) == (0, 2)


@needs_module
@pytest.mark.parametrize("begun", [0, 5, 63, 64 + 17])
def test_two_digests_whose_blocks_are_begun_alike_share_one_schedule_and_stay_right(begun):
    """update_pair() over digests whose unfinished blocks are the same length works out each block's
    message schedule once for both (sha256x2.c, compress_same): each digest must still be its own."""
    data = random_bytes(3 * 1024 * 1024 + 11)
    a, b = Sha256(b"a" * begun), Sha256(b"b" * begun)
    digests._update_pair(a, b, data)
    assert a.hexdigest() == hashlib.sha256(b"a" * begun + data).hexdigest()
    assert b.hexdigest() == hashlib.sha256(b"b" * begun + data).hexdigest()


@needs_module
@settings(max_examples=300, deadline=None)
@given(first=st.binary(max_size=300), second=st.binary(max_size=300), alike=st.booleans(),
       data=st.binary(max_size=9000), other_data=st.binary(max_size=9000))
def test_two_pairs_of_digests_in_one_pass_equal_each_alone(first, second, alike, data, other_data):
    """update_two_pairs(): two bodies of any lengths, each for two digests, after unfinished blocks
    begun alike (one pass of four) or not (pair by pair)."""
    begun = (second + bytes(300))[:len(first)] if alike else second
    a, b, c, d = Sha256(first), Sha256(begun), Sha256(second), Sha256(first)
    digests._update_two_pairs(a, b, data, c, d, memoryview(other_data))
    assert a.hexdigest() == hashlib.sha256(first + data).hexdigest()
    assert b.hexdigest() == hashlib.sha256(begun + data).hexdigest()
    assert c.hexdigest() == hashlib.sha256(second + other_data).hexdigest()
    assert d.hexdigest() == hashlib.sha256(first + other_data).hexdigest()


@needs_module
@pytest.mark.parametrize("begun", [0, 5, 64 + 17])
def test_two_pairs_of_megabytes_past_the_gil_threshold_stay_right(begun):
    data, other = random_bytes(3 * 1024 * 1024 + 11), random_bytes(2 * 1024 * 1024 + 64 * 3)
    a, b, c, d = (Sha256(bytes([n]) * begun) for n in range(4))
    digests._update_two_pairs(a, b, data, c, d, other)
    for n, (hasher, body) in enumerate(((a, data), (b, data), (c, other), (d, other))):
        assert hasher.hexdigest() == hashlib.sha256(bytes([n]) * begun + body).hexdigest()


@needs_module
def test_update_two_pairs_refuses_what_it_cannot_pair():
    a, b, c = Sha256(), Sha256(), Sha256()
    with pytest.raises(TypeError):
        digests._update_two_pairs(a, b, b"x", c, hashlib.sha256(), b"y")
    with pytest.raises(ValueError):
        digests._update_two_pairs(a, b, b"x", c, a, b"y")
    with pytest.raises(ValueError):
        digests._update_two_pairs(a, a, b"x", b, c, b"y")
    with pytest.raises(TypeError):
        digests._update_two_pairs(a, b, b"x", c, Sha256(), 5)
    with pytest.raises(TypeError):
        digests._update_two_pairs(a, b, b"x", c)
    assert a.hexdigest() == b.hexdigest() == c.hexdigest() == hashlib.sha256().hexdigest()  # none advanced
