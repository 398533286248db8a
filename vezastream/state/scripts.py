"""The Lua scripts of the state store (store.py), one per atomic change.

Each names its KEYS and ARGV and what it answers; every key of one script
shares the upload's ``{id}`` hash tag (or is one key), so each runs on one
Redis Cluster slot.
"""

# KEYS: up, chunks, claims, lease. ARGV: n, "size:sha", size, now, ttl_ms, expected_offset (-1 = any),
# mark ("" = none: else set as chunk n's claim when it is stored), token ("" = none: else the
# lease KEYS[4] is given back if it holds this token, whatever the outcome)
# -> {"stored"|"same", count, bytes} | {"conflict", existing} | {"offset", bytes}
#    | {"status", status, existing-or-""} | {"missing"}
REGISTER_CHUNK = """
local function done(reply)
  if ARGV[8] ~= '' and redis.call('GET', KEYS[4]) == ARGV[8] then redis.call('DEL', KEYS[4]) end
  return reply
end
if redis.call('EXISTS', KEYS[1]) == 0 then return done({'missing'}) end
local status = redis.call('HGET', KEYS[1], 'status')
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if status ~= 'pending' then return done({'status', status, existing or ''}) end
-- Activity: the upload lives upload_ttl from now. A retry (same) writes this too, so that the
-- WAIT after it covers every write before it (Redis 7 moves a connection's WAIT mark only
-- past commands that wrote something). Fields given (name, value, ...) go in the same HSET.
local function touch(...)
  local now = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[4], 'expires_at', tostring(now + tonumber(ARGV[5]) / 1000), ...)
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
if existing then
  if existing == ARGV[2] then
    touch()
    return done({'same', tonumber(redis.call('HGET', KEYS[1], 'received_count')),
                 tonumber(redis.call('HGET', KEYS[1], 'bytes_received'))})
  end
  return done({'conflict', existing})
end
local offset = tonumber(ARGV[6])
if offset >= 0 then
  local have = tonumber(redis.call('HGET', KEYS[1], 'bytes_received'))
  if have ~= offset then return done({'offset', have}) end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[7]) end
if offset < 0 then
  -- Numbered chunks are counted from their records: Redis may evict the records (one key) and keep
  -- the upload's hash, and the chunks sent again then count afresh, never twice.
  local count = redis.call('HLEN', KEYS[2])
  if count == 1 then
    touch('received_count', 1, 'bytes_received', ARGV[3])
    return done({'stored', 1, tonumber(ARGV[3])})
  end
  local bytes = redis.call('HINCRBY', KEYS[1], 'bytes_received', ARGV[3])
  touch('received_count', count)
  return done({'stored', count, bytes})
end
-- An appended segment: its offset was checked above (a tus upload whose segment records went answers
-- 410 when it completes: engine/layouts/append.py); segments are numbered by the count.
local count = redis.call('HINCRBY', KEYS[1], 'received_count', 1)
local bytes = redis.call('HINCRBY', KEYS[1], 'bytes_received', ARGV[3])
touch()
return done({'stored', count, bytes})
"""

# KEYS: up. ARGV: ttl, field, value, ... -> 1 | 0 (an upload with this id exists: nothing written)
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: up, chunks, claims. ARGV: n, token, ttl_ms
# -> {"claimed"} | {"registered"} | {"busy"} | {"status", status} | {"missing"}
# A claim is never given to a second request while the first holds it (no expiry but the upload's).
CLAIM_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' then return {'status', status} end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return {'registered'} end
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2]) == 0 then return {'busy'} end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {'claimed'}
"""

# KEYS: claims. ARGV: n, token -> 1 | 0
RELEASE_CLAIM = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# KEYS: up, lease. ARGV: token, lease_ms, dead ("" = none: else a dead holder's token, taken over)
# -> {"ok"} | {"busy", holder} | {"completed", result} | {"missing"}
BEGIN_COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' then return {'completed', redis.call('HGET', KEYS[1], 'result')} end
if status == 'rejected' then return {'rejected'} end
if status == 'completing' then
  local holder = redis.call('GET', KEYS[2])
  if holder and holder ~= ARGV[3] then return {'busy', holder} end
end
redis.call('HSET', KEYS[1], 'status', 'completing')
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'ok'}
"""

# KEYS: up, chunks, lease, claims. ARGV: token, result, now, ttl_ms -> 1 | 0 (lease lost)
FINISH_COMPLETE = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[1], 'status', 'completed', 'result', ARGV[2], 'updated_at', ARGV[3],
           'expires_at', tostring(tonumber(ARGV[3]) + tonumber(ARGV[4]) / 1000))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[3])
return 1
"""

# KEYS: up, chunks, lease, claims. ARGV: token, reason, now -> 1 | 0 (lease lost)
# A completion refused after the sink consumed the chunks (S3 direct mode): they are gone, so is their record.
REJECT = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'rejected', 'reason', ARGV[2], 'received_count', 0, 'bytes_received', 0,
           'updated_at', ARGV[3])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 1
"""

# KEYS: up, lease. ARGV: token (a dead holder's when ``gone`` is "1"), gone -> 1 | 0
# With gone = "1" the lease may also be gone already: a completion a dead process left goes back to pending.
ABORT_COMPLETE = """
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] and not (holder == false and ARGV[2] == '1') then return 0 end
if ARGV[2] == '1' and redis.call('HGET', KEYS[1], 'status') ~= 'completing' then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'status', 'pending') end
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: up. ARGV: length -> {"ok"} | {"already", length} | {"short", bytes} | {"status", status} | {"missing"}
# An append upload's deferred length is declared once, never below what is stored.
DECLARE_LENGTH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' then return {'status', status} end
local known = redis.call('HGET', KEYS[1], 'length')
if known then return {'already', tonumber(known)} end
local have = tonumber(redis.call('HGET', KEYS[1], 'bytes_received'))
if have > tonumber(ARGV[1]) then return {'short', have} end
redis.call('HSET', KEYS[1], 'length', ARGV[1])
return {'ok'}
"""

# KEYS: lease, up. ARGV: token, ms -> {"busy"} | {"ok", [field, value, ...] (empty: no such upload)}
# Takes a lease and reads the upload under it, in one round trip.
LEASE_AND_LOAD = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'busy'} end
return {'ok', redis.call('HGETALL', KEYS[2])}
"""

# KEYS: part lease, chunks. ARGV: n, token, ms -> {"leased"} | {"busy"} | {"registered", "size:sha"}
# Direct mode: chunk n's record if it has one (no lease then), else its part lease if it is free.
CLAIM_PART = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return {'registered', existing} end
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'leased'} end
return {'busy'}
"""

# KEYS: lease. ARGV: token, ms, dead -> 1 | 0: the lease, if free or held by ``dead`` (a dead holder's token)
TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease. ARGV: token, ms -> 1 | 0
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# KEYS: lease. ARGV: token -> 1 | 0
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS: up, chunks, lease, claims. ARGV: dead ("" = none: else a dead completion holder's token)
# -> {"deleted", status, result-or-""} | {"busy"} | {"missing"}
DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completing' then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= ARGV[1] then return {'busy'} end
end
local result = redis.call('HGET', KEYS[1], 'result') or ''
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return {'deleted', status, result}
"""
