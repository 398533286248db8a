"""Other upload servers for `bench.py --compare`, installed by package name in a temp folder.

Each target starts on a free loopback port, answers the tus protocol under
its ``prefix`` (and, for vezastream, the native API too), and can tell the
SHA-256 of what it stored, so every run verifies the stored bytes. Each peer
runs in the setup its docs recommend for production, in one process (as
vezastream runs by default), and reports that setup (package versions,
server, event loop, HTTP parser) from inside the running server, in
``setup.txt``: ``describe()`` returns it for the tables.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from launchers import free_port

NODE_SERVER = """
import http from 'node:http';
import {readFileSync, writeFileSync} from 'node:fs';
import {Server} from '@tus/server';
import {FileStore} from '@tus/file-store';
const [dir, port] = process.argv.slice(2);
const version = (name) => JSON.parse(readFileSync(`node_modules/${name}/package.json`)).version;
writeFileSync('setup.txt', `@tus/server ${version('@tus/server')} + @tus/file-store ${version('@tus/file-store')}, ` +
              `node:http, Node ${process.version}, 1 process`);
const tus = new Server({path: '/files', datastore: new FileStore({directory: dir})});
http.createServer((req, res) => tus.handle(req, res)).listen(Number(port), '127.0.0.1');
"""

# Prepended to the Python servers: writes their setup, as seen from inside the server, to setup.txt.
REPORT_SETUP = """
import asyncio, sys
from importlib.metadata import version

def report_setup(packages, *more):
    parts = [f"{name} {version(name)}" for name in packages]
    parts += list(more)
    parts.append(f"Python {sys.version.split()[0]}, 1 process")
    with open("setup.txt", "w") as fh:
        fh.write(", ".join(parts))

def running_loop():
    kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return f"loop uvloop {version('uvloop')}" if kind == "uvloop" else f"loop {kind}"

def aiohttp_parser():
    from aiohttp import http_parser
    c = http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"
    return "aiohttp C parser" if c else "aiohttp pure-Python parser"
"""

# uvicorn[standard], with the loop and parser named: a missing extra stops the server
# instead of falling back to asyncio's loop and h11.
TUSPY_SERVER = REPORT_SETUP + """
import contextlib
import uvicorn
from fastapi import FastAPI
from tuspyserver import create_tus_router
directory, port = sys.argv[1], int(sys.argv[2])

@contextlib.asynccontextmanager
async def lifespan(app):
    report_setup(["tuspyserver", "fastapi", "uvicorn"], running_loop(), f"parser httptools {version('httptools')}")
    yield

app = FastAPI(lifespan=lifespan)
app.include_router(create_tus_router(prefix="files", files_dir=directory))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop", http="httptools")
"""

# aiohttp-tus as its README sets it up (setup_tus on the documented default URL, client_max_size
# above the largest request), served by aiohttp's own runner on uvloop, as aiohttp's deployment
# docs run it (GunicornUVLoopWebWorker); aiohttp's C parser required.
AIOHTTP_TUS_SERVER = REPORT_SETUP + """
from pathlib import Path
import uvloop
from aiohttp import web
from aiohttp_tus import setup_tus
store, port = Path(sys.argv[1]), int(sys.argv[2])
if aiohttp_parser() != "aiohttp C parser":
    sys.exit("aiohttp runs its pure-Python parser: not its production setup")

async def on_startup(app):
    report_setup(["aiohttp-tus", "aiohttp"], "web.run_app", running_loop(), aiohttp_parser())

app = setup_tus(web.Application(client_max_size=64 << 20), upload_url="/uploads", upload_path=store)
app.on_startup.append(on_startup)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())
"""


BARE_SERVER = REPORT_SETUP + """
import os, uuid
from aiohttp import web
store, port = sys.argv[1], int(sys.argv[2])
try:  # the event loop vezastream picks too: uvloop when installed
    import uvloop
    loop = uvloop.new_event_loop()
except ImportError:
    loop = asyncio.new_event_loop()

async def on_startup(app):
    report_setup(["aiohttp"], "web.run_app", running_loop(), aiohttp_parser())

async def create(request):
    uid = uuid.uuid4().hex
    open(os.path.join(store, uid), "wb").close()
    return web.Response(status=201, headers={"Location": "/files/" + uid, "Tus-Resumable": "1.0.0"})

async def patch(request):
    path = os.path.join(store, request.match_info["uid"])
    with open(path, "ab") as fh:  # on the event loop: nothing but the write
        async for piece in request.content.iter_any():
            fh.write(piece)
        offset = fh.tell()
    return web.Response(status=204, headers={"Upload-Offset": str(offset), "Tus-Resumable": "1.0.0"})

app = web.Application(client_max_size=1 << 30)
app.router.add_post("/files/", create)
app.router.add_patch("/files/{uid}", patch)
app.on_startup.append(on_startup)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)
"""


def run_quietly(cmd: list[str], cwd: Path | None = None) -> None:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])}... failed: {out.stderr[-1500:]}")


class Attic:
    """Where a sitting's stores and installs wait to be removed until its last run.

    This machine's disk is ext4 without a journal. There, allocating an inode
    passes over every free inode that was freed in the last one to six minutes,
    and each one passed costs a lookup: for minutes after a removal, every file
    or folder a server creates pays for it. A create that took about 20 µs
    took 120-550 µs after 2,000 files were removed nearby, and each W2 upload
    creates two or three. Removing each run's store before the next run made
    every run pay for the runs before it, the first round of each workload
    most (the peers' installs, thousands of files, were removed there too).
    Within a sitting, :meth:`retire` cuts every file to zero length instead,
    which frees its blocks and keeps its inode, and moves the folder here;
    :meth:`close` removes it all once, after the last run.
    """

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="vezabench-attic-"))
        self._retired = 0

    def retire(self, folder: Path) -> None:
        if not folder.exists():
            return
        for root, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):  # a file that went
                    meta = os.lstat(path)
                    # Only a regular file with no other name: never through a link to something
                    # outside (a venv's interpreter is a symlink; a hard link could be one too).
                    if stat.S_ISREG(meta.st_mode) and meta.st_nlink == 1:
                        os.truncate(path, 0)
        self._retired += 1
        folder.rename(self.path / str(self._retired))

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def remove(folder: Path, attic: Attic | None) -> None:
    """``folder`` gone: into the ``attic`` when a sitting keeps one, else removed now."""
    if attic is not None:
        attic.retire(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Target:
    """A server under test: start(), stop() (restartable), close(), pid, url, tus prefix, stored_sha256(url)."""

    name = "?"
    protocols = ("tus",)
    prefix = "/files/"

    def __init__(self, attic: Attic | None = None) -> None:
        """``attic``: the sitting's, where what the server stored and installed waits to be
        removed (:class:`Attic`); without one, it is removed at once."""
        self.attic = attic
        slug = "".join(c if c.isalnum() else "-" for c in self.name)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"vezabench-{slug}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._installed = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def install(self) -> None:
        """Install the server's packages into self.tmp."""

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def start(self, timeout: float = 60) -> None:
        if not self._installed:
            self.install()
            self._installed = True
        cmd, env = self.command()
        self.proc = subprocess.Popen(cmd, cwd=self.tmp, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                     stderr=open(self.tmp / "server.log", "wb"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {(self.tmp / 'server.log').read_text()[-2000:]}")
            try:
                req = urllib.request.Request(self.url + self.prefix, method="OPTIONS",
                                             headers={"Tus-Resumable": "1.0.0"})
                urllib.request.urlopen(req, timeout=2)
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not start")

    def stop(self) -> None:
        """Stop the server and drop what it stored; start() may run it again (installed once)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self.reset()

    def reset(self) -> None:
        """Remove the stored uploads, so every run starts from the same empty store."""
        if self.store.exists():
            remove(self.store, self.attic)
            self.store.mkdir()

    def close(self) -> None:
        self.stop()
        remove(self.tmp, self.attic)

    def log_tail(self, lines: int = 40) -> str:
        """The end of what the server wrote to stderr (before close())."""
        path = self.tmp / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stored_sha256(self, upload_url: str, filename: str) -> str:
        upload_id = upload_url.rstrip("/").rsplit("/", 1)[1]
        return sha256_file(self.store / upload_id)

    def describe(self) -> str:
        """The setup the server ran with, as it reported it once started (package versions,
        server, event loop, HTTP parser); "?" if it never started."""
        path = self.tmp / "setup.txt"
        return path.read_text().strip() if path.exists() else "?"

    @property
    def store(self) -> Path:
        return self.tmp / "store"


class Vezastream(Target):
    name = "vezastream"
    protocols = ("native", "tus")

    def __init__(self, serve_args: list[str] | None = None, env: dict[str, str] | None = None,
                 data_dir: Path | None = None, attic: Attic | None = None) -> None:
        """``env``: more settings (``VEZASTREAM_<TABLE>__<KEY>``, e.g. ``redis.url``); ``data_dir``: a
        ``storage.data_dir`` of the caller's (several nodes sharing one), else one of its own."""
        super().__init__(attic)
        self.serve_args = serve_args or []
        self.env = env or {}
        self.data_dir = data_dir or self.tmp / "data"
        self._own_data = data_dir is None

    @property
    def redis_url(self) -> str:
        """The Redis it runs on: ``redis.url`` when given, else its bundled one's socket."""
        return self.env.get("VEZASTREAM_REDIS__URL") or f"unix://{self.data_dir / 'redis' / 'redis.sock'}"

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = {"VEZASTREAM_STORAGE__DATA_DIR": str(self.data_dir), "VEZASTREAM_SERVER__PORT": str(self.port),
               "VEZASTREAM_LOG__LEVEL": "WARNING", "VEZASTREAM_LIMITS__MIN_CHUNK_SIZE": "1",
               # One anonymous client creates up to 2,000 uploads in seconds (W2, slow clients): the
               # per-user limits are off, as the peers have none.
               "VEZASTREAM_LIMITS__MAX_CREATES_PER_MINUTE": "0", "VEZASTREAM_LIMITS__MAX_PENDING_UPLOADS": "0",
               **self.env}
        return [sys.executable, "-m", "vezastream.cli", "serve", *self.serve_args], env

    def start(self, timeout: float = 60) -> None:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # OPTIONS may answer before the app is ready
            try:
                urllib.request.urlopen(self.url + "/v1/health/deep", timeout=2)
                return
            except OSError:
                time.sleep(0.1)

    def stored_sha256(self, upload_url: str, filename: str) -> str:
        return ""  # the bench reads vezastream's bytes back over HTTP instead

    def describe(self) -> str:
        """vezastream runs on the bench's interpreter: its versions and loop (server.event_loop
        "auto") are this process's."""
        from importlib.metadata import version
        from importlib.util import find_spec

        from aiohttp import http_parser

        loop = f"loop uvloop {version('uvloop')}" if find_spec("uvloop") else "loop asyncio"
        c = http_parser.HttpRequestParser.__module__ == "aiohttp._http_parser"
        args = f", serve {' '.join(self.serve_args)}" if self.serve_args else ", 1 process"
        return (f"vezastream {version('vezastream')}, aiohttp {version('aiohttp')}, {loop}, "
                f"aiohttp {'C' if c else 'pure-Python'} parser, Python {sys.version.split()[0]}{args}")

    def reset(self) -> None:
        if self._own_data:  # a shared data_dir is its owner's to remove
            remove(self.data_dir, self.attic)


class TusNode(Target):
    name = "@tus/server"

    def install(self) -> None:
        (self.tmp / "package.json").write_text('{"private": true, "type": "module"}')
        run_quietly(["npm", "install", "--silent", "--no-audit", "--no-fund", "@tus/server@2",
                     "@tus/file-store@2"], cwd=self.tmp)
        (self.tmp / "server.mjs").write_text(NODE_SERVER)
        self.store.mkdir()

    def command(self) -> tuple[list[str], dict[str, str]]:
        return ["node", "server.mjs", str(self.store), str(self.port)], {}


class PythonPeer(Target):
    """A peer installed from PyPI into its own venv, run by a server script."""

    packages: tuple[str, ...] = ()
    script = ""

    def install(self) -> None:
        run_quietly([sys.executable, "-m", "venv", str(self.tmp / "venv")])
        run_quietly([str(self.tmp / "venv/bin/pip"), "install", "-q", *self.packages])
        (self.tmp / "server.py").write_text(self.script)
        self.store.mkdir()

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [str(self.tmp / "venv/bin/python"), "server.py", str(self.store), str(self.port)], {}


class Tuspyserver(PythonPeer):
    name = "tuspyserver"
    packages = ("tuspyserver==4.4.*", "uvicorn[standard]")  # [standard]: uvloop and httptools
    script = TUSPY_SERVER


class AiohttpTus(PythonPeer):
    """aiohttp-tus: keeps each upload in ``.resources/<uid>`` and, once complete, moves it to
    the name in its ``filename`` metadata (it refuses a name already stored)."""

    name = "aiohttp-tus"
    prefix = "/uploads"
    packages = ("aiohttp-tus==1.1.*", "aiohttp", "uvloop")
    script = AIOHTTP_TUS_SERVER

    def stored_sha256(self, upload_url: str, filename: str) -> str:
        return sha256_file(self.store / filename)


class BareAiohttp(Target):
    """The machine's limit for a Python server: an aiohttp handler appending each body to a file.

    No fsync, no hashing, no state, no offset checks: only the tus requests
    the benchmark sends. Shown beside the peers, never counted as one.
    """

    name = "bare aiohttp (limit)"

    def install(self) -> None:
        (self.tmp / "server.py").write_text(BARE_SERVER)
        self.store.mkdir()

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "server.py", str(self.store), str(self.port)], {}


PEERS = {"tus-node": TusNode, "tuspyserver": Tuspyserver, "aiohttp-tus": AiohttpTus}
#: What the machine allows, run beside the peers by ``--compare`` (``--no-limit`` leaves it out).
LIMITS = {"bare-aiohttp": BareAiohttp}
