"""A data_dir's identity (engine/nodes.py): written once, the same for every process that reads it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from vezastream.engine import nodes


def test_one_identity_per_folder_whoever_writes_it_first(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        seen = set(pool.map(lambda _: nodes.dir_identity(tmp_path / "data"), range(32)))
    assert len(seen) == 1 and len(seen.pop()) == 32
    assert [p.name for p in (tmp_path / "data").iterdir()] == [nodes.IDENTITY_FILE]  # no draft left behind
    assert nodes.dir_identity(tmp_path / "other") != nodes.dir_identity(tmp_path / "data")
