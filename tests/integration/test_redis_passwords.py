"""``redis.password_env`` and ``redis.sentinel_password_env``: the passwords of the Redis servers and of
the sentinels come from the environment variables the config names (docs/configuration.md, "Redis").

Real servers with ``requirepass`` (the kit's ``redis-server``, as tests/redis_topologies.py starts
them): a Sentinel setup (a master and one sentinel, each with its own password) and a 3-master
Cluster. With the right passwords vezastream starts and uploads; a variable that is not set stops
the start with a config error naming the key; a wrong password stops ``vezastream serve`` without
printing the password.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import servers
from launchers import cluster_port, free_port
from tests.redis_topologies import SERVICE, RedisProcess
from vezastream.testing import content, random_bytes, server_binary, upload

#: The environment variables the config names (``redis.password_env``, ``redis.sentinel_password_env``).
PASSWORD_ENV = "VZ_TEST_REDIS_PASSWORD"
SENTINEL_PASSWORD_ENV = "VZ_TEST_SENTINEL_PASSWORD"
PASSWORD = "redis-" + secrets.token_hex(8)
SENTINEL_PASSWORD = "sentinel-" + secrets.token_hex(8)
WRONG = "wrong-" + secrets.token_hex(8)


def start_locked(folder: Path, password: str, *lines: str, sentinel: bool = False, port: int = 0) -> RedisProcess:
    """A redis-server (or sentinel) on 127.0.0.1 that requires ``password``; ready when it answers to it."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "redis.conf"
    conf.write_text("\n".join([f"port {port}", "bind 127.0.0.1", f"dir {folder}", 'save ""', "appendonly no",
                               f"requirepass {password}", *lines]) + "\n")
    proc = subprocess.Popen([server_binary(), str(conf)] + (["--sentinel"] if sentinel else []),
                            stdout=(folder / "log").open("wb"), stderr=subprocess.STDOUT)
    node = RedisProcess(port, proc, folder)
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, f"redis on port {port} exited with {proc.returncode}"
        try:
            if redis.Redis(port=port, password=password, socket_timeout=2).ping():
                return node
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"redis on port {port}: not ready after 15 s"
        time.sleep(0.05)


@dataclass
class Locked:
    """Locked servers and the settings that name them (without the password keys)."""

    processes: list[RedisProcess]
    settings: dict

    def stop(self) -> None:
        for p in self.processes:
            p.stop()


@pytest.fixture(scope="module")
def locked_sentinel(tmp_path_factory) -> Iterator[Locked]:
    """A master that requires PASSWORD, watched by one sentinel that requires SENTINEL_PASSWORD."""
    folder = tmp_path_factory.mktemp("locked-sentinel")
    started: list[RedisProcess] = []
    try:
        master = start_locked(folder / "master", PASSWORD, f"masterauth {PASSWORD}")
        started.append(master)
        started.append(start_locked(folder / "sentinel", SENTINEL_PASSWORD,
                                    f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1",
                                    f"sentinel auth-pass {SERVICE} {PASSWORD}", sentinel=True))
        yield Locked(started, {"redis.url": "", "redis.mode": "sentinel", "redis.sentinel_master": SERVICE,
                               "redis.sentinels": [started[1].address]})
    finally:
        for p in started:
            p.stop()


@pytest.fixture(scope="module")
def locked_cluster(tmp_path_factory) -> Iterator[Locked]:
    """A Redis Cluster of 3 masters (no replicas), each requiring PASSWORD."""
    folder = tmp_path_factory.mktemp("locked-cluster")
    nodes: list[RedisProcess] = []
    try:
        for i in range(3):
            nodes.append(start_locked(folder / f"node{i}", PASSWORD, "cluster-enabled yes",
                                      f"cluster-config-file {folder}/nodes{i}.conf", "cluster-node-timeout 1000",
                                      f"masterauth {PASSWORD}", port=cluster_port()))
        cli = str(Path(server_binary()).with_name("redis-cli"))
        subprocess.run([cli, "-a", PASSWORD, "--no-auth-warning", "--cluster", "create",
                        *(n.address for n in nodes), "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        first = redis.Redis(port=nodes[0].port, password=PASSWORD, decode_responses=True, socket_timeout=5)
        deadline = time.monotonic() + 15
        while first.cluster("INFO").get("cluster_state") != "ok":
            assert time.monotonic() < deadline, "the locked cluster did not reach cluster_state ok"
            time.sleep(0.1)
        yield Locked(nodes, {"redis.url": "", "redis.mode": "cluster", "redis.cluster_nodes": [nodes[0].address]})
    finally:
        for n in nodes:
            n.stop()


@pytest.fixture(params=["sentinel", "cluster"])
def locked(request) -> Locked:
    return request.getfixturevalue(f"locked_{request.param}")


def test_the_servers_really_are_locked(locked_sentinel, locked_cluster):
    """Without a password nothing answers: what the tests below show is the password's doing."""
    for p in locked_sentinel.processes + locked_cluster.processes:
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=p.port, socket_timeout=5, retry=Retry(NoBackoff(), 0)).ping()


async def test_the_passwords_from_the_named_variables_open_the_servers(make_client, make_settings, monkeypatch,
                                                                         locked):
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(SENTINEL_PASSWORD_ENV, SENTINEL_PASSWORD)
    settings = make_settings(**locked.settings, **{"redis.password_env": PASSWORD_ENV,
                                                   "redis.sentinel_password_env": SENTINEL_PASSWORD_ENV})
    client = await make_client(settings)
    data = random_bytes(200_000)
    results = [await upload(client, data, 64 * 1024) for _ in range(3)]  # on a cluster, most masters
    for result in results:
        assert await content(client, result["upload_id"]) == (200, data)
    deep = await client.get("/v1/health/deep")
    assert deep.status == 200, await deep.text()
    assert (await deep.json())["redis"]["mode"] == settings.redis.mode


# -- a start without the right password: `vezastream serve` as a user runs it

def serve_env(tmp_path: Path, locked: Locked, **passwords: str) -> dict[str, str]:
    """``vezastream serve``'s environment: the topology, the keys naming the variables, and ``passwords``
    (variable -> value; a variable left out is not set)."""
    topology = {f"REDIS__{key.split('.')[1].upper()}": value if isinstance(value, str) else json.dumps(value)
                for key, value in locked.settings.items() if key != "redis.url"}
    if locked.settings["redis.mode"] == "sentinel":
        topology["REDIS__SENTINEL_PASSWORD_ENV"] = SENTINEL_PASSWORD_ENV
    env = servers.server_env(tmp_path, REDIS__PASSWORD_ENV=PASSWORD_ENV, **topology)
    env.update(passwords)
    return env


def serve(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``vezastream serve``, which must stop by itself (servers.run bounds it: 60 s)."""
    return servers.run(["serve"], env, tmp_path)


@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_a_password_variable_that_is_not_set_stops_the_start_naming_the_key(tmp_path, request, monkeypatch,
                                                                            topology):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    locked = request.getfixturevalue(f"locked_{topology}")
    env = serve_env(tmp_path, locked, **{SENTINEL_PASSWORD_ENV: SENTINEL_PASSWORD})
    done = serve(tmp_path, env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"vezastream: config error: redis.password_env: {PASSWORD_ENV} "
                                   "is not set in the environment"), done.stderr


@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_a_server_that_asks_for_a_password_none_is_configured_for_names_redis_password_env(tmp_path, request,
                                                                                          topology):
    """No redis.password_env at all: the servers ask for one. Redis 6.2+ answers an unauthenticated HELLO
    "HELLO must be called with the client already authenticated", which a Cluster's start-up met as
    raw redis-py text and exit status 1; Sentinel and Cluster both name the key (exit status 2)."""
    env = serve_env(tmp_path, request.getfixturevalue(f"locked_{topology}"),
                    **{SENTINEL_PASSWORD_ENV: SENTINEL_PASSWORD})
    del env["VEZASTREAM_REDIS__PASSWORD_ENV"]
    done = serve(tmp_path, env)
    assert done.stderr.strip() == ("vezastream: config error: redis.password_env: Redis refused no password "
                                   "(it asks for one)"), done.stderr[-2000:]
    assert done.returncode == 2


#: Wrong passwords: (topology, the variables' values, the key the start-up message must name).
WRONG_PASSWORDS = {
    "sentinel-master": ("sentinel", {PASSWORD_ENV: WRONG, SENTINEL_PASSWORD_ENV: SENTINEL_PASSWORD},
                        "redis.password_env"),
    "sentinel-sentinels": ("sentinel", {PASSWORD_ENV: PASSWORD, SENTINEL_PASSWORD_ENV: WRONG},
                           "redis.sentinel_password_env"),
    "cluster": ("cluster", {PASSWORD_ENV: WRONG}, "redis.password_env"),
}


@pytest.fixture(scope="module")
def refused() -> dict[str, subprocess.CompletedProcess[str]]:
    """Each wrong-password start, run once for the tests that look at it."""
    return {}


def refused_start(case: str, request, tmp_path_factory, refused) -> subprocess.CompletedProcess[str]:
    if case not in refused:
        topology, passwords, _ = WRONG_PASSWORDS[case]
        folder = tmp_path_factory.mktemp(f"wrong-{case}")
        refused[case] = serve(folder, serve_env(folder, request.getfixturevalue(f"locked_{topology}"), **passwords))
    return refused[case]


@pytest.mark.parametrize("case", list(WRONG_PASSWORDS))
def test_a_wrong_password_stops_the_start_without_printing_it(case, request, tmp_path_factory, refused):
    done = refused_start(case, request, tmp_path_factory, refused)
    assert done.returncode != 0, done.stderr
    assert WRONG not in done.stdout + done.stderr and PASSWORD not in done.stdout + done.stderr
    assert "listening" not in done.stderr
    assert "Authentication" in done.stderr or "password" in done.stderr, done.stderr[-2000:]  # the password refused


@pytest.mark.parametrize("case", list(WRONG_PASSWORDS))
def test_a_wrong_password_stops_the_start_with_one_line_naming_the_key(case, request, tmp_path_factory, refused):
    """docs/operations.md: "A start that cannot go on prints one line and exits"; configuration.md:
    a bad setting stops the start-up "with one line naming the key"."""
    done = refused_start(case, request, tmp_path_factory, refused)
    _, _, key = WRONG_PASSWORDS[case]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vezastream: "), done.stderr[-2000:]
    assert key in lines[0] and 'set redis.mode = "standalone"' not in lines[0], lines[0]
    assert done.returncode == 2, done.stderr


def test_a_redis_that_does_not_answer_stops_the_start_with_one_line(tmp_path):
    """operations.md: a start that cannot go on prints one line and exits (1: not the configuration's fault)."""
    env = servers.server_env(tmp_path, f"redis://127.0.0.1:{servers.free_port()}/0")
    done = serve(tmp_path, env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("vezastream: cannot start: Redis (redis.url) did not answer: ConnectionError"), lines


@pytest.mark.parametrize("mode, named", [("cluster", ["127.0.0.1:7000"]), ("standalone", [])])
def test_only_the_password_variables_a_mode_reads_must_be_set(mode, named):
    """configuration.md: redis.sentinel_password_env is the sentinels' (read in sentinel mode only),
    redis.password_env the cluster's or sentinel-watched servers' (a standalone url carries its own)."""
    from vezastream.config import load_settings
    overrides = {"redis.mode": mode, "redis.sentinel_password_env": "VZ_NO_SUCH_VARIABLE_1",
                 **({"redis.cluster_nodes": named} if named else {"redis.password_env": "VZ_NO_SUCH_VARIABLE_2"})}
    assert load_settings(None, environ={}, overrides=overrides).redis.mode == mode


def test_a_standalone_redis_that_refuses_the_url_s_password_names_redis_url(request, tmp_path, monkeypatch):
    """A standalone url carries its own password: a refusal names redis.url, not redis.password_env."""
    locked = request.getfixturevalue("locked_sentinel")  # its master: a plain server that wants PASSWORD
    master = locked.processes[0]
    env = servers.server_env(tmp_path, f"redis://:{WRONG}@{master.address}/0")
    done = serve(tmp_path, env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "redis.url" in lines[0] and WRONG not in done.stderr, lines
