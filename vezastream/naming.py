"""How stored objects are named: key templates, safe keys and segments, the download name.

Part of the public plugin API (re-exported by :mod:`vezastream`): a sink
renders its ``key_template`` with :class:`KeyTemplate`, a
``vezastream_object_key`` hook's answer goes through :func:`safe_key`, and
:func:`content_disposition` names a download (a sink's presigned URL, the
server's own content responses).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from . import errors
from .config import ConfigError
from .models import UploadSpec


def content_disposition(filename: str) -> str:
    """A ``Content-Disposition: attachment`` value naming ``filename`` (ASCII and RFC 5987 forms)."""
    ascii_name = re.sub(r'[^A-Za-z0-9._ -]', "_", filename) or "file"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_PLACEHOLDER = re.compile(r"{([^{}]*)}")
#: The placeholders of a ``key_template`` (``{yyyy}``, ``{mm}``, ``{dd}``: the upload's creation date, UTC).
KEY_PLACEHOLDERS = ("upload_id", "user", "yyyy", "mm", "dd", "filename")


def safe_segment(value: str, empty: str = "_") -> str:
    """One path segment from any text: letters, digits and ``._-`` survive, no leading dot, at most 120."""
    return _KEY_UNSAFE.sub("_", value).lstrip(".")[:120] or empty


def safe_key(key: str) -> str:
    """A relative object key from any text (a plugin's choice): each ``/``-separated segment made safe.

    Empty segments are dropped, so the result never starts with ``/``, never holds ``..`` as a segment
    and never escapes the sink's root; raises ``errors.Invalid`` when nothing is left.
    """
    segments = [safe_segment(s) for s in key.split("/") if s.strip()]
    if not segments or len(key) > 1024:
        raise errors.Invalid(f"object key {key[:80]!r} is empty or longer than 1024 characters")
    return "/".join(segments)


@dataclass(frozen=True)
class KeyTemplate:
    """A sink's ``key_template`` (e.g. ``{user}/{yyyy}/{mm}/{filename}``), checked once at start-up.

    Each placeholder's value goes through :func:`safe_segment`, and the literal text may not hold
    ``..``, ``\\`` or a leading ``/``: a rendered key stays under the sink's root.
    """

    text: str

    @classmethod
    def parse(cls, text: Any, where: str) -> "KeyTemplate":
        if not isinstance(text, str) or not text.strip("/"):
            raise ConfigError(f"{where}: expected a non-empty template such as \"{{upload_id}}/{{filename}}\"")
        for name in _PLACEHOLDER.findall(text):
            if name not in KEY_PLACEHOLDERS:
                raise ConfigError(f"{where}: unknown placeholder {{{name}}} (known: "
                                  + ", ".join(f"{{{n}}}" for n in KEY_PLACEHOLDERS) + ")")
        literal = _PLACEHOLDER.sub("x", text)
        if "{" in literal or "}" in literal or literal.startswith("/") or "\\" in literal or any(
                s in ("", ".", "..") for s in literal.split("/")):
            raise ConfigError(f"{where}: a relative key: no leading /, no empty, . or .. segment, no \\ or stray brace")
        return cls(text)

    def unique(self, spec: UploadSpec) -> bool:
        """Whether ``spec``'s key is its own alone: the template names ``{upload_id}`` and no plugin chose it."""
        return spec.key is None and "{upload_id}" in self.text

    def render(self, spec: UploadSpec) -> str:
        """The key of ``spec``'s object: the one a plugin chose, else every placeholder filled with a safe segment."""
        if spec.key is not None:
            return spec.key
        when = time.gmtime(spec.created_at)
        values = {"upload_id": spec.id, "user": spec.owner, "yyyy": f"{when.tm_year:04d}", "mm": f"{when.tm_mon:02d}",
                  "dd": f"{when.tm_mday:02d}", "filename": spec.filename}
        return _PLACEHOLDER.sub(lambda m: safe_segment(values[m.group(1)], "file" if m.group(1) == "filename" else "_"),
                                self.text)
