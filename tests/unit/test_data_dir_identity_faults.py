"""A data_dir's identity and node files (engine/nodes.py) on the filesystems and leftovers operators have."""

from __future__ import annotations

import errno
import os

import pytest

from vezastream.config import ConfigError
from vezastream.engine import nodes


def test_an_empty_identity_file_refuses_to_start_and_says_what_to_do(make_settings):
    settings = make_settings(**{"storage.sink": "local"})  # a node that must share its data_dir
    settings.storage.data_dir.mkdir(parents=True)
    (settings.storage.data_dir / nodes.IDENTITY_FILE).write_text("\n")  # e.g. a disk that filled while it was written
    with pytest.raises(ConfigError) as raised:
        nodes.beat_value(settings)  # what start-up asks (http/app.py), before it beats
    assert str(raised.value) == "storage.data_dir: .vezastream-dir in it is empty; delete it and start again"


def test_without_hard_links_the_identity_is_still_written_once(tmp_path, monkeypatch):
    def no_links(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")  # e.g. a FAT or some FUSE file system

    monkeypatch.setattr(nodes.os, "link", no_links)
    data = tmp_path / "data"
    first = nodes.dir_identity(data)
    assert len(first) == 32 and nodes.dir_identity(data) == first
    assert (data / nodes.IDENTITY_FILE).read_text() == first
    assert [p.name for p in data.iterdir()] == [nodes.IDENTITY_FILE]  # no draft left behind


def test_a_node_file_left_unnamed_is_not_taken_for_a_departed_node(tmp_path):
    folder = tmp_path / "nodes"
    folder.mkdir()
    (folder / ".a1b2c3d4e5f6a7b8").write_bytes(b"")  # a process killed between locking its file and naming it
    fd = nodes.hold(folder, "0123456789abcdef")
    try:
        assert nodes.departed(folder) == []
    finally:
        nodes.release(folder, "0123456789abcdef", fd)
    assert sorted(os.listdir(folder)) == [".a1b2c3d4e5f6a7b8"]
