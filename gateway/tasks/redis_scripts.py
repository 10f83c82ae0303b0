"""The Lua scripts of the Redis backend, and its key layout.

Keys (``P`` is the configured prefix, ``osp`` by default; ``O`` the owner, escaped so that it
holds no ``{``, ``}`` or ``:``; ``T`` the task id):

==============================  ==========================================================
``P:{O}:t:T``                   hash: the task record, ``node`` running it, ``epoch``,
                                ``cancel`` reason, ``first_seq``, ``bytes`` of the log
``P:{O}:e:T``                   stream: the event log, an entry per write: id ``<seq>-0``
                                (its last event's), ``f`` the events (a JSON array), ``s``
                                their sizes; ``first_seq`` in the hash says where it starts
``P:{O}:c:T``                   sharded pub/sub channel: the events once stored (JSON
                                arrays of event frames, one per write)
``P:{O}:idx``                   sorted set: the owner's tasks by creation time
``P:{O}:active``                set: the owner's active tasks (the per-owner limit)
``P:{O}:done``                  sorted set: the owner's finished tasks, by end time
``P:{O}:done_bytes``            hash: the size counted for each finished task
``P:{O}:meta``                  hash: ``finished_bytes`` of the owner
``P:{:all}:done``,              the same three for all owners (member ``O`` NUL ``T``), for
``P:{:all}:done_bytes``,        the bounds on all finished tasks: one slot of their own
``P:{:all}:meta``               (``:all`` is a hash tag that no escaped owner can be)
``P:node:N``                    string with a TTL: node ``N`` is alive (its lease)
``P:nodes``                     sorted set: the nodes ever seen, for the sweeper
``P:node:N:tasks``              set: unfinished tasks of node ``N`` (``O`` NUL ``T``)
``P:node:N:cancels``            set: control requests for node ``N`` (the fallback of ``ctl``)
``P:node:N:ctl``                sharded pub/sub channel: control requests for node ``N``
                                (cancels; answers and messages, and the replies to them)
``P:{O}:th:H``                  list: the turns of thread ``H`` (MessagePack)
``P:{O}:thidx``                 sorted set: the owner's threads by latest change
``P:rr:C``                      string with a TTL: the fate of forwarded request ``C``
                                (:data:`CLAIM`)
==============================  ==========================================================

Every script touches the keys of one owner only, whose hash tag ``{O}`` puts them in one
Redis Cluster slot (the removal of an owner's oldest finished tasks names keys of that slot
that the script builds itself), or only the keys of all owners (:data:`TRIM_ALL`); the
per-node keys are written by separate commands.

Fencing: the process running a task writes with the task's ``epoch``; :data:`APPEND` refuses a
write whose epoch is not the stored one. A survivor that ends a lost node's task, or adopts a
queued one, bumps the epoch first, so a zombie's late writes change nothing.
"""

from __future__ import annotations

__all__ = [
    "ADOPT",
    "APPEND",
    "CANCEL",
    "CLAIM",
    "CREATE",
    "END_LOST",
    "REMOVE",
    "THREAD_CREATE",
    "TRIM_ALL",
    "TRIM_OWNER",
    "escape_owner",
]


def escape_owner(owner: str) -> str:
    """The owner as it appears in a hash tag: ``%``, ``{``, ``}`` and ``:`` percent-escaped,
    so two different (owner, task id) pairs can never name the same key, and never empty (an
    empty ``{}`` is no hash tag: the owner's keys would spread over the Cluster's slots)."""
    if not owner:
        return "%"
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
  -- The task ended: it no longer counts as active, and now counts as finished (its size:
  -- its log, its input and a little more). Returns that size.
  redis.call('SREM', active, task_id)
  redis.call('HDEL', hash, 'node')
  local size = tonumber(redis.call('HGET', hash, 'bytes') or '0')
    + redis.call('HSTRLEN', hash, 'input') + 300
  redis.call('ZADD', base .. 'done', updated, task_id)
  redis.call('HSET', base .. 'done_bytes', task_id, size)
  redis.call('HINCRBY', base .. 'meta', 'finished_bytes', size)
  return size
end
"""

_TRIM = """
local function trim(hash, stream, first, last, bytes, max_events, max_bytes)
  -- Drop the oldest events past the log's bounds (the newest one always stays) and note
  -- where the log now starts. The log's events are first..last, counted as bytes in all. An
  -- entry holds the events of one write (the last one's seq as id, their sizes in 's'); one
  -- whose events are all dropped is deleted, one dropped in part stays (readers skip its
  -- events before first_seq) until the rest of it goes too.
  local n = last - first + 1
  if n <= max_events and bytes <= max_bytes then
    return
  end
  local want = 2
  while n > 1 and (n > max_events or bytes > max_bytes) do
    local entries = redis.call('XRANGE', stream, '-', '+', 'COUNT', want)
    if #entries == 0 then
      break
    end
    local gone = {}
    for _, entry in ipairs(entries) do
      local fields = entry[2]
      local sizes = {}
      if fields[3] == 's' then
        for size in string.gmatch(fields[4], '%d+') do
          sizes[#sizes + 1] = tonumber(size)
        end
      else  -- one event (an entry as earlier versions stored them)
        sizes[1] = #fields[2]
      end
      local top = tonumber(string.match(entry[1], '^%d+'))
      local i = first + #sizes - top  -- the index of seq first in the entry
      if i < 1 then  -- never, unless first_seq was lost: start at the entry
        i, first = 1, top - #sizes + 1
        n = last - first + 1
      end
      while i <= #sizes and n > 1 and (n > max_events or bytes > max_bytes) do
        bytes = bytes - sizes[i]
        first, n, i = first + 1, n - 1, i + 1
      end
      if i <= #sizes then
        break
      end
      gone[#gone + 1] = entry[1]
    end
    if #gone == 0 then
      break
    end
    redis.call('XDEL', stream, unpack(gone))
    want = math.min(want * 4, 256)
  end
  redis.call('HSET', hash, 'bytes', bytes, 'first_seq', first)
end
"""

_STORE = (
    _TRIM
    + """
local function store(hash, stream, seq, payload, size, max_events, max_bytes)
  -- One event as an entry of its own (payload: an array of the one event).
  redis.call('XADD', stream, seq .. '-0', 'f', payload, 's', size)
  local bytes = redis.call('HINCRBY', hash, 'bytes', size)
  local first = tonumber(redis.call('HGET', hash, 'first_seq') or '1')
  trim(hash, stream, first, seq, bytes, max_events, max_bytes)
end
"""
)

_OWNER_BOUNDS = """
local function owner_bounds(base, max_finished, max_bytes)
  -- Remove the owner's oldest finished tasks past the bounds; returns {task_id, size, ...}.
  local done, sizes, meta = base .. 'done', base .. 'done_bytes', base .. 'meta'
  local removed = {}
  local n = redis.call('ZCARD', done)
  local total = tonumber(redis.call('HGET', meta, 'finished_bytes') or '0')
  while n > 1 and (n > max_finished or total > max_bytes) do
    local oldest = redis.call('ZRANGE', done, 0, 0)[1]
    local size = tonumber(redis.call('HGET', sizes, oldest) or '0')
    total = redis.call('HINCRBY', meta, 'finished_bytes', -size)
    redis.call('HDEL', sizes, oldest)
    redis.call('ZREM', done, oldest)
    redis.call('ZREM', base .. 'idx', oldest)
    redis.call('DEL', base .. 't:' .. oldest, base .. 'e:' .. oldest)
    removed[#removed + 1] = oldest
    removed[#removed + 1] = size
    n = n - 1
  end
  return removed
end
"""

APPEND = (
    _TRIM
    + _FINISH
    + _OWNER_BOUNDS
    + """
-- KEYS: active, then hash, stream, channel of each task
-- ARGV: max_events, max_bytes, key base, max finished, max finished bytes (of the owner),
--       then for each task: task_id, epoch, final (0/1), first, last (the seqs of its events,
--       0 0 for none), the events (a JSON array), their sizes, their bytes (the sum), m,
--       (field, value) * m
local max_events, max_bytes, base = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local results = {}
local ended = false
local a = 6
for k = 2, #KEYS, 3 do
  local hash, stream = KEYS[k], KEYS[k + 1]
  local task_id, epoch, final = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local first, last = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4])
  local events, sizes, added = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local m = tonumber(ARGV[a + 8])
  local fields = a + 9
  a = fields + 2 * m
  local cur = redis.call('HMGET', hash, 'epoch', 'last_seq', 'state', 'first_seq', 'bytes')
  local result = -1
  if cur[1] == epoch then
    result = 0
    if last == 0 or first > tonumber(cur[2] or '0') then
      result = {1, 0}
      if last > 0 then
        redis.call('XADD', stream, last .. '-0', 'f', events, 's', sizes)
        local bytes = tonumber(cur[5] or '0') + tonumber(added)
        redis.call('HSET', hash, 'last_seq', last, 'bytes', bytes, unpack(ARGV, fields, a - 1))
        trim(hash, stream, tonumber(cur[4] or '1'), last, bytes, max_events, max_bytes)
        redis.call('SPUBLISH', KEYS[k + 2], events)
      else
        redis.call('HSET', hash, unpack(ARGV, fields, a - 1))
      end
      if final == '1' and cur[3] ~= 'completed' and cur[3] ~= 'failed'
          and cur[3] ~= 'cancelled' then
        result[2] = finish(base, hash, KEYS[1], task_id, redis.call('HGET', hash, 'updated'))
        ended = true
      end
    end
  end
  results[#results + 1] = result
end
local removed = {}
if ended then
  removed = owner_bounds(base, tonumber(ARGV[4]), tonumber(ARGV[5]))
end
return {results, removed}
"""
)
"""The writes of one owner's tasks since the last flush, as one call. For each task (in the
order given; a task may come more than once): under the epoch check, store its new events as
one entry (id: the seq of the last one; ``f``: the events, a JSON array; ``s``: their sizes,
as :func:`~gateway.tasks.backend.frame_size` counts them), trim the log to its bounds, set the
record's fields (with no events: only those), and publish the same array; a final record ends
the task, and then the owner's bounds on finished tasks are applied (as :data:`TRIM_OWNER`).
A write's events are stored whole or not at all: a batch sent again after a lost reply holds
the same writes, so events stored already are those of writes stored already, which are
skipped (their first seq is not past the stored ``last_seq``). Returns ``{results,
removed}``: one result per task, ``{1, size}`` (the size counted for the task if it ended
here, else 0), 0 when the write was stored already, -1 when the epoch does not match (fenced
out, or removed: then nothing of that task is written); ``removed`` as :data:`TRIM_OWNER`
returns it. A task's events and record change together, so a reader never sees a
``last_seq`` whose event it cannot read."""


END_LOST = (
    _STORE
    + _FINISH
    + """
-- KEYS: hash, stream, channel, active
-- ARGV: lost node, expected epoch, expected last_seq, payload, task_id, updated, max_events,
--       max_bytes, key base
local cur = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'last_seq')
if cur[1] ~= ARGV[1] or cur[2] ~= ARGV[2] or (cur[3] or '0') ~= ARGV[3] then
  return 0
end
local seq = tonumber(ARGV[3]) + 1
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local events = '[' .. ARGV[4] .. ']'
store(KEYS[1], KEYS[2], seq, events, #ARGV[4], tonumber(ARGV[7]), tonumber(ARGV[8]))
redis.call('HSET', KEYS[1], 'last_seq', seq, 'state', 'failed', 'updated', ARGV[6])
local size = finish(ARGV[9], KEYS[1], KEYS[4], ARGV[5], ARGV[6])
redis.call('SPUBLISH', KEYS[3], events)
return size
"""
)
"""End a lost node's task with its terminal event, under a bumped epoch. A compare-and-set:
returns 0 (nothing written) unless the node, epoch and last seq are still the ones read, else
the size counted for the finished task."""


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


REMOVE = """
-- KEYS: hash, stream, idx, active, done, done_bytes, meta
-- ARGV: task_id
local size = tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '0')
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
if redis.call('ZREM', KEYS[5], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[6], ARGV[1])
  redis.call('HINCRBY', KEYS[7], 'finished_bytes', -size)
  return size
end
return 0
"""
"""Remove one task of an owner now. Returns the size it counted as finished (0: it was not
counted, e.g. removed already), so the count of all owners can be corrected once."""


TRIM_OWNER = (
    _OWNER_BOUNDS
    + """
-- KEYS: done, done_bytes, meta, idx (named for Redis Cluster; built from the key base)
-- ARGV: key base, max finished, max finished bytes
return owner_bounds(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
"""
)
"""Apply the per-owner bounds of finished tasks (count and bytes), oldest first."""


TRIM_ALL = """
-- KEYS: done, done_bytes, meta (of all owners)
-- ARGV: max finished, max finished bytes, n_add, (member, score, size) * n_add,
--       member * (forgotten: removed by their owner's bounds)
local n_add = tonumber(ARGV[3])
for i = 0, n_add - 1 do
  local member, score, size = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  if redis.call('ZADD', KEYS[1], 'NX', score, member) == 1 then
    redis.call('HSET', KEYS[2], member, size)
    redis.call('HINCRBY', KEYS[3], 'finished_bytes', size)
  end
end
for i = 4 + 3 * n_add, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local size = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('HINCRBY', KEYS[3], 'finished_bytes', -size)
  end
end
local popped = {}
local n = redis.call('ZCARD', KEYS[1])
local total = tonumber(redis.call('HGET', KEYS[3], 'finished_bytes') or '0')
while n > 1 and (n > tonumber(ARGV[1]) or total > tonumber(ARGV[2])) do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  total = redis.call('HINCRBY', KEYS[3], 'finished_bytes',
    -tonumber(redis.call('HGET', KEYS[2], oldest) or '0'))
  redis.call('HDEL', KEYS[2], oldest)
  redis.call('ZREM', KEYS[1], oldest)
  popped[#popped + 1] = oldest
  n = n - 1
end
return popped
"""
"""The bounds on the finished tasks of all owners: count them in (and out), and pop the
oldest past the bounds (whoever pops a task removes it, so each is removed once)."""


THREAD_CREATE = """
-- KEYS: hash, idx, active, thread list, thread index
-- ARGV: task_id, created, max_active (0: no limit), if_busy, max_queued, turn (MessagePack),
--       thread expiry (unix ms), max turns, thread_id, thread score, thread horizon,
--       max threads, key base, field, value, ...
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
local function ended(state)
  return state == 'completed' or state == 'failed' or state == 'cancelled'
end
local busy = {}
for _, raw in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  local turn = cmsgpack.unpack(raw)
  if not ended(turn['state']) then
    -- The turn's copy lags its task's record (ended on a node whose thread write is queued,
    -- or removed): the record decides. Same slot: the owner's hash tag.
    local state = redis.call('HGET', ARGV[13] .. 't:' .. turn['task_id'], 'state')
    if state and not ended(state) then
      busy[#busy + 1] = turn['task_id']
    end
  end
end
if #busy > 0 and ARGV[4] == 'reject' then
  return {-2, busy}
end
if ARGV[4] == 'enqueue' and #busy > tonumber(ARGV[5]) then
  return {-3, busy}
end
local limit = tonumber(ARGV[3])
if limit > 0 and redis.call('SCARD', KEYS[3]) >= limit then
  return {-1}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 14))
if #busy > 0 then  -- kept for a call sent again after its reply was lost
  redis.call('HSET', KEYS[1], 'after', table.concat(busy, '\\0'))
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[6])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[8]), -1)
redis.call('PEXPIREAT', KEYS[4], ARGV[7])
redis.call('ZADD', KEYS[5], ARGV[10], ARGV[9])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[11])
for _, name in ipairs(redis.call('ZRANGE', KEYS[5], 0, -(tonumber(ARGV[12]) + 1))) do
  redis.call('ZREM', KEYS[5], name)
  redis.call('DEL', ARGV[13] .. 'th:' .. name)
end
return {1, busy}
"""
"""Create an active task as the next turn of its thread, in one step with the check of the
thread's unfinished tasks, so that two starts on one thread through two gateways cannot both
find it idle. Returns ``{0, record}`` for an existing id, ``{-1}`` past the active-task limit,
``{-2, busy}`` (``reject``) or ``{-3, busy}`` (``enqueue`` beyond ``max_queued``) for a busy
thread, else ``{1, busy}``: created, behind the ``busy`` tasks (oldest first)."""


CLAIM = """
-- KEYS: the request's fate
-- ARGV: value, ttl (ms)
local fate = redis.call('GET', KEYS[1])
if fate then
  return fate
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
"""Decide the fate of a forwarded answer or message once: the node running the task claims it
(``taken``) before applying it, the sender claims it (``abandoned``) when it stops waiting.
Whoever comes second gets the first one's value (or the verdict written after ``taken``), so
a request is applied at most once, and never after its sender gave up."""
