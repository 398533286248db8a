"""S3 sink: completed uploads become objects in one S3 (or S3-compatible) bucket.

Stores: ``s3://<bucket>/<prefix><upload id>`` by default (``key_template``, or a
``vezastream_object_key`` plugin, may name other keys, each value sanitised; a
taken key is never overwritten: 409 ``key-exists``), with the upload's
Content-Type and a ``Content-Disposition`` carrying the filename, through multipart
uploads only, so an object appears whole or not at all:

- **streamed mode** (any upload): chunks are staged on local disk as usual;
  completion streams them in order into a multipart upload (``part_size``
  parts, ``parts_in_flight`` at once: memory is bounded by their product);
  no assembled copy ever lands on disk. Commit is CompleteMultipartUpload,
  discard is AbortMultipartUpload.
- **direct mode** (``direct = true`` and a chunk size of at least 5 MiB):
  each chunk streams to S3 as part n of a multipart upload opened when the
  upload is created, as it arrives; nothing touches local disk, so any node
  can take any chunk. See :mod:`vezastream_s3.direct`.
- **sink staging** (``storage.staging = "sink"``): what direct mode does not
  take (smaller chunks, tus PATCH bodies) waits in the bucket as staging
  objects, ``<prefix>.staging/<upload id>/...``, until completion streams
  them into the object and deletes them: no node keeps an upload's bytes.
  See :mod:`vezastream_s3.staging`.

Failures: transient S3 errors (500, 503 SlowDown, dropped
connections) are retried with capped exponential backoff; when they outlast
``retry_attempts`` the request answers 503, a permanent error 502 naming the
call and S3's code. A call S3 does not answer (nor takes its body) for
``connect_timeout`` + ``read_timeout`` is not retried: 503 at once. A failed
completion aborts its multipart upload and keeps the chunks, so a later
complete can succeed. ``DELETE`` aborts a direct upload's multipart upload;
the GC aborts multipart uploads under the prefix older than ``gc.max_age``
that no live upload owns (one whose key does not name its upload is found
through a small note object, ``<prefix>.vezastream-open/<hash>``, that lives
from its creation to its completion or abort; one whose server died before
writing its note, through the intent, ``<prefix>.vezastream-intent/``, written
before its creation and dropped once the note is written).

Reading back: ``content = "redirect"`` answers 307 to a presigned GET URL,
``"proxy"`` streams the object through the server (with ``Range``).

Does not: create the bucket, set lifecycle rules, encrypt on its own (use
the bucket's default encryption), or read credentials from config.toml:
they come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance or container roles).

Needs (IAM): ``s3:PutObject``, ``s3:GetObject``, ``s3:DeleteObject``,
``s3:AbortMultipartUpload``, ``s3:ListMultipartUploadParts`` on
``<bucket>/<prefix>*``, and ``s3:ListBucket``,
``s3:ListBucketMultipartUploads`` on the bucket (HeadBucket needs ListBucket).

Config: ``[sinks.s3]``, every key in :class:`vezastream_s3.settings.S3Settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vezastream import ConfigError, Settings, hookimpl

from .settings import S3Settings, parse_settings

if TYPE_CHECKING:
    from .sink import S3Sink

__all__ = ["S3Settings", "S3Sink", "make_s3_sink"]


def make_s3_sink(config: Mapping[str, Any], settings: Settings) -> "S3Sink":
    """The sink for ``storage.sink = "s3"``; the client opens on first use."""
    s3 = parse_settings(config)
    try:
        from .sink import S3Sink
    except ImportError as exc:  # the plugin loads without aiobotocore; only using it needs it
        raise ConfigError(f"storage.sink: the s3 sink needs the s3 extra (pip install 'vezastream[s3]'): {exc}") \
            from exc
    return S3Sink(s3)


def __getattr__(name: str) -> Any:
    if name == "S3Sink":  # imported on demand, so that loading the plugin never needs aiobotocore
        from .sink import S3Sink
        return S3Sink
    raise AttributeError(name)


@hookimpl
def vezastream_register_sinks(register):
    register("s3", make_s3_sink)
