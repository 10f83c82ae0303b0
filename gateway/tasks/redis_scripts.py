"""The Lua scripts of the Redis backend, and its key layout.

Keys (``P`` is the configured prefix, ``osp`` by default; ``O`` the owner, escaped so that it
holds no ``{``, ``}`` or ``:``; ``T`` the task id):

==============================  ==========================================================
``P:{O}:t:T``                   hash: the task record, ``node`` running it, ``epoch``,
                                ``cancel`` reason, ``first_seq``, ``bytes`` of the log
``P:{O}:e:T``                   stream: the event log, entry id ``<seq>-0``, field ``f``
``P:{O}:c:T``                   sharded pub/sub channel: each event once it is stored
``P:{O}:idx``                   sorted set: the owner's tasks by creation time
``P:{O}:active``                set: the owner's active tasks (the per-owner limit)
``P:{O}:done``                  sorted set: the owner's finished tasks, by end time
``P:{O}:done_bytes``            hash: the size counted for each finished task
``P:{O}:meta``                  hash: ``finished_bytes`` of the owner
``P:node:N``                    string with a TTL: node ``N`` is alive (its lease)
``P:nodes``                     sorted set: the nodes ever seen, for the sweeper
``P:node:N:tasks``              set: unfinished tasks of node ``N`` (``O`` NUL ``T``)
``P:node:N:cancels``            set: cancel requests for node ``N`` (the fallback of ``ctl``)
``P:node:N:ctl``                sharded pub/sub channel: cancel requests for node ``N``
==============================  ==========================================================

Every script touches the keys of one owner only, whose hash tag ``{O}`` puts them in one
Redis Cluster slot (the removal of an owner's oldest finished tasks names keys of that slot
that the script builds itself); the per-node keys are written by separate commands.

Fencing: the process running a task writes with the task's ``epoch``; :data:`APPEND` refuses a
write whose epoch is not the stored one. A survivor that ends a lost node's task, or adopts a
queued one, bumps the epoch first, so a zombie's late writes change nothing.
"""

from __future__ import annotations

__all__ = ["ADOPT", "APPEND", "CANCEL", "CREATE", "END_LOST", "UPDATE", "escape_owner"]


def escape_owner(owner: str) -> str:
    """The owner as it appears in a hash tag: ``%``, ``{``, ``}`` and ``:`` percent-escaped,
    so two different (owner, task id) pairs can never name the same key."""
    return owner.replace("%", "%25").replace("{", "%7B").replace("}", "%7D").replace(":", "%3A")


CREATE = """
-- KEYS: hash, idx, active
-- ARGV: task_id, created (idx score), max_active (0: no limit), final (0/1), field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('SCARD', KEYS[3]) >= limit then
  return {-1}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
if ARGV[4] == '0' then
  redis.call('SADD', KEYS[3], ARGV[1])
end
return {1}
"""
"""Create a task unless one of that id exists (then return it): idempotent by task id, and
atomic with the per-owner count of active tasks."""


_FINISH = """
local function finish(base, hash, active, task_id, updated)
  -- The task ended: it no longer counts as active; it counts against the owner's bounds of
  -- finished tasks, the oldest of which are removed past them.
  redis.call('SREM', active, task_id)
  redis.call('HDEL', hash, 'node')
  local size = tonumber(redis.call('HGET', hash, 'bytes') or '0')
    + redis.call('HSTRLEN', hash, 'input') + 300
  local done, sizes = base .. 'done', base .. 'done_bytes'
  redis.call('ZADD', done, updated, task_id)
  redis.call('HSET', sizes, task_id, size)
  local total = redis.call('HINCRBY', base .. 'meta', 'finished_bytes', size)
  local n = redis.call('ZCARD', done)
  while n > 1 and (n > tonumber(ARGV[#ARGV - 1]) or total > tonumber(ARGV[#ARGV])) do
    local oldest = redis.call('ZRANGE', done, 0, 0)[1]
    total = redis.call('HINCRBY', base .. 'meta', 'finished_bytes',
      -tonumber(redis.call('HGET', sizes, oldest) or '0'))
    redis.call('HDEL', sizes, oldest)
    redis.call('ZREM', done, oldest)
    redis.call('ZREM', base .. 'idx', oldest)
    redis.call('DEL', base .. 't:' .. oldest, base .. 'e:' .. oldest)
    n = n - 1
  end
end
"""

_STORE = """
local function store(hash, stream, seq, payload, max_events, max_bytes)
  redis.call('XADD', stream, seq .. '-0', 'f', payload)
  local bytes = redis.call('HINCRBY', hash, 'bytes', #payload)
  local n = redis.call('XLEN', stream)
  if n > max_events or bytes > max_bytes then
    while n > 1 and (n > max_events or bytes > max_bytes) do
      local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
      redis.call('XDEL', stream, oldest[1])
      bytes = bytes - #oldest[2][2]
      n = n - 1
    end
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1][1]
    redis.call('HSET', hash, 'bytes', bytes, 'first_seq', string.match(first, '^%d+'))
  end
end
"""

APPEND = (
    _STORE
    + _FINISH
    + """
-- KEYS: hash, stream, channel, active
-- ARGV: epoch, seq, payload, max_events, max_bytes, final (0/1), task_id, key base,
--       field, value, ..., max finished per owner, max finished bytes per owner
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'last_seq', 'state')
if cur[1] ~= ARGV[1] then
  return -1
end
local seq = tonumber(ARGV[2])
if seq <= tonumber(cur[2] or '0') then
  return 0
end
store(KEYS[1], KEYS[2], seq, ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'last_seq', seq, unpack(ARGV, 9, #ARGV - 2))
if ARGV[6] == '1' and cur[3] ~= 'completed' and cur[3] ~= 'failed' and cur[3] ~= 'cancelled' then
  finish(ARGV[8], KEYS[1], KEYS[4], ARGV[7], redis.call('HGET', KEYS[1], 'updated'))
end
redis.call('SPUBLISH', KEYS[3], ARGV[3])
return 1
"""
)
"""Store one event (entry id = its seq), trim the log to its bounds, update the record and
publish the event; a final record ends the task. Returns 1; 0 when that seq is stored
already (a retried batch); -1 when the epoch does not match (fenced out, or removed)."""


UPDATE = (
    _FINISH
    + """
-- KEYS: hash, active
-- ARGV: epoch, final (0/1), task_id, key base, field, value, ..., max finished, max bytes
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'state')
if cur[1] ~= ARGV[1] then
  return -1
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5, #ARGV - 2))
if ARGV[2] == '1' and cur[2] ~= 'completed' and cur[2] ~= 'failed' and cur[2] ~= 'cancelled' then
  finish(ARGV[4], KEYS[1], KEYS[2], ARGV[3], redis.call('HGET', KEYS[1], 'updated'))
end
return 1
"""
)
"""Set record fields under the epoch check (a final record ends the task)."""


END_LOST = (
    _STORE
    + _FINISH
    + """
-- KEYS: hash, stream, channel, active
-- ARGV: lost node, expected epoch, expected last_seq, payload, task_id, updated, max_events,
--       max_bytes, key base, max finished per owner, max finished bytes per owner
local cur = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'last_seq')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] or (cur[3] or '0') ~= ARGV[3] then
  return 0
end
local seq = tonumber(ARGV[3]) + 1
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
store(KEYS[1], KEYS[2], seq, ARGV[4], tonumber(ARGV[7]), tonumber(ARGV[8]))
redis.call('HSET', KEYS[1], 'last_seq', seq, 'state', 'failed', 'updated', ARGV[6])
finish(ARGV[9], KEYS[1], KEYS[4], ARGV[5], ARGV[6])
redis.call('SPUBLISH', KEYS[3], ARGV[4])
return 1
"""
)
"""End a lost node's task with its terminal event, under a bumped epoch. A compare-and-set:
returns 0 (nothing written) unless the node, epoch and last seq are still the ones read."""


ADOPT = """
-- KEYS: hash
-- ARGV: lost node, expected epoch, new node
local cur = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'state')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] or cur[3] ~= 'pending' then
  return 0
end
redis.call('HSET', KEYS[1], 'node', ARGV[3])
return redis.call('HINCRBY', KEYS[1], 'epoch', 1)
"""
"""Take over a lost node's queued task (no work done yet): bump its epoch, name the new node.
Returns the new epoch, or 0 when someone else got there first."""


CANCEL = """
-- KEYS: hash
-- ARGV: reason
local cur = redis.call('HMGET', KEYS[1], 'state', 'node')
if not cur[1] then
  return {'unknown'}
end
if cur[1] == 'completed' or cur[1] == 'failed' or cur[1] == 'cancelled' then
  return {'terminal'}
end
redis.call('HSETNX', KEYS[1], 'cancel', ARGV[1])
return {'accepted', cur[2] or ''}
"""
"""Mark an active task as cancelled and name the node running it."""
