"""vezastream: resumable, chunked, high-concurrency HTTP uploads.

This package's namespace is the plugin SDK: everything a plugin needs, in one
``__all__``, each name documented in ``docs/plugins.md``. Plugins import from
here (``from vezastream import Content, Rejected, hookimpl``); every other
module is internal and may change in any release. The hooks themselves are
specified in :mod:`vezastream.hookspecs`.
"""

from . import errors
from .config import GiB, KiB, MiB, ConfigError, Settings, Size, parse_path, parse_size, parse_table
from .errors import (BackendUnavailable, ChunkTooShort, DigestMismatch, NotFound, ObjectNotFound, Rejected,
                     SinkFailed, TooLarge, Unauthorized, Unavailable, UploadError)
from .hooks import NOTIFY_TIMEOUT
from .hookspecs import hookimpl
from .models import ChunkRecord, Upload, UploadResult, UploadSpec, UploadStatus, is_upload_id, iso
from .metering import MeteredBody
from .naming import KeyTemplate, content_disposition, safe_key
from .sinks import (AbortsUploads, Assembly, ChunkFile, ChunkSource, Content, DirectAssembly, LiveCheck,
                    ReceivesChunks, RemovesObjects, ServesContent, Sink, SinkFactory, StagesBytes,
                    STAGED_IN_SINK, SweepsLeftovers)
from .staging import KernelIO, check_folder, fsync_dir

__all__ = [
    # hooks
    "hookimpl", "NOTIFY_TIMEOUT",
    # the sink protocol and its optional capabilities
    "Sink", "Assembly", "ServesContent", "RemovesObjects", "AbortsUploads", "ReceivesChunks", "DirectAssembly",
    "SweepsLeftovers", "LiveCheck", "SinkFactory", "StagesBytes", "STAGED_IN_SINK",
    # what a sink receives and returns
    "ChunkSource", "ChunkFile", "Content", "ChunkRecord", "Upload", "UploadSpec", "UploadResult", "UploadStatus",
    # errors a plugin raises (the whole catalog is in ``errors``)
    "errors", "UploadError", "Rejected", "TooLarge", "ObjectNotFound", "BackendUnavailable", "NotFound",
    "Unavailable", "Unauthorized", "SinkFailed", "ChunkTooShort", "DigestMismatch",
    # configuration
    "ConfigError", "Settings", "Size", "parse_path", "parse_size", "parse_table", "KiB", "MiB", "GiB",
    # helpers for sinks
    "MeteredBody", "KeyTemplate", "safe_key", "content_disposition", "fsync_dir", "check_folder", "KernelIO", "is_upload_id", "iso",
    "__version__",
]
__version__ = "0.1.0"
