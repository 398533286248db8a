"""The state store: upload state in Redis (keys, Lua scripts, batching, topologies, the bundled server)."""
