"""A Python client for the native chunk API: parallel chunks, retries, resume, verification.

Used by ``vezastream upload`` and importable on its own::

    from vezastream.client import upload_file

    result = await upload_file("http://127.0.0.1:8080", "big.iso", parallel=8)
    print(result.upload_id, result.sha256)

An interrupted upload (Ctrl-C, a crash, a server restart that outlasts the
retries) resumes when the same file is uploaded to the same server again:
only the chunks the server lacks are sent. See ``docs/client.md``.
"""

from .resume import ResumeStore, default_state_dir
from .retry import RetryEvent, RetryPolicy
from .upload import (ClientError, FileChanged, IntegrityMismatch, Progress, ProgressEvent, UploadClient, UploadResult,
                     upload_file)

__all__ = ["ClientError", "FileChanged", "IntegrityMismatch", "Progress", "ProgressEvent", "ResumeStore", "RetryEvent",
           "RetryPolicy", "UploadClient", "UploadResult", "default_state_dir", "upload_file"]
