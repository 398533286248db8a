"""The public plugin API of vezastream: this module is the hook reference.

A plugin is a module or object with functions marked ``@vezastream.hookimpl``
whose names match the specs below. Installed plugins are found through the
``vezastream`` entry-point group (the built-in sinks are found the same way);
``docs/plugins.md`` is the author guide. Everything a plugin imports comes
from the package itself (``from vezastream import Rejected, hookimpl``: its
``__all__`` is the public API).

How the host calls hooks
    pluggy does not await. A hook documented as *may be async* can be a plain
    function or an ``async def``: the host awaits whatever is awaitable.
    Registration hooks (``vezastream_register_sinks``,
    ``vezastream_configure_plugin``) must be plain functions; startup fails
    otherwise. ``hookwrapper``/``wrapper`` implementations are not supported.
    A plugin implements only the hooks it needs and names only the arguments
    it uses.

Three kinds of hooks
    * registration and configuration: run once per app, at startup; any
      exception stops startup with one message naming the plugin;
    * request-path hooks (``authenticate``, ``validate``, ``inspect``): run
      in call order, awaited one after the other; they may answer or reject.
      Each implementation has a time limit (``[hooks]`` in config.toml);
      past it the request answers 503 naming the plugin. A plain-function
      validator or inspector runs in a thread (it may block); a plain
      ``authenticate`` runs on the event loop (it must not);
    * ``vezastream_observe_*`` notifications: run in the background after
      the fact, each with a timeout; what they return is ignored and what
      they raise is logged. A slow or failing observer can neither block nor
      lose an upload, and nothing guarantees it runs (a crash of the server
      loses pending notifications): use them for side effects, not records.

Stability promise: hookspecs only grow. A new release may add a hook or add
an argument to one (pluggy passes a hook only the arguments it names), but
never renames or removes either, nor changes what an argument means.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web

    from .config import Settings
    from .errors import UploadError
    from .models import ChunkRecord, Upload, UploadResult, UploadSpec
    from .sinks import ChunkSource, SinkFactory

PROJECT = "vezastream"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- registration and configuration ----------------------------------------------
@hookspec
def vezastream_register_sinks(register: Callable[[str, "SinkFactory"], None]) -> None:
    """Register storage sinks by name.

    Runs once, while the app starts (and for ``vezastream plugins``). Call
    ``register(name, factory)`` for each sink the plugin offers. ``factory``
    is called with ``(config, settings)`` only when ``storage.sink`` names
    it, at startup (and by ``vezastream plugins --check``): ``config`` is the
    ``[sinks.<name>]`` table (a dict, possibly empty; read it with
    :func:`vezastream.parse_table`), ``settings`` the whole
    :class:`vezastream.Settings`. It returns an object implementing
    :class:`vezastream.Sink` (docs/plugins.md, "Sink reference"), and should
    raise :class:`vezastream.ConfigError` for a bad setting. Synchronous:
    open connections lazily or in the sink's first call.

    Example::

        @hookimpl
        def vezastream_register_sinks(register):
            register("memory", lambda config, settings: MemorySink())
    """


@hookspec
def vezastream_configure_plugin(config: Mapping[str, Any], settings: "Settings") -> object | None:
    """Validate the plugin's own config table; optionally return a configured object.

    Runs once per app, at startup (and for ``vezastream plugins``), before
    any request, for each enabled plugin that implements it, with that
    plugin's own table: ``config`` is ``[plugins.<name>]`` (a dict, empty
    when the file has no such table; the host's own key ``enabled`` is
    removed). ``settings`` is the whole :class:`~vezastream.Settings`.

    Raise :class:`vezastream.ConfigError` (or any exception) for a bad
    value: startup stops with one line naming the plugin. Return ``None``, or
    an object whose ``@hookimpl`` methods the host registers for this app
    (state then lives on the object, never in module globals, so two apps in
    one process do not share it). Synchronous. A plugin that does not
    implement this hook must have no table other than ``enabled``.

    Example::

        @hookimpl
        def vezastream_configure_plugin(config, settings):
            limit = config.get("max_files", 100)
            if not isinstance(limit, int) or limit < 1:
                raise ConfigError("plugins.quota.max_files: expected a positive integer")
            return QuotaPlugin(limit)
    """


# -- request path -------------------------------------------------------------------
@hookspec
def vezastream_authenticate_request(request: "web.Request", settings: "Settings"
                                    ) -> str | None | Awaitable[str | None]:
    """Say who sent ``request``: a user id, or ``None`` to decline. May be async.

    Runs once per HTTP request, before its handler, for every route
    (health checks included: keep it cheap). Implementations run in call
    order (``tryfirst``/``trylast`` apply) until one returns a user id;
    the ones after it are not called. When every plugin declines, the
    built-in auth (``[auth] mode``) answers: ``anonymous`` with ``mode =
    "none"``, a bearer token's user with ``mode = "token"``.

    Return a non-empty string (the owner of the uploads this request may
    touch). Raise :class:`vezastream.Unauthorized` (401) to refuse
    the request outright without asking the built-in auth; the error is
    raised when the handler needs the user, so ``/v1/health`` keeps
    answering. Any other exception answers 503 and is logged. A request
    sending ``Authorization`` on two lines is not handed to the hook: it
    answers 400 in the same way. An implementation that takes longer than
    ``hooks.auth_timeout`` (10 s) answers 503 too; a plain function runs on
    the event loop, where that limit cannot stop it: do I/O in an ``async def``.

    Example::

        @hookimpl
        async def vezastream_authenticate_request(request):
            key = request.headers.get("X-Api-Key")
            return await lookup_user(key) if key else None
    """


@hookspec
def vezastream_validate_upload(upload: "UploadSpec", settings: "Settings"
                               ) -> "UploadError | None | Awaitable[UploadError | None]":
    """Accept or reject a new upload before anything is stored. May be async.

    Runs when a client starts an upload (``POST /v1/uploads``; a tus
    creation, including each partial upload and a concatenated final one),
    after the engine's own checks (sizes, chunk plan) and before the
    upload's state is written. ``upload`` is the
    :class:`~vezastream.UploadSpec` about to be created: id, owner,
    filename, total_size, chunk plan, declared sha256, metadata, protocol
    (``"native"`` or ``"tus"``). A tus upload (``layout == "append"``) has
    no chunk plan (``chunk_size`` and ``total_chunks`` are 0) and a
    ``total_size`` of -1 while its length is deferred. Use it for quotas,
    file-type or filename policy.

    Return ``None`` to accept. To reject, raise or return an
    :class:`vezastream.UploadError`; usually
    ``vezastream.Rejected("why")`` (422), or another 4xx from the
    catalog (``TooLarge`` 413, ``Unauthorized`` 401...). The client gets
    problem+json whose ``detail`` is your message and whose ``plugin``
    member names your plugin; nothing is stored. Validators run in call
    order and the first rejection wins. Any other exception answers 503
    (the upload is not created) and is logged, and so does taking longer
    than ``hooks.validate_timeout`` (30 s). A plain function runs in a
    thread and may block.

    Example::

        @hookimpl
        def vezastream_validate_upload(upload):
            if not upload.filename.lower().endswith((".mp3", ".flac", ".wav")):
                return Rejected("only .mp3, .flac and .wav files are accepted")
    """


@hookspec(firstresult=True)
def vezastream_object_key(upload: "UploadSpec", settings: "Settings") -> str | None:
    """Choose the object key (or path) a new upload will be stored at. Must be a plain function.

    Runs when an upload is created, right after ``vezastream_validate_upload``
    accepted it (the S3 sink's direct mode opens the object's multipart upload
    at creation, so the key is fixed then), with the same ``upload``
    :class:`~vezastream.UploadSpec`. Return a key relative to the sink's root,
    such as ``f"{upload.owner}/{upload.metadata['album']}/{upload.filename}"``,
    or ``None`` to leave it to the sink's ``key_template``. The first
    implementation that returns a string wins (``firstresult``: this hook is
    synchronous, and an ``async def`` implementation stops startup).

    The host makes the key safe (``vezastream.safe_key``: each ``/`` segment
    keeps letters, digits and ``._-``, no leading dot; empty segments go), so
    it never leaves the sink's root; the S3 sink puts its ``prefix`` in front.
    A chosen key may already hold an object: the completion then answers 409
    ``key-exists`` and never overwrites it (the upload stays pending). Raise an
    :class:`vezastream.UploadError` to refuse the upload (as a validator
    would); any other exception, or a return that is neither a string nor
    ``None``, answers 503 and is logged.

    Example::

        @hookimpl
        def vezastream_object_key(upload):
            if "album" in upload.metadata:
                return f"{upload.owner}/{upload.metadata['album']}/{upload.filename}"
            return None
    """


@hookspec
def vezastream_inspect_upload(upload: "Upload", source: "ChunkSource"
                              ) -> "UploadError | None | Awaitable[UploadError | None]":
    """Read the assembled bytes before the upload becomes final; may reject. May be async.

    Runs during completion, after the sink assembled the object
    (``Sink.assemble``) and the engine verified its size and SHA-256, and
    before ``Assembly.commit()`` makes it visible. ``source`` yields the
    upload's bytes in order: ``async for block in source.iter_bytes()``
    (``source.files`` lists the staged chunk files for tools that want
    paths; take only the first ``size`` bytes of each; it is empty with
    ``storage.staging = "sink"``, where the bytes wait in the sink). Use it for virus scanners and content-type checks. Inspectors
    run one after the other in call order; the completion lease is renewed
    meanwhile, so a long scan is safe. While any inspector is installed,
    new uploads are staged even when the sink could take chunks directly
    (the S3 sink's direct mode): the bytes must be readable before they are
    final. (An upload that went direct before an inspector was installed is
    inspected after the sink joined its chunks: a rejection then leaves it
    ``rejected``, with no chunks, as only ``DELETE`` can follow.)

    Return ``None`` to accept. Raise or return ``vezastream.Rejected``
    (422, or another 4xx ``UploadError``) to reject: the assembly is
    discarded (nothing reaches storage), the client gets problem+json with
    your message and a ``plugin`` member, and the upload stays ``pending``
    with its chunks kept, exactly as after a failed integrity check: the
    client (or an operator) can inspect and DELETE it, and otherwise it
    expires after ``limits.upload_ttl`` and the GC removes its chunks. A
    later complete runs the inspectors again. Any other exception (the
    scanner is down) answers 503 and leaves the upload pending too, so a
    later complete can succeed; so does taking longer than
    ``hooks.inspect_timeout`` (an hour: the scanner hangs). A plain function
    runs in a thread and may block (reading ``source.files``).

    Example::

        @hookimpl
        async def vezastream_inspect_upload(upload, source):
            async for block in source.iter_bytes():
                head = block[:4]
                break
            else:
                head = b""
            if head not in (b"fLaC", b"RIFF", b"ID3\\x03"):
                raise Rejected("not a supported audio file")
    """


# -- notifications (background, after the fact) ------------------------------------
@hookspec
def vezastream_observe_chunk(upload: "UploadSpec", chunk: "ChunkRecord", received_count: int
                             ) -> None | Awaitable[None]:
    """A chunk was stored. Notification; may be async.

    Runs in the background after the engine recorded a new chunk (not for a
    safe retry of a chunk already stored); for a tus upload, each PATCH
    that stored bytes is one chunk, numbered in order. ``chunk`` has
    ``number``, ``size`` and ``sha256`` (for a tus chunk, usually the digest of
    the upload's bytes from its start to the end of this chunk: tus bytes are
    hashed once, as they arrive in order); ``received_count`` is how many
    distinct chunks the upload has now. Native chunks arrive in parallel,
    so notifications can run in any order. The return value is ignored;
    exceptions are logged.

    Example::

        @hookimpl
        def vezastream_observe_chunk(upload, received_count):
            progress[upload.id] = received_count / upload.total_chunks
    """


@hookspec
def vezastream_observe_completion(upload: "Upload", result: "UploadResult") -> None | Awaitable[None]:
    """An upload completed and its object is final in the sink. Notification; may be async.

    Runs in the background once per upload, on the node that completed it,
    after the result is recorded (an idempotent repeat of ``complete`` does
    not run it again). In one rare case it runs twice: a completion that
    outlived its lease (``LEASE_SECONDS`` without renewal) and was taken
    over by another is reported by both, so key side effects on
    ``upload.id``. ``result`` has ``size``, ``sha256``, ``sink`` and
    ``location``. The return value is ignored; exceptions are logged.

    Example::

        @hookimpl
        async def vezastream_observe_completion(upload, result):
            await index.add(upload.spec.owner, upload.spec.filename, result.location)
    """


@hookspec
def vezastream_observe_abort(upload: "Upload", reason: str) -> None | Awaitable[None]:
    """An upload was deleted. Notification; may be async.

    Runs in the background after the upload's state, chunks and (for a
    completed upload, when the sink can) stored object were removed.
    ``upload.status`` says what it was when deleted (``pending`` or
    ``completed``); counters on ``upload`` are zero, its spec is complete.
    ``reason`` is ``"deleted"`` (a client's DELETE, native or tus) or
    ``"concatenated"`` (a tus partial upload whose bytes became part of a
    final upload, which is then completed on its own) or ``"lost"`` (Redis
    evicted or lost its state, or part of it, so it could not complete: the
    client was answered 410, an object its completion assembled removed);
    new reasons may be added.
    The return value is ignored; exceptions are logged.

    Example::

        @hookimpl
        def vezastream_observe_abort(upload, reason):
            log.info("upload %s gone (%s)", upload.id, reason)
    """


@hookspec
def vezastream_observe_expiry(upload_id: str) -> None | Awaitable[None]:
    """The garbage collector removed what an expired upload left. Notification; may be async.

    Runs in the background when a GC pass (not a dry run) removes the staged
    chunks of an upload whose state expired (``limits.upload_ttl`` without
    activity) more than ``gc.max_age`` ago. Only the id is left by then. It
    runs once per node holding chunks of that upload, and not at all for an
    upload that never staged a chunk (none sent, or all sent straight to
    the sink in a sink's direct mode): treat it as a hint and be idempotent.
    The return value is ignored; exceptions are logged.

    Example::

        @hookimpl
        async def vezastream_observe_expiry(upload_id):
            await db.mark_abandoned(upload_id)
    """
