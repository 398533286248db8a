"""What the engine asks of a storage layout: one small interface, plus an optional one.

A *layout* is how an upload's bytes wait until completion, and how completion
hands them to the sink (tusd's ``DataStore`` is the model). The engine picks
one per upload (``UploadEngine.layout_for``, from ``spec.layout`` and
``spec.direct``) and dispatches to it; the layout calls back only what
:class:`~vezastream.engine.services.EngineServices` names.

- :class:`StorageLayout` (every layout): make a completion ready before the
  lease is taken (:meth:`~StorageLayout.ready`), assemble under the lease
  (:meth:`~StorageLayout.assemble`), and forget an upload this process keeps
  something of (:meth:`~StorageLayout.forget`).
- :class:`NumberedChunks` (optional): receive chunk ``n`` of a native upload.
  Without it an upload has no numbered chunks (the append layout: tus segments
  come through ``engine.appends`` instead).
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ...models import ChunkReceipt, ChunkRecord, Upload, UploadSpec
from ...sinks import Assembly, ChunkSource


@dataclass
class Assembling:
    """One completion attempt, as the engine and the upload's layout share it.

    The layout fills it in :meth:`StorageLayout.assemble`; the engine then checks
    ``size`` and ``sha256``, lets inspectors read ``source``, and commits (or, on
    a failure, discards) ``assembly``.
    """

    upload: Upload
    #: The registered chunks (segments: none, the layout reads its own).
    records: dict[int, ChunkRecord]
    #: The bytes as inspectors read them (and as a staged layout hands them to the sink).
    source: ChunkSource | None = None
    #: What the sink assembled, once it has.
    assembly: Assembly | None = None
    size: int = 0
    sha256: str = ""
    #: The sink joined the chunks (direct mode): they now live only in ``assembly``.
    consumed: bool = False


@runtime_checkable
class StorageLayout(Protocol):
    async def ready(self, upload: Upload, records: dict[int, ChunkRecord]) -> Assembling:
        """Before the completion lease: what completion will work on; raise if it cannot begin."""

    async def assemble(self, job: Assembling) -> None:
        """Under the completion lease: have the sink assemble the bytes, and fill ``job`` in.

        A failure after the sink consumed the chunks sets ``job.consumed`` first.
        """

    def forget(self, upload_id: str) -> None:
        """The upload is gone (deleted, expired, completed): drop what this process keeps of it."""


@runtime_checkable
class NumberedChunks(Protocol):
    async def put(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                  expected_sha256: str | None) -> ChunkReceipt:
        """Receive chunk ``n`` (``expected`` bytes), verify it, register it; the receipt or the error."""
