"""Client-side helpers the tests share (what a real client would do); they live in the kit."""

from __future__ import annotations

from vezastream.testing import content, create, put_chunk, random_bytes, sha256, split, upload

__all__ = ["content", "create", "put_chunk", "random_bytes", "sha256", "split", "upload"]
