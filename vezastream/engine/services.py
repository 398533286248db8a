"""What a storage layout may ask of the engine: the one interface between them.

The engine (``engine.py``) owns sizes, offsets, leases and completion, and
hands each upload's bytes to its storage layout (``layouts/``, behind the
interface of ``layouts/interface.py``). A layout receives the engine as
:class:`EngineServices` and calls back only what is named here (and the
completion rules below), so the layouts never import the engine.

A new layout: see ``layouts/__init__.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from redis.exceptions import RedisError

from .. import errors
from ..models import UploadStatus

if TYPE_CHECKING:  # names for annotations only; none of them imports the engine
    from ..config import LimitsSettings, Settings
    from ..hooks import Hooks
    from ..models import ChunkReceipt, ChunkRecord, Upload, UploadResult, UploadSpec
    from ..sinks import Sink
    from ..staging import ChunkStaging
    from ..staging.bodies import Watched
    from ..staging.digests import RunningDigests
    from ..state.store import Registration, StateStore
    from .layouts.sinkstaging import SinkStaging
    from .leases import GiveBack
    from .quotas import Quotas

log = logging.getLogger("vezastream.engine")


class EngineServices(Protocol):
    settings: Settings
    limits: LimitsSettings
    hooks: Hooks
    store: StateStore
    staging: ChunkStaging
    sink: Sink
    #: Staging objects in the sink (``storage.staging = "sink"``: ``layouts/sinkstaging.py``).
    sink_staging: SinkStaging
    quotas: Quotas
    digests: RunningDigests
    #: Leases and claims given back once a hung Redis answers again (``leases.GiveBack``).
    give_back: GiveBack
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

    async def refuse_if_gone(self, upload_id: str) -> None:
        """``NotFound`` (the upload forgotten here) if it was deleted or expired meanwhile; nothing if it is there."""

    async def take_lease(self, key: str, token: str, seconds: float) -> bool:
        """The lease ``key``, if it is free or its holder is dead."""

    async def keep_lease(self, key: str, token: str, seconds: float = ...,
                         lost: asyncio.Event | None = None, flow: Watched | None = None) -> None:
        """Renew a lease until cancelled; set ``lost`` once it cannot be."""

    async def receipt(self, spec: UploadSpec, record: ChunkRecord, reg: Registration) -> ChunkReceipt:
        """What registering ``record`` means for the client: a receipt, or the error to raise."""

    async def complete(self, owner: str, upload_id: str) -> tuple[Upload, UploadResult]:
        """Assemble the upload into the sink, once."""

    async def finish_abandoned(self, owner: str, upload: Upload) -> Upload:
        """``upload``, completed if a dead process left its completion half done."""

    async def delete(self, owner: str, upload_id: str, reason: str = "deleted") -> None:
        """Remove the upload everywhere."""


def check_whole(spec: UploadSpec, size: int, sha256: str) -> None:
    """Raise ``IntegrityError`` when the assembled bytes are not what the upload declared."""
    problems = []
    if size != spec.total_size:
        problems.append(f"size {size} != total_size {spec.total_size}")
    if spec.sha256 and sha256 != spec.sha256:
        problems.append(f"sha256 {sha256} != declared {spec.sha256}")
    if problems:
        raise errors.IntegrityError("; ".join(problems), size=size, sha256=sha256)


def rejected(upload: Upload) -> errors.UploadError:
    """The error for a request on an upload refused after the sink consumed its chunks."""
    return errors.UploadNotPending(f"the upload was rejected ({upload.reason}); delete it and upload again",
                                   upload_status=str(UploadStatus.REJECTED), reason=upload.reason)


async def quietly(aw: Awaitable[object]) -> None:
    """Await a cleanup step; log its failure instead of raising it: Redis gone (a failover, an outage,
    which the request's own answer already logged) in one line, anything else with its traceback."""
    try:
        await aw
    except RedisError as exc:
        log.warning("cleanup step failed", extra={"error": f"{type(exc).__name__}: {exc}"})
    except Exception:
        log.exception("cleanup step failed")
