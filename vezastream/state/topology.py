"""Redis topologies (``redis.mode``): the client each one needs, the start-up check, what readiness shows.

* ``standalone``: one server at ``redis.url`` (or the bundled one), a blocking connection pool;
* ``cluster``: redis-py's :class:`~redis.asyncio.cluster.RedisCluster`, started from
  ``redis.cluster_nodes``; it follows the slot map and its redirections itself;
* ``sentinel``: redis-py's :class:`~redis.asyncio.sentinel.Sentinel` finds the master named
  ``redis.sentinel_master``, and its pool re-asks the sentinels after a failover; while a
  failover is under way no server counts as the master (:class:`FailoverAwareSentinel`).

A mode that does not match the server (a cluster node named as a standalone ``url``, a plain
server named as a cluster node or a sentinel) stops the start-up with a :class:`ConfigError` that
names the fix, instead of a ``MovedError`` per request. Passwords come from the environment
variables the config names, never from the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError, ResponseError

from ..config import ConfigError, RedisSettings
from . import refusals

#: Redis client: seconds to connect (to wait for one reply: ``redis.reply_timeout``).
CONNECT_TIMEOUT = 5


class FailoverAwareSentinel(Sentinel):
    """Names no master while the sentinels fail the master over.

    Until the failover ends, ``SENTINEL MASTERS`` still names the old master. redis-py takes it
    for the master again as soon as it answers pings, and a crashed master that a supervisor
    restarted does: empty, about to be made a replica of the new one. Writes acknowledged there
    would be lost. So the failover's few seconds answer 503 (retry) instead.
    """

    def check_master_state(self, state: dict, service_name: str) -> bool:
        flags = state.get("flags", "")
        if isinstance(flags, bytes):
            flags = flags.decode()
        if "failover_in_progress" in flags.split(","):
            return False
        return super().check_master_state(state, service_name)


def _address(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    return host, int(port)


def _password(name: str) -> str | None:
    return os.environ.get(name) or None if name else None


@asynccontextmanager
async def connect(r: RedisSettings, url: str) -> AsyncIterator[Any]:
    """The client for ``r.mode`` (``url``: the standalone server's), checked against what it reaches."""
    timeouts = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": r.reply_timeout}
    sentinel = None
    client: Any
    if r.mode == "cluster":
        client = RedisCluster(startup_nodes=[ClusterNode(*_address(a)) for a in r.cluster_nodes],
                              decode_responses=True, password=_password(r.password_env),
                              max_connections=r.max_connections, **timeouts)
    elif r.mode == "sentinel":
        # A sentinel that fails is left for the next one at once, as commands to the master are not
        # retried either: redis-py's default retries asked it 10 more times, about 4 s, at each look-up.
        sentinel = FailoverAwareSentinel([_address(a) for a in r.sentinels], decode_responses=True,
                                         sentinel_kwargs={"password": _password(r.sentinel_password_env),
                                                          "retry": Retry(NoBackoff(), 0), **timeouts})
        client = sentinel.master_for(r.sentinel_master, password=_password(r.password_env),
                                     max_connections=r.max_connections, **timeouts)
    else:
        # A blocking pool: under load, requests wait for a connection instead of failing.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=r.max_connections, timeout=10,
                                                        decode_responses=True, **timeouts)
        client = aioredis.Redis.from_pool(pool)
    try:
        yield client
    finally:
        await client.aclose()
        if sentinel is not None:
            for s in sentinel.sentinels:
                await s.aclose()


async def check_mode(r: RedisSettings, client: Any) -> None:
    """Raise :class:`ConfigError` when the server is not what ``redis.mode`` says or refuses the
    password, ``RuntimeError`` when it cannot be reached (start-up: one line, not a traceback)."""
    try:
        if r.mode == "cluster":
            await client.initialize()
        seen = (await client.info("server")).get("redis_mode", "standalone")
    except (RedisError, RedisClusterException) as exc:
        if isinstance(exc, MasterNotFoundError):
            await _refuse_an_unknown_master(r, client)
        raise _refused(r, exc) from None
    if isinstance(seen, dict):  # a cluster answers per node
        seen = next(iter(seen.values()), {}).get("redis_mode", "standalone")
    if r.mode == "standalone" and seen == "cluster":
        raise ConfigError('redis.mode: redis.url names a Redis Cluster node; set redis.mode = "cluster" '
                          "and redis.cluster_nodes")
    if r.mode == "standalone" and seen == "sentinel":
        raise ConfigError('redis.mode: redis.url names a Sentinel; set redis.mode = "sentinel", '
                          "redis.sentinels and redis.sentinel_master")


async def _refuse_an_unknown_master(r: RedisSettings, client: Any) -> None:
    """Raise :class:`ConfigError` when a sentinel answers ``SENTINEL MASTERS`` without
    ``redis.sentinel_master``: redis-py's "No master found" reads as if they had not answered."""
    monitored: set[str] = set()
    answered = False
    for sentinel in client.connection_pool.sentinel_manager.sentinels:
        try:
            monitored.update(await sentinel.sentinel_masters())
        except (RedisError, OSError):  # unreachable, refusing the password, not a sentinel: _refused says
            continue
        answered = True
    if answered and r.sentinel_master not in monitored:
        names = ", ".join(sorted(monitored)) or "none"
        raise ConfigError(f"redis.sentinel_master: the sentinels monitor no master named {r.sentinel_master!r}; "
                          f"they monitor: {names}")


#: What redis-py's errors say when a server refused the password, or asked for one. Redis 6.2+ answers
#: an unauthenticated HELLO (redis-py's RESP3 handshake) "NOAUTH HELLO must be called with the client
#: already authenticated ...", and a Cluster's start-up quotes that text without its NOAUTH.
_AUTH_FAILED = ("AuthenticationError", "WRONGPASS", "NOAUTH", "username-password", "Authentication required",
                "HELLO must be called with the client already authenticated")


#: A redis-py client's repr inside an error's text (redis-py 8 names each sentinel it asked so): the
#: whole connection pool's settings, long and of no use to an operator; its address is what counts.
_CLIENT_REPR = re.compile(r"<redis\.[\w.]+\(.*?\)>+(?= - )")
_ADDRESS = re.compile(r"host=([^,]+),port=(\d+)")


def _readable(text: str) -> str:
    """``text`` with each redis-py client's repr replaced by its address."""
    def address(m: re.Match[str]) -> str:
        at = _ADDRESS.search(m.group(0))
        return f"{at.group(1)}:{at.group(2)}" if at else "a server"
    return _CLIENT_REPR.sub(address, text)


def _refused(r: RedisSettings, exc: Exception) -> Exception:
    """What a start-up that could not ask Redis raises: which setting to fix, or what was not reached."""
    text = _readable(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, AuthenticationError) or any(sign in text for sign in _AUTH_FAILED):
        if r.mode == "standalone":  # the url carries the password (redis://:password@host)
            return ConfigError("redis.url: Redis refused the password in the url, or asks for one it lacks")
        if isinstance(exc, MasterNotFoundError):  # the sentinels refused it, before naming a master
            key, env, who = "redis.sentinel_password_env", r.sentinel_password_env, "the sentinels"
        else:
            key, env, who = "redis.password_env", r.password_env, "Redis"
        given = f"the password in ${env}" if env else "no password (it asks for one)"
        return ConfigError(f"{key}: {who} refused {given}")
    if r.mode == "cluster" and "cluster mode is not enabled" in text.lower():
        return ConfigError(f'redis.mode: "cluster", but {", ".join(r.cluster_nodes)} is not a Redis Cluster; '
                           'set redis.mode = "standalone" and redis.url')
    # A plain server asked SENTINEL MASTERS: redis-py 8.1 raises its ResponseError, 8.2 names it in a
    # MasterNotFoundError.
    if r.mode == "sentinel" and isinstance(exc, (ResponseError, MasterNotFoundError)) \
            and "unknown command" in text.lower():
        return ConfigError(f'redis.sentinels: {", ".join(r.sentinels)} is not a Sentinel; name the sentinels, '
                           'or set redis.mode = "standalone" and redis.url')
    return RuntimeError(f"cannot start: Redis ({_setting(r)}) did not answer: {text}")


def _setting(r: RedisSettings) -> str:
    """The setting that names the Redis servers of ``r.mode``."""
    return {"cluster": "redis.cluster_nodes", "sentinel": "redis.sentinels"}.get(r.mode, "redis.url")


class TooFewReplicas(Exception):
    """A master has fewer connected replicas than ``redis.min_replica_acks``: every chunk would answer 503."""

    def __init__(self, short: dict[str, int], wanted: int) -> None:
        self.short, self.wanted = short, wanted
        masters = ", ".join(f"{name} has {count}" for name, count in short.items())
        super().__init__(f"redis.min_replica_acks = {wanted}, but {masters} connected replica(s)")


async def check_replicas(client: Any, wanted: int) -> None:
    """Raise :class:`TooFewReplicas` when the master (on a Cluster: a primary) has fewer connected
    replicas (``INFO replication``'s ``connected_slaves``) than ``wanted``: a WAIT there cannot succeed."""
    if wanted <= 0:
        return
    answers = await _per_master(client, "replication")
    short = {name: int(info.get("connected_slaves", 0)) for name, info in answers.items()
             if int(info.get("connected_slaves", 0)) < wanted}
    if short:
        raise TooFewReplicas(dict(sorted(short.items())), wanted)


async def evicting(client: Any) -> dict[str, str]:
    """The servers (each primary of a Cluster) that may evict keys to make room: a ``maxmemory`` set
    with a ``maxmemory-policy`` other than ``noeviction`` (every key of ours has a TTL, so the
    ``volatile-*`` policies take them too): server -> policy (``INFO memory``)."""
    answers = await _per_master(client, "memory")
    return {name: info.get("maxmemory_policy", "") for name, info in answers.items()
            if int(info.get("maxmemory", 0)) and info.get("maxmemory_policy", "noeviction") != "noeviction"}


async def _per_master(client: Any, section: str) -> dict[str, dict[str, Any]]:
    """``INFO section`` of the master (each primary of a Cluster), by its address."""
    if isinstance(client, RedisCluster):
        answers = await client.info(section, target_nodes=RedisCluster.PRIMARIES)
        if answers and not isinstance(next(iter(answers.values())), dict):  # a cluster of one answers for itself
            answers = {client.get_primaries()[0].name: answers}
        return answers
    kwargs = client.connection_pool.connection_kwargs
    name = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    get_master_address = getattr(client.connection_pool, "get_master_address", None)
    if get_master_address is not None:  # Sentinel: the master it names now
        host, port = await get_master_address()
        name = f"{host}:{port}"
    return {name: await client.info(section)}


async def check_start(r: RedisSettings, client: Any, prefix: str) -> None:
    """Raise ``RuntimeError`` (start-up: one line) when Redis refuses writes (out of memory, a read-only
    replica, ...): the node could not even write its heartbeat."""
    try:
        await check_writes(client, f"{prefix}:probe")
    except RedisError as exc:
        why = refusals.reason(exc)
        if why is None:
            raise
        raise RuntimeError(f"cannot start: Redis ({_setting(r)}) refuses writes ({why}): {type(exc).__name__}: {exc}"
                           ) from None


#: Keys tried at most to find one that a Cluster primary serves (a slot of a third of them: a few tries).
PROBE_KEYS = 10_000


async def check_writes(client: Any, key: str) -> None:
    """Raise the refusal (state/refusals.py) of a Redis that would refuse a write now: out of memory,
    a read-only replica, unable to persist, a password refused. ``SET key "" XX`` of a ``key`` that is
    never set writes nothing, yet Redis makes every check of a write before it runs. On a Cluster,
    once on each primary (with a key of one of its slots)."""
    if not isinstance(client, RedisCluster):
        try:
            await client.execute_command("SET", key, "", "XX")
        except ResponseError as exc:
            if refusals.reason(exc) == "read-only":  # idle connections may reach an old master: new ones next
                await client.connection_pool.disconnect(inuse_connections=False)
            raise
        return
    for node in client.get_primaries():
        await client.execute_command("SET", _served_by(client, node, key), "", "XX", target_nodes=node)


def _served_by(client: RedisCluster, node: ClusterNode, key: str) -> str:
    """``key`` with a suffix that puts it in a slot ``node`` serves (as redis-py's slot map has it)."""
    for i in range(PROBE_KEYS):
        candidate = f"{key}:{i}"
        if client.get_node_from_key(candidate).name == node.name:
            return candidate
    raise RedisClusterException(f"no slot of {node.name} among {PROBE_KEYS} keys")


async def describe(r: RedisSettings, client: Any) -> dict[str, Any]:
    """The topology as this node sees it (readiness): no password, nothing but addresses and counts."""
    if r.mode == "cluster":
        info = await client.cluster_info()  # asked of one node: its view of the cluster
        slots = int(info.get("cluster_slots_ok", 0))
        return {"mode": "cluster", "primaries": len(client.get_primaries()), "replicas": len(client.get_replicas()),
                "slots_covered": slots, "cluster_state": info.get("cluster_state")}
    pool = client.connection_pool
    host, port = await pool.get_master_address()
    replicas = await pool.sentinel_manager.discover_slaves(r.sentinel_master)
    return {"mode": "sentinel", "master": f"{host}:{port}", "replicas": [f"{h}:{p}" for h, p in replicas]}
