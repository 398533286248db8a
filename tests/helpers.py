"""Helpers the tests share: the client-side ones (what a real client would do) live in the kit."""

from __future__ import annotations

import os
from pathlib import Path

from vezastream.testing import content, create, put_chunk, random_bytes, sha256, split, upload

__all__ = ["content", "create", "held_open", "put_chunk", "random_bytes", "sha256", "split", "upload"]


def held_open(folder: Path) -> list[str]:
    """Files under ``folder`` that this process holds open (test servers run in it)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (or the listing's own descriptor)
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held
