"""Local-disk sink: completed uploads become files under one directory.

Stores: ``<directory>/<upload id>/<sanitised filename>``; the path derives
from the upload id, and the filename only contributes letters, digits and
``._-`` (so no client value can steer the path). Assembly writes a hidden
temporary file in the upload's folder on the destination filesystem, copies
the chunks in with ``os.copy_file_range`` (the kernel moves the bytes;
plain read/write where the platform lacks it), fdatasyncs, and commit renames
it atomically and fsyncs the folder. A source that is one whole staged file
on the same filesystem (a tus upload's data file, a one-chunk upload) is
hard-linked to the temporary name instead: no byte is copied (staged files
are already durable and never written again once complete).

Where ``storage.kernel_io`` is on and ``directory`` is on a local filesystem
(see ``KernelIO``), the link, the rename and their syncs make no worker-thread
trip: the system calls run on the event loop and the syncs go to Linux native
AIO. Copying chunks stays in a worker thread.

Does not: replicate, version, or share files between nodes (put the
directory on shared storage for that). Needs: read/write on ``directory``.

With a ``key_template`` (default ``{upload_id}/{filename}``: the layout above)
the file is ``<directory>/<rendered key>``; a key that names no ``{upload_id}``
may already hold a file: commit links with no-replace semantics and refuses
(409 ``key-exists``, the upload stays pending) instead of overwriting it.

Config (``[sinks.local]``): ``directory`` (default ``<data_dir>/files``),
``fsync`` (default: ``storage.durable``), ``key_template``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vezastream import (ChunkFile, ChunkSource, ConfigError, Content, KernelIO, KeyTemplate, Settings, Upload,
                        UploadResult, check_folder, errors, fsync_dir, hookimpl, parse_path)

COPY_BLOCK = 8 * 1024 * 1024
#: Today's layout: ``<upload id>/<sanitised filename>``.
DEFAULT_KEY_TEMPLATE = "{upload_id}/{filename}"


def _copy_into(out_fd: int, path: Path, size: int) -> None:
    """Append the first ``size`` bytes of ``path`` to ``out_fd``.

    ``IntegrityError`` when the file holds fewer: its bytes were registered, but the file
    was cut short since (``storage.durable`` off and a crash, a hand at work). Where the
    upload's digest was taken on arrival, nothing else would notice the short object.
    """
    with open(path, "rb", buffering=0) as src:
        left = _kernel_copy(src.fileno(), out_fd, size)
        while left > 0 and (data := src.read(min(COPY_BLOCK, left))):
            left -= len(data)
            view = memoryview(data)
            while view:
                view = view[os.write(out_fd, view):]
    if left > 0:
        raise errors.cut_short(size - left, size)


def _kernel_copy(fd: int, out_fd: int, size: int) -> int:
    """Copy up to ``size`` bytes from ``fd``'s position by ``copy_file_range``; the bytes left to copy
    (all of them where the kernel cannot: EXDEV across filesystems, ENOSYS)."""
    left = size
    if hasattr(os, "copy_file_range"):
        try:
            while left > 0 and (n := os.copy_file_range(fd, out_fd, min(COPY_BLOCK, left))):
                left -= n
        except OSError:  # e.g. EXDEV or ENOSYS: a plain copy does the rest
            if left != size:
                raise
    return left


def _link(chunk: ChunkFile, tmp: Path) -> bool:
    """Hard-link a whole staged file to ``tmp``; False when it cannot be (then it is copied)."""
    try:
        if os.stat(chunk.path).st_size != chunk.size:
            return False
        os.link(chunk.path, tmp)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.EACCES):
            return False
        raise
    return True


@dataclass
class LocalAssembly:
    tmp: Path
    final: Path
    location: str
    fsync: bool
    #: The key is the upload's own (it names its id): a retried commit may replace it.
    owned: bool = True
    #: The sink's kernel AIO (then commit's rename runs on the event loop), or None (a worker thread).
    kernel: KernelIO | None = None

    async def commit(self) -> None:
        if self.kernel is None:
            await asyncio.to_thread(self._commit)
            return
        self._rename()
        if self.fsync:
            await self.kernel.sync_path(self.final.parent)

    def _commit(self) -> None:
        self._rename()
        if self.fsync:
            fsync_dir(self.final.parent)

    def _rename(self) -> None:
        if self.owned:
            os.replace(self.tmp, self.final)
        else:  # no-replace: link fails if the key holds a file
            try:
                os.link(self.tmp, self.final)
            except FileExistsError:
                raise errors.KeyExists(f"an object already exists at {self.location}; delete it, "
                                       "or delete this upload") from None
            os.unlink(self.tmp)

    async def discard(self) -> None:
        try:  # a worker thread even with kernel AIO: a copied file frees all its blocks here
            await asyncio.to_thread(os.unlink, self.tmp)
        except FileNotFoundError:
            pass


class LocalSink:
    name = "local"

    def __init__(self, directory: Path, fsync: bool = True,
                 template: KeyTemplate = KeyTemplate(DEFAULT_KEY_TEMPLATE), kernel_io: str = "off") -> None:
        self.directory = directory
        self.fsync = fsync
        self.template = template
        self.kernel_io = kernel_io  # storage.kernel_io: "auto" or "off"
        self._kernel: KernelIO | None = None
        self._kernel_loop: asyncio.AbstractEventLoop | None = None

    async def _kernel_for_loop(self) -> KernelIO | None:
        """The kernel's AIO for the running event loop (started at first use), or None: worker threads."""
        loop = asyncio.get_running_loop()
        if loop is not self._kernel_loop:  # the first use (a context serves the loop it was made on)
            kernel = await KernelIO.started(self.directory, self.kernel_io)
            if loop is self._kernel_loop:  # another first use started one meanwhile
                if kernel is not None:
                    kernel.close()
                return self._kernel
            if self._kernel is not None:
                with contextlib.suppress(RuntimeError):  # its loop is closed
                    self._kernel.close()
            self._kernel, self._kernel_loop = kernel, loop
        return self._kernel

    def path_for(self, upload: Upload) -> tuple[Path, str]:
        location = self.template.render(upload.spec)
        return self.directory / location, location

    @staticmethod
    def _linked(final: Path, source: ChunkSource) -> tuple[Path, bool]:
        """The temporary name beside ``final``, and whether it is a hard link to a one-file source."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{secrets.token_hex(8)}.part"
        return tmp, len(source.files) == 1 and _link(source.files[0], tmp)

    def _assemble(self, final: Path, source: ChunkSource) -> Path:
        tmp, linked = self._linked(final, source)
        if linked:
            if self.fsync:  # next to nothing when staging synced it already (storage.durable)
                try:
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fdatasync(fd)
                    finally:
                        os.close(fd)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            return tmp  # commit makes the name durable
        return self._copy(tmp, source)

    def _copy(self, tmp: Path, source: ChunkSource) -> Path:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            for chunk in source.files:
                _copy_into(fd, chunk.path, chunk.size)
            if self.fsync:
                os.fdatasync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp

    async def assemble(self, upload: Upload, source: ChunkSource) -> LocalAssembly:
        final, location = self.path_for(upload)
        kernel = await self._kernel_for_loop()
        if kernel is None:
            tmp = await asyncio.to_thread(self._assemble, final, source)
        else:  # a local filesystem: a mkdir and a link on the event loop, the sync by the kernel's AIO
            tmp, linked = self._linked(final, source)
            if not linked:
                tmp = await asyncio.to_thread(self._copy, tmp, source)
            elif self.fsync:
                try:
                    await kernel.sync_path(tmp, data_only=True)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
        return LocalAssembly(tmp, final, location, self.fsync, self.template.unique(upload.spec), kernel)

    async def check(self) -> None:
        await asyncio.to_thread(check_folder, self.directory)

    async def aclose(self) -> None:
        if self._kernel is not None:
            self._kernel.close()
        self._kernel = self._kernel_loop = None

    async def open_content(self, upload: Upload, result: UploadResult) -> Content:
        path = self.directory / result.location
        return Content(size=result.size, path=path)

    async def remove(self, upload: Upload, result: UploadResult) -> None:
        path = self.directory / result.location
        if path.parent.name == upload.id:  # the upload's own folder (the default layout)
            await asyncio.to_thread(shutil.rmtree, path.parent, True)
        else:  # a shared folder (a key template): the file only
            await asyncio.to_thread(path.unlink, True)


def make_local_sink(config: Mapping[str, Any], settings: Settings) -> LocalSink:
    unknown = set(config) - {"directory", "fsync", "key_template"}
    if unknown:
        raise ConfigError(f"sinks.local.{sorted(unknown)[0]}: unknown setting")
    directory = config.get("directory", str(settings.storage.data_dir / "files"))
    fsync = config.get("fsync", settings.storage.durable)
    if not isinstance(directory, str) or not directory:
        raise ConfigError("sinks.local.directory: expected a path")
    if not isinstance(fsync, bool):
        raise ConfigError("sinks.local.fsync: expected true or false")
    template = KeyTemplate.parse(config.get("key_template", DEFAULT_KEY_TEMPLATE), "sinks.local.key_template")
    return LocalSink(parse_path(directory, "sinks.local.directory"), fsync, template, settings.storage.kernel_io)


@hookimpl
def vezastream_register_sinks(register):
    register("local", make_local_sink)
