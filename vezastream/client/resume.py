"""The small file that lets an interrupted upload resume.

One JSON file per (server, local file) in a state folder (by default
``$XDG_STATE_HOME/vezastream/uploads``, else ``~/.local/state/...``): the
upload id, the server URL, the file's path, size and modification time, the
chunk size and the file's SHA-256. It is written (atomically) as soon as the
server has created the upload and removed once the upload is completed and
verified. A file whose size or modification time changed is uploaded afresh;
one that keeps both is hashed again by the resume and compared with the
state's SHA-256 (see :mod:`.upload`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "vezastream" / "uploads"


@dataclass(frozen=True)
class FileStamp:
    """What identifies the local file's content cheaply (like rsync: size and mtime)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class ResumeState:
    url: str
    upload_id: str
    stamp: FileStamp
    chunk_size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ResumeState:
        stamp = raw["stamp"]
        return cls(str(raw["url"]), str(raw["upload_id"]),
                   FileStamp(str(stamp["path"]), int(stamp["size"]), int(stamp["mtime_ns"])),
                   int(raw["chunk_size"]), str(raw["sha256"]))


class ResumeStore:
    """Where the resume states live: one file per (server URL, absolute path)."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or default_state_dir()

    def _file(self, url: str, path: str) -> Path:
        # (a path's bytes that are not UTF-8 are held as lone surrogates: encoded back as those bytes)
        key = hashlib.sha256(f"{url}\n{path}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.folder / f"{key}.json"

    def load(self, url: str, stamp: FileStamp) -> ResumeState | None:
        """The state of an earlier attempt at this file, if the file is unchanged since."""
        try:
            state = ResumeState.from_json(json.loads(self._file(url, stamp.path).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none, unreadable or from another version: start afresh
        return state if state.stamp == stamp and state.url == url else None

    def save(self, state: ResumeState) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self._file(state.url, state.stamp.path)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(state.to_json()))
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def remove(self, url: str, stamp: FileStamp) -> None:
        self._file(url, stamp.path).unlink(missing_ok=True)
