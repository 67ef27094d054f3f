"""Lua scripts of the Redis stream store; each runs atomically inside Redis.

Key layout (``P`` is the store prefix, ``sid`` a random id per session):
- ``P:conv:<owner-hash>:<conv_id>`` string -> sid of the conversation's current session.
- ``P:meta:<sid>`` hash: conv, started_at, completed_at, done, cancelled, total (bytes written),
  retained (bytes kept), ring_start (offset of the first kept byte), last_dropped (start of
  the newest dropped event, -1 if none).
- ``P:data:<sid>`` stream: one entry per event, id ``<start offset>-1``, field ``d`` = bytes;
  ended by one marker entry at ``<total>-1`` with field ``e`` (finished) or ``x`` (cancelled).
  Nothing is ever added after the marker.
Every key carries a PEXPIRE: the lease while live (refreshed by each append), the ttl once
finished, a short grace once cancelled -- so a crashed replica leaves nothing behind.
"""

from __future__ import annotations

# KEYS: pointer, meta.  ARGV: sid, started_at, lease_ms, conv_id.  Returns the replaced sid.
OPEN = """
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('HSET', KEYS[2], 'conv', ARGV[4], 'started_at', ARGV[2], 'completed_at', '',
  'done', '0', 'cancelled', '0', 'total', '0', 'retained', '0', 'ring_start', '0',
  'last_dropped', '-1')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return old
"""

# KEYS: pointer, meta, data.  ARGV: sid, bytes, capacity, lease_ms.
# Returns the new total; -1 if the session was replaced, cancelled or finished; -2 if Redis no
# longer has it (lease expired, Redis restarted empty): not a cancel, but nothing is stored.
APPEND = """
local m = redis.call('HMGET', KEYS[2], 'done', 'total', 'retained', 'ring_start')
if not m[1] then return -2 end
if m[1] ~= '0' or redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local n = string.len(ARGV[2])
redis.call('XADD', KEYS[3], m[2] .. '-1', 'd', ARGV[2])
local total = tonumber(m[2]) + n
local retained = tonumber(m[3]) + n
local ring_start = tonumber(m[4])
local cap = tonumber(ARGV[3])
local dropped = nil
while retained > cap do
  local two = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 2)
  if #two < 2 then break end
  local size = string.len(two[1][2][2])
  redis.call('XTRIM', KEYS[3], 'MINID', two[2][1])
  dropped = ring_start
  retained = retained - size
  ring_start = ring_start + size
end
redis.call('HSET', KEYS[2], 'total', total, 'retained', retained, 'ring_start', ring_start)
if dropped then redis.call('HSET', KEYS[2], 'last_dropped', dropped) end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return total
"""

# KEYS: pointer, meta, data.  ARGV: sid, completed_at, ttl_ms.  Returns 1 if it finished it.
FINISH = """
local m = redis.call('HMGET', KEYS[2], 'done', 'total')
if m[1] ~= '0' then return 0 end
redis.call('HSET', KEYS[2], 'done', '1', 'completed_at', ARGV[2])
redis.call('XADD', KEYS[3], m[2] .. '-1', 'e', '1')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# KEYS: pointer, meta, data.  ARGV: sid, completed_at, grace_ms, channel, evict ('1'/'0').
# With evict=1 it only acts if the pointer still names sid, and removes the pointer.
CANCEL = """
if ARGV[5] == '1' then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[1])
local m = redis.call('HMGET', KEYS[2], 'done', 'total')
if not m[1] then return 1 end
if m[1] == '0' then
  redis.call('HSET', KEYS[2], 'done', '1', 'completed_at', ARGV[2])
  redis.call('XADD', KEYS[3], m[2] .. '-1', 'x', '1')
end
redis.call('HSET', KEYS[2], 'cancelled', '1')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: meta, data.  ARGV: mode ('o' = byte offset, 'e' = last event id), value.
# Returns {'gone'} | {'beyond', total} | {'lost', ring_start} |
#         {'ok', offset, entry_id, first_bytes, is_end}: entry_id is where reading goes on.
START = """
local m = redis.call('HMGET', KEYS[1], 'total', 'ring_start', 'last_dropped', 'cancelled')
if not m[1] or m[4] == '1' then return {'gone'} end
local total = tonumber(m[1])
local ring_start = tonumber(m[2])
local x = tonumber(ARGV[2])
if x > total then return {'beyond', total} end
local offset = x
if ARGV[1] == 'e' then
  if x < ring_start then
    if x ~= tonumber(m[3]) then return {'lost', ring_start} end
    offset = ring_start
  else
    local nxt = redis.call('XRANGE', KEYS[2], '(' .. x .. '-1', '+', 'COUNT', 1)
    offset = total
    if #nxt > 0 then offset = tonumber(string.match(nxt[1][1], '^(%d+)')) end
  end
elseif x < ring_start then
  return {'lost', ring_start}
end
local e = redis.call('XREVRANGE', KEYS[2], offset .. '-1', '-', 'COUNT', 1)
if #e == 0 then return {'ok', offset, '0-0', '', 0} end
local id, field, value = e[1][1], e[1][2][1], e[1][2][2]
if field ~= 'd' then return {'ok', offset, id, '', 1} end
local start = tonumber(string.match(id, '^(%d+)'))
return {'ok', offset, id, string.sub(value, offset - start + 1), 0}
"""
