"""What a storage layout may ask of the engine: the one interface between them.

The engine (``engine.py``) owns sizes, offsets, leases and completion, and
hands each layout's work to a collaborator (``append.py``: tus segments;
``inplace.py``: native chunks in one data file; the chunk files and direct
mode are the engine's own). A collaborator receives the engine as
:class:`EngineServices` and calls back only what is named here, so the
layouts never import the engine and never reach into each other.

A new layout: add its name to :class:`~vezastream.models.Layout`, write its
collaborator against this protocol, build it in ``UploadEngine.__init__``,
and dispatch to it where the engine branches on ``spec.layout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # names for annotations only; none of them imports the engine
    from ..config import LimitsSettings, Settings
    from ..hooks import Hooks
    from ..models import ChunkReceipt, ChunkRecord, Upload, UploadResult, UploadSpec
    from ..sinks import Sink
    from ..staging import ChunkStaging
    from ..staging.bodies import Watched
    from ..staging.digests import RunningDigests
    from ..state.store import Registration, StateStore
    from .insink import SinkStaging
    from .quotas import Quotas


class EngineServices(Protocol):
    settings: Settings
    limits: LimitsSettings
    hooks: Hooks
    store: StateStore
    staging: ChunkStaging
    sink: Sink
    #: Staging objects in the sink (``storage.staging = "sink"``).
    in_sink: SinkStaging
    quotas: Quotas
    digests: RunningDigests
    clock: Callable[[], float]

    def new_token(self) -> str:
        """A token for a lease or a claim, unique across processes."""

    def remember(self, spec: UploadSpec) -> None:
        """Keep ``spec`` in this process's cache (specs never change)."""

    def forget(self, upload_id: str) -> None:
        """The upload is gone: drop what this process keeps of it."""

    async def spec(self, owner: str, upload_id: str) -> UploadSpec:
        """The spec of an upload ``owner`` may touch, else ``NotFound``."""

    async def loaded(self, upload_id: str) -> Upload:
        """The upload as Redis holds it now, else ``NotFound``."""

    async def take_lease(self, key: str, token: str, seconds: float) -> bool:
        """The lease ``key``, if it is free or its holder is dead."""

    async def keep_lease(self, key: str, token: str, seconds: float = ...,
                         lost: asyncio.Event | None = None, flow: Watched | None = None) -> None:
        """Renew a lease until cancelled; set ``lost`` once it cannot be."""

    async def put_staged(self, spec: UploadSpec, n: int, body: AsyncIterable[bytes], expected: int,
                         expected_sha256: str | None, mark: str = "") -> ChunkReceipt:
        """Stage chunk ``n`` as a file of its own and register it."""

    async def receipt(self, spec: UploadSpec, record: ChunkRecord, reg: Registration) -> ChunkReceipt:
        """What registering ``record`` means for the client: a receipt, or the error to raise."""

    async def complete(self, owner: str, upload_id: str) -> tuple[Upload, UploadResult]:
        """Assemble the upload into the sink, once."""

    async def finish_abandoned(self, owner: str, upload: Upload) -> Upload:
        """``upload``, completed if a dead process left its completion half done."""

    async def delete(self, owner: str, upload_id: str, reason: str = "deleted") -> None:
        """Remove the upload everywhere."""


