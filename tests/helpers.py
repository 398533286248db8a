"""Helpers the tests share: the client-side ones (what a real client would do) live in the kit."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prometheus_client.parser import text_string_to_metric_families

from vezastream import errors, hookimpl
from vezastream.http.app import engine_key
from vezastream.testing import content, create, put_chunk, random_bytes, sha256, split, upload

__all__ = ["DEAD", "WRITERS", "Job", "Quota", "chattr", "content", "create", "held_open", "immutable", "put_chunk", "random_bytes", "samples", "scrape",
           "sha256", "split", "status_of", "store_of", "strand", "upload", "value", "writer_of"]


class Quota:
    """A configurable test plugin's hooks (what its configure hook returns): files up to ``max_size``."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size

    @hookimpl
    def vezastream_validate_upload(self, upload):
        if upload.total_size > self.max_size:
            raise errors.TooLarge(f"this server takes files up to {self.max_size} bytes")


def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


@contextlib.contextmanager
def immutable(folder: Path) -> Iterator[Path]:
    """``folder`` made immutable (``chattr +i``: no entry made, removed or renamed in it, whoever asks,
    root too), and mutable again at the end; the test is skipped where that is not allowed."""
    try:
        chattr("+i", folder)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("chattr +i is not allowed here")
    try:
        yield folder
    finally:
        chattr("-i", folder)


def writer_of(client) -> str:
    """Which writer the app's staging area gives small bodies: "libaio", "caio" or "thread"."""
    kernel = client.server.app[engine_key].staging.kernel
    return "thread" if kernel is None else "libaio" if kernel.aligned else "caio"


#: Each writer of a chunk's body (vezastream/staging), as ``(writer, in_place, size, overrides)``: small
#: bodies of a native upload go to the kernel's AIO only in place; chunk files are written by threads.
#: For "caio", hide libaio (``sys.modules["libaio"] = None``), as on a system without libaio.so.1.
WRITERS = [
    ("libaio", True, 64 * 1024, {"storage.direct_io": True}),  # its whole blocks: allocated first, then O_DIRECT
    ("libaio", True, 64 * 1024, {"storage.direct_io": False}),
    ("caio", True, 64 * 1024, {}),
    *(("thread", in_place, size, {"storage.kernel_io": "off"}) for in_place in (True, False)
      for size in (512 * 1024,  # one trip: written, synced, closed
                   5 * 1024 * 1024)),  # fills buffers: fails in the trip that opens the file
]


def held_open(folder: Path) -> list[str]:
    """Files under ``folder`` that this process holds open (test servers run in it)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (or the listing's own descriptor)
            continue
        if target.startswith(str(folder)):
            held.append(target)
    return held


# -- /metrics scrapes

def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


async def scrape(client, **headers: str) -> dict:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return samples(await resp.text())


# -- what a process killed mid-completion leaves

#: A lease token of a process that died (it never beats).
DEAD = "deadbeefdeadbeef.7"


def store_of(client):
    return client.server.app[engine_key].store


async def strand(client, uid: str, holder: str | None) -> None:
    """What a process killed mid-completion leaves: ``completing``, with its lease (or none: it expired)."""
    store = store_of(client)
    await store.redis.hset(store.key(uid), "status", "completing")
    if holder is not None:
        await store.redis.set(store.lease_key(uid), holder, px=30_000)


async def status_of(client, uid: str) -> str:
    return str(await store_of(client).status(uid))


# -- the drills' uploads

@dataclass(frozen=True)
class Job:
    """One upload of a drill: by which door, its bytes, and its chunk (native) or PATCH (tus) size."""

    door: str
    data: bytes
    piece: int


async def completed_after_cut_short(client, settings) -> dict:
    """Send a 3,000-byte upload's three chunks in order, cut its last staged file to 500 bytes
    (registered bytes no longer on disk: storage.durable off and a crash, or a hand at work), then
    complete it; the problem+json answer, checked as 422 integrity-error naming no server path."""
    data = random_bytes(3000)
    uid = (await create(client, total_size=len(data), chunk_size=1000))["upload_id"]
    for n, piece in enumerate(split(data, 1000), 1):  # in order: in place, the running digest covers them all
        await put_chunk(client, uid, n, piece)
    staged = sorted(p for p in settings.storage.chunks_dir.rglob("*") if p.is_file())
    os.truncate(staged[-1], 500)  # in place: the data file; chunk files: the last chunk's
    done = await client.post(f"/v1/uploads/{uid}/complete")
    problem = await done.json(content_type=None)
    assert done.status == 422 and problem["type"].endswith("/integrity-error"), problem
    assert str(settings.storage.data_dir) not in problem["detail"]
    return {**problem, "upload_id": uid}


def loopback_tls(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1, its certificate signed by a CA made for the test: (the context,
    the CA's certificate, which a client given it as its bundle, e.g. ``SSL_CERT_FILE``, trusts)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                critical=True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("vezastream test CA", ca_key, "vezastream test CA", ca_key, ca=True)
    leaf = certificate("127.0.0.1", key, "vezastream test CA", ca_key, ca=False)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context, folder / "ca.pem"


def listening(proc: subprocess.Popen, port: int, name: str, within: float = 10) -> None:
    """Once ``proc`` (``name``) takes connections on ``port`` of 127.0.0.1."""
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.05)


@contextlib.contextmanager
def nginx(folder: Path, upstream: str) -> Iterator[str]:
    """Debian's nginx as a reverse proxy to ``upstream`` (a URL) with nginx's defaults (bodies up to
    1 MB: ``client_max_body_size``), on a free port, stopped by its PID: its URL. Skipped without
    nginx (failed under CI: scripts/test installs nginx-light)."""
    binary = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if binary is None:
        message = "no nginx (scripts/test installs Debian's nginx-light)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from servers import free_port

    port = free_port()
    folder.mkdir(parents=True)
    (folder / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        f"events {{ worker_connections 64; }}\nhttp {{ access_log off; client_body_temp_path {folder}/body; "
        f"proxy_temp_path {folder}/proxy;\n  server {{ listen 127.0.0.1:{port}; "
        f"location / {{ proxy_pass {upstream}; }} }}\n}}\n")
    proc = subprocess.Popen([binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listening(proc, port, "nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)  # a graceful stop
        proc.wait(10)
