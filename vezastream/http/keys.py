"""The app's state, under typed ``web.AppKey``s: what ``create_app`` opens, for handlers, the GC and tests."""

from __future__ import annotations

import pluggy
import redis.asyncio as aioredis
from aiohttp import web

from ..config import Settings
from ..engine.engine import UploadEngine
from ..gc import GarbageCollector
from ..hooks import Hooks
from ..sinks import Sink
from ..state.redis_server import BundledRedis

settings_key = web.AppKey("settings", Settings)
plugin_manager_key = web.AppKey("plugin_manager", pluggy.PluginManager)
sink_key = web.AppKey("sink", Sink)
redis_key = web.AppKey("redis", aioredis.Redis)  # or a RedisCluster (redis.mode = "cluster")
engine_key = web.AppKey("engine", UploadEngine)
gc_key = web.AppKey("gc", GarbageCollector)
hooks_key = web.AppKey("hooks", Hooks)
bundled_redis_key = web.AppKey("bundled_redis", BundledRedis)
#: Whether the app's Redis is a bundled one (this process's or another's), worked out once at start: it
#: resolves a path on the data disk, which readiness must not do on the event loop.
on_bundled_redis_key = web.AppKey("on_bundled_redis", bool)
#: Recover what dead processes left, at start-up (the server does; a one-off ``vezastream gc`` does not).
recover_at_start_key = web.AppKey("recover_at_start", bool)
