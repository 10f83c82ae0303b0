"""The Redis backend: many gateway processes, one task space.

Tasks, their event logs and their state live in Redis (key layout and scripts in
:mod:`gateway.tasks.redis_scripts`). Each task manager attached to a backend is a *node*; the
node running a task is the only writer of its log, and writes under the task's epoch.

Writes (``update``, ``append``, ``expire``) return at once; a *flusher* sends them in
pipelined batches. The events and record changes of one owner's tasks queued since the last
flush are one *write*, sent as one script call that does, for each of those tasks: the epoch
check, one ``XADD`` of its new events as one entry (a JSON array, encoded in one call; the
entry id is the seq of the last one), one trim, one record update, one ``SPUBLISH`` of the
same array. While a batch is in flight the next one gathers, so the busier the process, the
more events each call and each entry carry (the owner's hash tag keeps all of them in one
Redis Cluster slot). On one Redis a task's creation rides at the head of the same batches
(``create`` waits for its reply; the task of a start given up after its create was sent runs
here all the same when the reply comes).
**Durable before visible**: this process's listeners get an event only once Redis has it, and
other processes get it from the publish that the same script does, so a client never sees an
event that a later reader cannot replay.

Listening to a task that another process writes subscribes to its channel (``listen``
returns once the subscription is in place, so the replay/live join of
:class:`~gateway.tasks.subscription.Subscription` stays race-free across processes). A seq jump
on the channel, or a reconnection of the subscriber connection, reads the hole from the log;
if retention dropped part of it, the listeners get a :class:`~protocol.frames.Gap` first.

Nodes and failure:

- every attached node renews a lease (``P:node:N`` with a TTL of ``lease`` seconds) every
  ``lease / 3`` seconds, and the process then sweeps: a node whose lease expired is *lost*.
  Each of its active tasks gets exactly one terminal ``task_failed`` with code ``node_lost``,
  written by a compare-and-set script that bumps the task's epoch, so the lost node, if it
  comes back, cannot append anything after it (it is told with
  :meth:`~gateway.tasks.backend.NodeHandler.task_lost`). A task still queued (no work done) is
  adopted instead when the surviving node's handler can run it (``task_adopted``). Running
  tasks are not re-run: their tools may have had side effects. A node is noticed lost within
  ``lease * 4 / 3`` seconds (13.3 s with the default 10 s).
- ``request_cancel`` marks the task (``cancel`` field), publishes to the running node's
  control channel, and adds the request to that node's ``cancels`` set, which the node reads
  on every lease tick: a lost publish delays a cancel by one tick, never forever.
- ``send_input`` / ``send_message`` for a task another process runs are a request/reply over
  the same channel and set: the request carries a correlation id and the sending node to reply
  to; the running node claims the id (:data:`~gateway.tasks.redis_scripts.CLAIM`), applies the
  request through its handler, stores the verdict under the id and publishes it to the
  sender's control channel, where it reaches the one call waiting for it (which also reads
  the stored verdict now and then, in case the reply was lost). A sender that gets no
  verdict within ``reply_timeout`` claims the id as abandoned: from then on the request is
  never applied, and the caller gets a retryable ``unavailable`` refusal (or the verdict, when
  the reply alone was lost). A lost publish is made good by the set on the next lease tick, if
  the sender still waits.
- Redis unavailable: coroutines raise :exc:`~gateway.tasks.backend.BackendUnavailable`;
  writes stay queued and the flusher retries with backoff (50 ms doubling to 2 s). Past
  ``max_buffered`` writes or ``buffer_seconds`` of outage, the running tasks of this process
  are stopped (``task_lost``) and each gets a terminal ``task_failed`` with code
  ``store_unavailable``, queued after its buffered events; everything is written once Redis
  answers again. :meth:`RedisBackend.health` says why the process is unhealthy.

Retention: per task log as in memory (count and bytes, entry ids = seqs); finished tasks per
owner by count and bytes (the oldest removed past the bound) and by TTL (``expire``); the
bounds on all owners together (``Retention.max_finished``, ``max_finished_bytes``) by a count
kept in keys of their own slot (``P:{:all}:…``), whose oldest entries are then removed by the
owners' scripts one by one.

Redis Cluster: detected at :meth:`RedisBackend.start` (``INFO cluster``) unless
:attr:`RedisConfig.cluster` says; every script and transaction touches one slot, and the
routing (the flusher's batches split by node, sharded pub/sub on the primary owning each
channel) is in :mod:`gateway.tasks.redis_cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    NoScriptError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol.events import InputRequest, LlmResponse, TaskFailed, Usage
from protocol.frames import (
    EventFrame,
    Gap,
    IfBusy,
    Input,
    StartOptions,
    TaskState,
    ThreadSummary,
)

from . import redis_cluster as cluster
from . import redis_scripts as lua
from . import redis_wire as wire
from .backend import (
    DELTA_OVERHEAD,
    ActiveLimitReached,
    BackendUnavailable,
    CancelResult,
    Listener,
    LogSlice,
    NodeHandler,
    Retention,
    TaskRecord,
    ThreadBusy,
    ThreadTurn,
    frame_size,
)

__all__ = ["RedisBackend", "RedisConfig"]

_TURN_ENCODER = msgspec.msgpack.Encoder()
_TURN_DECODER = msgspec.msgpack.Decoder(ThreadTurn)

log = logging.getLogger(__name__)

# On a Cluster also: CLUSTERDOWN (ClusterError) and a slot no node serves.
_UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    SlotNotCoveredError,
)

_encoder = msgspec.json.Encoder()
_frame_decoder = msgspec.json.Decoder(EventFrame)
_frames_decoder = msgspec.json.Decoder(list[EventFrame])
_options_decoder = msgspec.json.Decoder(StartOptions)
_usage_decoder = msgspec.json.Decoder(Usage)
_input_request_decoder = msgspec.json.Decoder(InputRequest)


class _Control(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A message on a node's control channel (and in its ``cancels`` set)."""

    owner: str = ""
    task_id: str = ""
    op: str = "cancel"
    """``cancel``; ``input`` and ``message`` (requests); ``reply`` (to one of those)."""
    reason: str = ""
    """Of a cancel."""
    corr: str = ""
    """Correlation id of a request and its reply."""
    reply_to: str = ""
    """The node whose control channel gets the reply (none: the sender reads the fate key)."""
    answer: Input | None = None
    text: str | None = None
    verdict: str | None = None
    """Of a reply: the handler's verdict, ``""`` for an answer taken."""


_ctl_decoder = msgspec.json.Decoder(_Control)
_TAKEN, _ABANDONED, _VERDICT = b"taken", b"abandoned", b"v:"
_FATE_TTL_MS = 600_000
"""How long the fate of a forwarded request is kept: far longer than any sender waits."""


class _NoReply(Exception):
    """No verdict came for a forwarded request (its message says what is known)."""


Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Where and how the Redis backend keeps tasks."""

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://[user:password@]host:port/db`` or ``rediss://`` (TLS)."""
    prefix: str = "osp"
    """First part of every key (several task spaces can share one Redis)."""
    lease: float = 10.0
    """Seconds a node's lease lasts; renewed every third of it. A node silent for longer is
    lost: its active tasks end with ``node_lost``."""
    max_buffered: int = 100_000
    """Writes a process keeps while Redis is unreachable before it stops its running tasks."""
    buffer_seconds: float = 30.0
    """Seconds of outage after which a process stops its running tasks."""
    batch: int = 512
    """Most writes (events, record changes, expiries) in one script call (a script holds
    Redis up while it runs)."""
    pipeline: int = 4
    """Most script calls' worth of writes (``batch`` each) sent in one round trip: a process
    that fell behind catches up several batches per round trip, while its event loop is busy
    too."""
    cluster: bool | None = None
    """Whether ``url`` names a node of a Redis Cluster (then the others are found from it);
    ``None``: ask that node at start (``INFO cluster``)."""


class _Local:
    """A task this process writes: the last record queued, the seq after it, and the constant
    parts of its append command."""

    __slots__ = ("fenced", "keys", "record", "sent", "seq", "tail")

    def __init__(self, record: TaskRecord, keys: bytes, tail: bytes) -> None:
        self.record = record
        self.sent: TaskRecord | None = None  # the record whose fields were packed last
        self.seq = record.last_seq
        self.fenced = False
        self.keys = keys  # <hash> <stream> <channel>, RESP-encoded
        self.tail = tail  # <task_id>


class _TaskWrite(msgspec.Struct, gc=False):
    """What one write carries for one task: its events in seq order, its latest record. (A
    Struct: one is made per task and write, and its constructor runs no Python code.)"""

    local: _Local
    record: TaskRecord
    updated: float
    frames: list[EventFrame] = msgspec.field(default_factory=list)
    writes: int = 0


class _Watch:
    """This process's listeners of one task, and its live feed from Redis."""

    __slots__ = ("channel", "filling", "held", "last_seq", "listeners", "remote", "subscribed")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.listeners: tuple[Listener, ...] = ()
        self.last_seq = 0  # highest seq handed to the listeners
        self.remote = False  # fed by the channel (another process writes the task)
        self.subscribed: asyncio.Future[None] | None = None
        self.filling = False  # a read of a hole is under way; live frames wait in held
        self.held: list[EventFrame] = []


_WRITE, _EXPIRE, _PERSIST, _REMOVE, _TRIM_ALL, _CALL = 0, 1, 2, 3, 4, 5

Finished = tuple[str, str, int, float]
"""A task that ended: owner, task id, the size it counts, when it ended."""


@dataclass(slots=True, eq=False)
class _Op:
    kind: int
    key: Key
    packed: bytes = b""
    """The command(s), RESP-encoded; the first reply is the op's result (a call's: the
    last). A write is packed when the flusher takes it (and keeps that packing if it is sent
    again)."""
    replies: int = 1
    writes: int = 1
    """How many writes (events, record changes, expiries) it carries."""
    tasks: dict[Key, _TaskWrite] = field(default_factory=dict)
    """A write (kind ``_WRITE``, key ``(owner, "")``): the owner's tasks written."""
    waiter: asyncio.Future[Any] | None = None
    """A call (kind ``_CALL``): the caller waiting for the reply of its last command."""
    orphaned: Callable[[Any], None] | None = None
    """A call: what to do with the reply when its caller stopped waiting after it was sent."""
    sends: int = 0
    """Times taken into a batch (again after a batch failed)."""


class RedisBackend:
    """A :class:`~gateway.tasks.backend.TaskBackend` over Redis (see the module docstring).

    ``await start()`` before use (connects, loads the scripts, starts the flusher, the
    subscriber and the lease loop); ``await close()`` at the end."""

    def __init__(self, config: RedisConfig | None = None, retention: Retention | None = None):
        cfg = config or RedisConfig()
        if cfg.lease <= 0 or cfg.buffer_seconds <= 0 or min(cfg.max_buffered, cfg.batch) < 1:
            raise ValueError("lease, buffer_seconds, max_buffered and batch must be positive")
        if cfg.pipeline < 1:
            raise ValueError("pipeline must be positive")
        if "{" in cfg.prefix or "}" in cfg.prefix:
            raise ValueError("the key prefix must not hold { or } (Cluster hash tags)")
        self.config = cfg
        self.retention = retention or Retention()
        r = self.retention
        self._owner_bounds = wire.bulk(r.max_finished_per_owner) + wire.bulk(
            r.max_finished_bytes_per_owner
        )
        self._log_bounds = wire.bulk(self.retention.max_events) + wire.bulk(
            self.retention.max_bytes
        )
        self._timeout = max(2.0, cfg.lease / 3)
        # Typed as Any: redis-py declares its replies as unions of str and bytes; with
        # decode_responses off (the default, used here) they are bytes. One immediate retry
        # (a pooled connection may be stale after a Redis restart), no more: callers get a
        # clear answer at once, and the flusher has its own backoff.
        self._redis: Any = aredis.Redis.from_url(
            cfg.url,
            socket_connect_timeout=2.0,
            socket_timeout=self._timeout,
            retry=Retry(NoBackoff(), 1),
        )
        # The subscriber connection must never reconnect behind our back: after a reconnect
        # it has to subscribe again and read what was published meanwhile.
        self._pubsub_client: Any = aredis.Redis.from_url(
            cfg.url, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0)
        )
        self._wire: Any = wire.RespConnection(cfg.url, self._timeout)
        self._p = cfg.prefix
        self._nodes_key = f"{cfg.prefix}:nodes"
        self._scripts = {
            name: self._redis.register_script(getattr(lua, name))
            for name in (
                "CREATE",
                "APPEND",
                "END_LOST",
                "ADOPT",
                "CANCEL",
                "REMOVE",
                "TRIM_OWNER",
                "TRIM_ALL",
                "THREAD_CREATE",
                "CLAIM",
            )
        }
        self._append_sha = wire.bulk("EVALSHA") + wire.bulk(self._scripts["APPEND"].sha)
        self._cluster = cfg.cluster
        if cfg.cluster:
            self._use_cluster()
        self._handlers: dict[str, NodeHandler] = {}
        self._replies: dict[str, asyncio.Future[str]] = {}
        """Correlation id → the call waiting for the verdict of its forwarded request."""
        self.reply_timeout = cfg.lease / 3 + self._timeout
        """Seconds a forwarded answer or message waits for the running node's verdict: one
        lease tick (when the publish was lost, the node reads it from its set) and a round
        trip's timeout."""
        self._local: dict[Key, _Local] = {}
        self._watches: dict[Key, _Watch] = {}
        self._by_channel: dict[str, Key] = {}
        self._ops: deque[_Op] = deque()
        self._calls: deque[_Op] = deque()  # calls waited for: at the head of the next batch
        self._queued = 0  # writes in _ops
        self._open: dict[str, _Op] = {}  # by owner: the write still gathering (not yet taken)
        self._thread_writes: set[asyncio.Task[None]] = set()
        self._thread_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._pubsub: Any = None
        self._pubsub_up = asyncio.Event()
        self._started = False
        self._starting: asyncio.Task[None] | None = None
        self._closing = False
        self._untrimmed: list[Finished] = []
        # No sweeping for one lease after this process could not reach Redis: the other
        # nodes could not renew their leases either, and are not lost for that.
        self._sweep_after = 0.0
        self._outage_since: float | None = None
        self._aborted = False
        self._subscriber_gate = asyncio.Event()
        self._subscriber_gate.set()
        self.health_changed = asyncio.Event()
        """Set whenever :meth:`health` changes (clear it to wait for the next change)."""
        self.last_error: str | None = None
        # Read by the server's metrics.
        self.rtt = 0.0
        """Seconds of the last flush round trip."""
        self.last_batch = 0
        """Writes in the last flushed batch."""
        self.nodes_alive = 0
        """Nodes with a live lease, as of the last sweep."""

    def _use_cluster(self) -> None:
        """Replace the single-node clients with Cluster ones (see :mod:`.redis_cluster`)."""
        cfg = self.config
        self._redis = cluster.ClusterClient.from_url(
            cfg.url,
            socket_connect_timeout=2.0,
            socket_timeout=self._timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._pubsub_client = None  # ShardedPubSub: a connection per primary, made as needed
        self._wire = cluster.ClusterWire(
            self._redis, cfg.url, self._timeout, f"{self._p}:node:".encode()
        )
        self._scripts = {
            name: self._redis.register_script(script.script)
            for name, script in self._scripts.items()
        }

    async def _disconnect(self) -> None:
        await self._redis.aclose()
        if self._pubsub_client is not None:
            await self._pubsub_client.aclose()
        await self._wire.close()

    def _new_pubsub(self) -> Any:
        if self._cluster:
            return cluster.ShardedPubSub(self._redis)
        return self._pubsub_client.pubsub()

    # ------------------------------------------------------------------ keys

    def _base(self, owner: str) -> str:
        return f"{self._p}:{{{lua.escape_owner(owner)}}}:"

    def _task_keys(self, owner: str, task_id: str) -> list[str]:
        base = self._base(owner)
        return [f"{base}t:{task_id}", f"{base}e:{task_id}", f"{base}c:{task_id}", f"{base}active"]

    def _node_key(self, node: str, kind: str = "") -> str:
        return f"{self._p}:node:{node}{':' + kind if kind else ''}"

    # ------------------------------------------------------------------ lifetime

    async def start(self) -> None:
        """Connect, load the scripts, start the background work. Raises
        :exc:`BackendUnavailable` when Redis cannot be reached. Called by the first call that
        needs Redis if not before (a server calls it at startup to fail early)."""
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._starting)

    async def _ensure(self) -> None:
        if not self._started:
            await self.start()

    async def _start(self) -> None:
        try:
            if self._cluster is None:
                self._cluster = await cluster.cluster_enabled(self._redis)
                if self._cluster:
                    await self._disconnect()
                    self._use_cluster()
                log.info("redis: %s", "a Cluster" if self._cluster else "one Redis (no Cluster)")
            await self._redis.ping()
            for script in self._scripts.values():
                await self._redis.script_load(script.script)
            for node in self._handlers:
                await self._renew_lease(node)
        except _UNREACHABLE as exc:
            self._starting = None
            raise BackendUnavailable(
                f"cannot reach Redis at {_safe_url(self.config.url)}: {exc}"
            ) from exc
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._flusher(), name="redis-flusher"),
            loop.create_task(self._subscriber(), name="redis-subscriber"),
            loop.create_task(self._lease_loop(), name="redis-lease"),
        ]
        self._started = True
        await self._pubsub_up.wait()

    def attach(self, node: str, handler: NodeHandler) -> None:
        self._handlers[node] = handler
        if self._started:
            self._spawn(self._join(node))

    async def _join(self, node: str) -> None:
        with contextlib.suppress(RedisError, *_UNREACHABLE):
            await self._renew_lease(node)
        if self._pubsub is not None:
            await self._send("SSUBSCRIBE", self._node_key(node, "ctl"))

    # ------------------------------------------------------------------ threads (issue 12)
    #
    # One list per thread (``th:<id>``, its turns as MessagePack, expiring ``thread_ttl`` after
    # its latest change) and a sorted set per owner (``thidx``, thread ids scored by their
    # latest change) for listing and for dropping the least recently updated. Both live under
    # the owner's hash tag. A node reads its own thread writes (they are awaited before its
    # reads); across nodes a write becomes visible once stored.

    def _thread_keys(self, owner: str, thread_id: str) -> tuple[str, str]:
        base = self._base(owner)
        return base + "th:" + thread_id, base + "thidx"

    async def _thread_writes_done(self) -> None:
        pending = [t for t in self._thread_writes if not t.done()]
        if pending:
            await asyncio.wait(pending)

    async def thread_add(self, owner: str, thread_id: str, turn: ThreadTurn) -> None:
        await self._ensure()
        await self._thread_writes_done()
        key, idx = self._thread_keys(owner, thread_id)
        r = self.retention
        changed = max(turn.created, turn.updated)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.rpush(key, _TURN_ENCODER.encode(turn))
            pipe.ltrim(key, -r.max_turns_per_thread, -1)
            pipe.pexpireat(key, int((changed + r.thread_ttl) * 1000))
            pipe.zadd(idx, {thread_id: changed})
            pipe.zremrangebyscore(idx, "-inf", time.time() - r.thread_ttl)
            pipe.zrange(idx, 0, -(r.max_threads_per_owner + 1))
            *_, dropped = await pipe.execute()
            if dropped:
                names = [d.decode() for d in dropped]
                pipe = self._redis.pipeline(transaction=True)
                pipe.zrem(idx, *names)
                pipe.delete(*(self._thread_keys(owner, n)[0] for n in names))
                await pipe.execute()
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc

    def thread_update(self, owner: str, thread_id: str, turn: ThreadTurn) -> None:
        task = asyncio.get_running_loop().create_task(self._thread_update(owner, thread_id, turn))
        self._thread_writes.add(task)
        task.add_done_callback(self._thread_writes.discard)

    async def _thread_update(self, owner: str, thread_id: str, turn: ThreadTurn) -> None:
        async with self._thread_lock:  # FIFO: the updates are stored in the order made
            await self._thread_update_now(owner, thread_id, turn)

    async def _thread_update_now(self, owner: str, thread_id: str, turn: ThreadTurn) -> None:
        key, idx = self._thread_keys(owner, thread_id)
        try:
            await self._ensure()
            raws = await self._redis.lrange(key, 0, -1)
            for i, raw in enumerate(raws):
                if _TURN_DECODER.decode(raw).task_id == turn.task_id:
                    pipe = self._redis.pipeline(transaction=True)
                    pipe.lset(key, i, _TURN_ENCODER.encode(turn))
                    pipe.pexpireat(key, int((turn.updated + self.retention.thread_ttl) * 1000))
                    pipe.zadd(idx, {thread_id: turn.updated}, xx=True)
                    await pipe.execute()
                    return
        except (*_UNREACHABLE, RedisError, BackendUnavailable) as exc:
            log.warning("thread %s: a turn's update was not stored: %s", thread_id, exc)

    async def thread_turns(self, owner: str, thread_id: str) -> list[ThreadTurn] | None:
        await self._ensure()
        await self._thread_writes_done()
        try:
            raws = await self._redis.lrange(self._thread_keys(owner, thread_id)[0], 0, -1)
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc
        return [_TURN_DECODER.decode(raw) for raw in raws] or None

    async def list_threads(self, owner: str, limit: int) -> list[ThreadSummary]:
        await self._ensure()
        await self._thread_writes_done()
        _, idx = self._thread_keys(owner, "")
        try:
            await self._redis.zremrangebyscore(idx, "-inf", time.time() - self.retention.thread_ttl)
            ids = [i.decode() for i in await self._redis.zrevrange(idx, 0, limit - 1)]
            pipe = self._redis.pipeline(transaction=False)
            for thread_id in ids:
                pipe.lrange(self._thread_keys(owner, thread_id)[0], 0, -1)
            lists = await pipe.execute()
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc
        out: list[ThreadSummary] = []
        for thread_id, raws in zip(ids, lists, strict=True):
            turns = [_TURN_DECODER.decode(raw) for raw in raws]
            if not turns:
                continue  # expired meanwhile
            first, last = turns[0], turns[-1]
            out.append(
                ThreadSummary(
                    thread_id=thread_id,
                    created=first.created,
                    updated=max(t.updated for t in turns),
                    task_count=len(turns),
                    title=first.input[:80],
                    last_task_id=last.task_id,
                    last_state=last.state,
                )
            )
        return out

    async def create_in_thread(
        self,
        record: TaskRecord,
        turn: ThreadTurn,
        *,
        if_busy: IfBusy,
        max_queued: int,
        max_active: int | None = None,
    ) -> TaskRecord | tuple[str, ...]:
        owner, task_id, thread_id = record.owner, record.task_id, record.thread_id
        assert thread_id is not None, "create_in_thread needs record.thread_id"
        keys = self._task_keys(owner, task_id)
        base = self._base(owner)
        thread_key, idx = self._thread_keys(owner, thread_id)
        r = self.retention
        changed = max(turn.created, turn.updated)
        member = _member(owner, task_id)
        tasks_key = self._node_key(record.node, "tasks")
        made = uuid.uuid4().hex  # names this create (see create)
        await self._ensure()
        await self._thread_writes_done()  # the busy check reads this node's turn updates
        try:
            result = await self._run_named(
                tasks_key,
                member,
                "THREAD_CREATE",
                [keys[0], base + "idx", keys[3], thread_key, idx],
                [
                    task_id,
                    record.created,
                    max_active or 0,
                    if_busy,
                    max_queued,
                    _TURN_ENCODER.encode(turn),
                    int((changed + r.thread_ttl) * 1000),
                    r.max_turns_per_thread,
                    thread_id,
                    changed,
                    time.time() - r.thread_ttl,
                    r.max_threads_per_owner,
                    base,
                    *_fields(record, full=True),
                    "first_seq",
                    record.last_seq + 1,
                    "bytes",
                    0,
                    "made",
                    made,
                ],
            )
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc
        verdict = result[0]
        if verdict == 1:
            self._created_here(record)
            return tuple(b.decode() for b in result[1])
        stored = _pairs(result[1]) if verdict == 0 else None
        if stored is not None and stored.get(b"made") == made.encode():
            # Sent again after a lost reply: this create made it.
            self._created_here(record)
            return tuple(x.decode() for x in stored.get(b"after", b"").split(b"\0") if x)
        existing = _record_from(stored) if stored is not None else None
        await self._unname(tasks_key, member, record, existing)
        if verdict == -1:
            raise ActiveLimitReached(max_active or 0)
        if verdict in (-2, -3):
            raise ThreadBusy(tuple(b.decode() for b in result[1]), verdict == -3)
        assert existing is not None
        return existing

    def _created_here(self, record: TaskRecord) -> None:
        """This process created ``record`` and writes it from now on (a watch made before it
        existed, by a start that subscribes, is fed by the flusher now, not the channel)."""
        key = (record.owner, record.task_id)
        self._local[key] = self._new_local(record)
        watch = self._watches.get(key)
        if watch is not None and watch.remote:
            watch.remote = False  # fed by the flusher now, not by the channel
            self._unsubscribe(watch)

    # ------------------------------------------------------------------ answers and messages
    #
    # To a task this process runs: straight to its node's handler. To a task another process
    # runs: a request over that node's control channel (see the module docstring).

    async def send_input(self, owner: str, task_id: str, answer: Input) -> str | None:
        node = await self._running_node(owner, task_id)
        if node.startswith("!"):
            return node[1:]
        handler = self._handlers.get(node)
        if handler is not None:
            return handler.input_given(owner, task_id, answer)
        request = _Control(op="input", owner=owner, task_id=task_id, answer=answer)
        try:
            verdict = await self._forward(node, request)
        except _NoReply as exc:
            return f"unavailable: {exc}"
        return verdict or None

    async def send_message(self, owner: str, task_id: str, text: str) -> str:
        node = await self._running_node(owner, task_id)
        if node.startswith("!"):
            return node
        handler = self._handlers.get(node)
        if handler is not None:
            return handler.message_given(owner, task_id, text)
        request = _Control(op="message", owner=owner, task_id=task_id, text=text)
        try:
            return await self._forward(node, request)
        except _NoReply as exc:
            return f"!unavailable: {exc}"

    async def _running_node(self, owner: str, task_id: str) -> str:
        """The node running the owner's active task, or ``"!code: message"``."""
        record = await self.get(owner, task_id)
        if record is None:
            return f"!unknown_task: no task {task_id!r}"
        if record.final:
            return f"!task_finished: task {task_id!r} has ended ({record.state})"
        return record.node

    def _fate_key(self, corr: str) -> str:
        return f"{self._p}:rr:{corr}"

    async def _forward(self, node: str, request: _Control) -> str:
        """Send a request to ``node`` and return its verdict; raises :exc:`_NoReply`."""
        corr = uuid.uuid4().hex
        request.corr = corr
        request.reply_to = next(iter(self._handlers), "")
        payload = _encoder.encode(request)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._replies[corr] = future
        try:
            try:
                pipe = self._redis.pipeline(transaction=False)
                # The set first: the node takes the request out of it once applied.
                pipe.sadd(self._node_key(node, "cancels"), payload)
                pipe.execute_command("SPUBLISH", self._node_key(node, "ctl"), payload)
                pipe.exists(self._node_key(node))
                _, _, alive = await pipe.execute()
            except (*_UNREACHABLE, RedisError) as exc:
                raise _unavailable(exc) from exc
            if alive:
                verdict = await self._await_verdict(corr, future, bool(request.reply_to))
                if verdict is not None:
                    return verdict
                what = f"did not reply within {self.reply_timeout:g} s"
            else:
                what = "has lost its lease (it stopped or was cut off)"
            return await self._give_up(corr, request, what)
        finally:
            self._replies.pop(corr, None)

    async def _await_verdict(
        self, corr: str, future: asyncio.Future[str], replied: bool
    ) -> str | None:
        """Wait for the reply; now and then read the fate key too, where the verdict is
        stored when the reply is lost (or when there is no node here to reply to)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout
        step = 0.05 if replied else 0.01
        while (left := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait([future], timeout=min(left, step))
            if done:
                return future.result()
            step = min(step * 2, 0.5)
            with contextlib.suppress(RedisError, *_UNREACHABLE):
                fate = await self._redis.get(self._fate_key(corr))
                if fate is not None and fate.startswith(_VERDICT):
                    return str(fate[len(_VERDICT) :].decode())
        return None

    async def _give_up(self, corr: str, request: _Control, what: str) -> str:
        """No verdict came: claim the request as abandoned (then it is never applied), or
        learn what became of it."""
        task = f"the gateway running task {request.task_id!r} {what}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_timeout
        try:
            while True:
                fate = await self._scripts["CLAIM"](
                    keys=[self._fate_key(corr)], args=[_ABANDONED, _FATE_TTL_MS]
                )
                if fate is None:
                    raise _NoReply(f"{task}; it was not taken: retry shortly")
                if fate.startswith(_VERDICT):
                    return str(fate[len(_VERDICT) :].decode())
                if loop.time() >= deadline:  # taken, and no verdict stored since
                    break
                await asyncio.sleep(0.05)
        except (*_UNREACHABLE, RedisError) as exc:
            task = f"{task}, and the task store is unreachable ({exc})"
        if request.op == "input":
            raise _NoReply(
                f"{task}; it may have been taken: send it again (the same answer "
                "is acknowledged as resent)"
            )
        raise _NoReply(
            f"{task}; it may have been queued: look for its user_message event "
            "before sending it again"
        )

    async def _serve(self, node: str, request: _Control, payload: bytes) -> None:
        """Apply a request forwarded to ``node`` (once), store and send the verdict."""
        handler = self._handlers.get(node)
        fate_key = self._fate_key(request.corr)
        try:
            fate = await self._scripts["CLAIM"](keys=[fate_key], args=[_TAKEN, _FATE_TTL_MS])
        except (*_UNREACHABLE, RedisError) as exc:
            log.warning("redis: a forwarded %s was not served: %s", request.op, exc)
            return  # its sender gives up after its timeout
        if fate is not None or handler is None:
            return  # served already (it came twice: channel and set), or abandoned
        if request.op == "input" and request.answer is not None:
            verdict = handler.input_given(request.owner, request.task_id, request.answer) or ""
        else:
            verdict = handler.message_given(request.owner, request.task_id, request.text or "")
        reply = _Control(op="reply", corr=request.corr, verdict=verdict)
        with contextlib.suppress(RedisError, *_UNREACHABLE):  # the sender reads the fate key
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(fate_key, _VERDICT + verdict.encode(), px=_FATE_TTL_MS)
            pipe.srem(self._node_key(node, "cancels"), payload)
            if request.reply_to:
                pipe.execute_command(
                    "SPUBLISH", self._node_key(request.reply_to, "ctl"), _encoder.encode(reply)
                )
            await pipe.execute()

    async def flush(self) -> None:
        await self._ensure()
        await self._thread_writes_done()
        while self._ops or self._calls:
            if self._outage_since is not None:
                raise BackendUnavailable(self.health() or "Redis is unreachable")
            self._flushed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await self._flushed.wait()

    async def close(self) -> None:
        """Write what is queued (for up to ``lease`` seconds), leave, disconnect."""
        if self._closing:
            return
        if self._thread_writes:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.lease):
                    await self._thread_writes_done()
        if self._ops and self._started:
            with contextlib.suppress(TimeoutError, BackendUnavailable):
                async with asyncio.timeout(self.config.lease):
                    while self._ops:
                        self._flushed.clear()
                        await self._flushed.wait()
        self._closing = True
        for op in self._calls:
            if op.waiter is not None and not op.waiter.done():
                op.waiter.set_exception(RedisConnectionError("the backend is closing"))
        if self._ops:
            log.error("redis: %d queued writes lost at shutdown (Redis unreachable)", self._queued)
        # redis-py may turn a cancellation inside a command into a connection error, which
        # the loops survive by design: they also stop on _closing.
        self._wake.set()
        self._subscriber_gate.set()
        for task in (*self._tasks, *self._background):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        if self._started:
            with contextlib.suppress(RedisError, *_UNREACHABLE):
                async with asyncio.timeout(2):
                    pipe = self._redis.pipeline(transaction=False)
                    for node in self._handlers:
                        # A clean exit: its tasks are all finished (the manager drained).
                        pipe.delete(self._node_key(node))
                    await pipe.execute()
        await self._disconnect()

    def health(self) -> str | None:
        """``None`` when healthy, else why not (for ``/healthz``)."""
        if self._outage_since is not None:
            return (
                f"Redis unreachable for {time.monotonic() - self._outage_since:.1f} s "
                f"({self.last_error}); {self._queued} writes queued"
            )
        return None

    @property
    def buffered(self) -> int:
        """Writes not yet in Redis."""
        return self._queued

    # -- fault injection (tests)

    def stop_lease(self) -> None:
        """Stop renewing the leases, as a frozen process would (its connections stay): other
        processes take it for lost. For tests."""
        self._tasks[2].cancel()

    def pause_subscriber(self) -> None:
        """Drop the subscriber connection and keep it down until :meth:`resume_subscriber`:
        live events published meanwhile are lost to this process. For tests."""
        self._subscriber_gate.clear()
        pubsub = self._pubsub
        if isinstance(pubsub, cluster.ShardedPubSub):
            pubsub.abort()
        elif pubsub is not None and pubsub.connection is not None:
            pubsub.connection._writer.transport.abort()

    def resume_subscriber(self) -> None:
        """Let the subscriber reconnect (see :meth:`pause_subscriber`)."""
        self._subscriber_gate.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ registry

    async def create(
        self, record: TaskRecord, *, max_active: int | None = None
    ) -> TaskRecord | None:
        owner, task_id = record.owner, record.task_id
        keys = self._task_keys(owner, task_id)
        base = self._base(owner)
        made = uuid.uuid4().hex  # names this create: its own record is told from another's
        fields = [
            *_fields(record, full=True),
            "first_seq",
            record.last_seq + 1,
            "bytes",
            0,
            "made",
            made,
        ]
        member = _member(owner, task_id)
        named = self._node_key(record.node, "tasks") if record.node and not record.final else None
        script_keys = [keys[0], base + "idx", keys[3]]
        args = [task_id, record.created, max_active or 0, 1 if record.final else 0, *fields]

        def created(result: Any) -> bool:
            # Found as this very create's record: a send whose reply was lost created it.
            return result[0] == 1 or (result[0] == 0 and _own(result[1], made))

        def found(result: Any) -> TaskRecord | None:  # the task of that id (None: the limit)
            return _record_from(_pairs(result[1])) if result[0] == 0 else None

        def orphaned(result: Any) -> None:  # the reply came after the start gave up waiting
            if not created(result):
                self._queue_unname(named, member, record, found(result))
            elif not record.final:
                self._created_here(record)
                self._run_orphan(record)

        await self._ensure()
        try:
            if self._cluster:
                result = await self._run_named(named, member, "CREATE", script_keys, args)
            else:  # with the flusher's next batch: no round trip of its own
                sha = self._scripts["CREATE"].sha
                packed = wire.command("EVALSHA", sha, 3, *script_keys, *args)
                if named is not None:  # named first, as in _run_named
                    packed = wire.command("SADD", named, member) + packed
                replies = 2 if named is not None else 1
                result = await self._call((owner, task_id), packed, replies, orphaned)
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc
        if created(result):
            if not record.final:
                self._created_here(record)
            return None
        existing = found(result)
        if self._cluster:
            await self._unname(named, member, record, existing)
        else:
            self._queue_unname(named, member, record, existing)
        if existing is None:
            assert max_active is not None
            raise ActiveLimitReached(max_active)
        return existing

    async def _unname(
        self, named: str | None, member: str, record: TaskRecord, existing: TaskRecord | None
    ) -> None:
        """Out of the node's set again after a create that did not create (awaited: a retry's
        naming comes after it), unless the task found is one this node runs."""
        if named is None or _runs_here(existing, record):
            return
        with contextlib.suppress(RedisError, *_UNREACHABLE):
            await self._redis.srem(named, member)

    def _queue_unname(
        self, named: str | None, member: str, record: TaskRecord, existing: TaskRecord | None
    ) -> None:
        """:meth:`_unname`, in order with the creates riding with the flusher (a retry's
        naming comes after it)."""
        if named is not None and not _runs_here(existing, record):
            command = wire.command("SREM", named, member)
            self._queue_call(_Op(_CALL, (record.owner, record.task_id), command, writes=0))

    def _run_orphan(self, record: TaskRecord) -> None:
        """Run a task whose create reached Redis after its start gave up waiting (timed out or
        cancelled once the create was sent): it exists, so it runs here all the same, as the
        task manager does with a task it created but cannot follow; a retry of that start
        finds it. (A node that cannot run tasks it did not start leaves it to the sweeper of
        this node, should it be lost.)"""
        handler = self._handlers.get(record.node)
        adopt = getattr(handler, "task_adopted", None)
        log.warning(
            "redis: task %s was created for a start that gave up; running it", record.task_id
        )
        if adopt is not None:
            adopt(record)

    async def _call(
        self, key: Key, packed: bytes, replies: int, orphaned: Callable[[Any], None]
    ) -> Any:
        """Send ``replies`` packed commands at the head of the flusher's next batch (ahead of
        queued writes) and return the reply of the last one (an error reply raised). Refused
        at once while Redis is unreachable or the backend closes; past the round trip's
        timeout, or cancelled, the call is taken back if it was not sent yet, else
        ``orphaned`` gets its reply (also one that came as the caller gave up)."""
        if self._closing:
            raise RedisConnectionError("the backend is closing")
        if self._outage_since is not None:
            raise RedisConnectionError(self.last_error or "Redis is unreachable")
        waiter = asyncio.get_running_loop().create_future()
        op = _Op(_CALL, key, packed, replies, writes=0, waiter=waiter, orphaned=orphaned)
        self._queue_call(op)
        try:
            async with asyncio.timeout(self._timeout):
                result = await waiter
        except BaseException as exc:
            if not op.sends:
                with contextlib.suppress(ValueError):
                    self._calls.remove(op)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                late = waiter.result()  # the reply came, but the caller was stopped first
                if not isinstance(late, Exception):
                    orphaned(late)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError("no reply from Redis in time") from None
            raise
        if isinstance(result, Exception):
            raise result
        return result

    async def _run_named(
        self, tasks_key: str | None, member: str, script: str, keys: list[str], args: list[Any]
    ) -> Any:
        """Name a task in its node's set (``tasks_key``; none: not named) and run a creating
        script, in one round trip (two on a Cluster, whose pipelines take no scripts); the
        script's reply. Named first: if this process dies right after the create, the sweeper
        still finds the task."""
        if self._cluster:
            if tasks_key is not None:
                await self._redis.sadd(tasks_key, member)
            return await self._scripts[script](keys=keys, args=args)
        sha = self._scripts[script].sha
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            if tasks_key is not None:
                pipe.sadd(tasks_key, member)
            pipe.evalsha(sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            result = replies[-1]
            if isinstance(result, NoScriptError) and attempt == 1:
                # Redis restarted without its script cache.
                await self._redis.script_load(self._scripts[script].script)
                continue
            if isinstance(result, Exception):
                raise result
            if tasks_key is not None and isinstance(replies[0], Exception):
                raise replies[0]
            return result
        raise AssertionError("unreachable")

    async def get(self, owner: str, task_id: str) -> TaskRecord | None:
        await self._ensure()
        try:
            raw = await self._redis.hgetall(self._task_keys(owner, task_id)[0])
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc
        return _record_from(raw) if raw else None

    async def list_tasks(self, owner: str) -> list[TaskRecord]:
        base = self._base(owner)
        await self._ensure()
        try:
            ids = await self._redis.zrange(base + "idx", 0, -1)
            pipe = self._redis.pipeline(transaction=False)
            for tid in ids:
                pipe.hgetall(base + "t:" + tid.decode())
            raws = await pipe.execute()
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc
        records, gone = [], []
        for tid, raw in zip(ids, raws, strict=True):
            if raw:
                records.append(_record_from(raw))
            else:
                gone.append(tid)
        if gone:  # expired: drop them from the index too
            with contextlib.suppress(RedisError, *_UNREACHABLE):
                await self._redis.zrem(base + "idx", *gone)
        return records

    async def active_count(self, owner: str) -> int:
        await self._ensure()
        try:
            return int(await self._redis.scard(self._base(owner) + "active"))
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc

    def _new_local(self, record: TaskRecord) -> _Local:
        keys = self._task_keys(record.owner, record.task_id)
        return _Local(record, b"".join(map(wire.bulk, keys[:3])), wire.bulk(record.task_id))

    def update(self, record: TaskRecord) -> None:
        key = (record.owner, record.task_id)
        local = self._local.get(key)
        if local is None or local.fenced:
            return
        local.record = record
        self._write_of(local, key, record).updated = record.updated

    # ------------------------------------------------------------------ event log

    def append(self, record: TaskRecord, frame: EventFrame) -> None:
        key = (record.owner, record.task_id)
        local = self._local.get(key)
        if local is None or local.fenced:
            return
        local.seq = frame.seq
        local.record = record
        self._queue_append(local, key, record, frame)

    def _queue_append(self, local: _Local, key: Key, record: TaskRecord, frame: EventFrame) -> None:
        # The hot path: the event joins its owner's write (packed when the flusher takes it).
        write = self._write_of(local, key, record)
        write.frames.append(frame)
        write.updated = frame.ts

    def _write_of(self, local: _Local, key: Key, record: TaskRecord) -> _TaskWrite:
        """The task's part of its owner's write still gathering (a new write at the end of
        the queue if there is none, or it is full), counted one write more. A task's writes
        stay in the order made: each joins the newest write of its owner."""
        owner = key[0]
        op = self._open.get(owner)
        if op is None or op.writes >= self.config.batch:
            op = self._open[owner] = _Op(_WRITE, (owner, ""), writes=0)
            self._ops.append(op)
            if not self._wake.is_set():
                self._wake.set()
        write = op.tasks.get(key)
        if write is None:
            write = op.tasks[key] = _TaskWrite(local, record, record.updated)
        else:
            write.record = record
        write.writes += 1
        op.writes += 1
        self._queued += 1
        return write

    def _pack_write(self, op: _Op) -> None:
        """Pack a write as one ``APPEND`` call, by hand (see redis_wire; each task's keys and
        id were packed once, in its ``_Local``); a final record also takes its task out of its
        node's set (swept no more), by a command after the call."""
        base = self._base(op.key[0])
        keys = [wire.bulk(base + "active")]
        args = [self._log_bounds, wire.bulk(base), self._owner_bounds]
        n_args = 5
        after: list[bytes] = []
        for key, write in op.tasks.items():
            local, record, frames = write.local, write.record, write.frames
            fields: list[Any] = []
            if record is not local.sent:  # else only the time moved
                local.sent = record
                fields = _fields(record)
            keys.append(local.keys)
            args += (
                local.tail,
                _small(record.epoch),
                b"$1\r\n1\r\n" if record.final else b"$1\r\n0\r\n",
            )
            if frames:  # one entry of the log: a JSON array (seqs first..last, no holes)
                events = _encoder.encode(frames)  # one call for all: the cheapest
                sizes = [
                    len(e.delta) + DELTA_OVERHEAD
                    if type(e := f.event) is LlmResponse
                    # (frame_size, inlined for the deltas)
                    else frame_size(f)
                    for f in frames
                ]
                first = b"%d" % frames[0].seq
                last = b"%d" % frames[-1].seq
                listed = _encoder.encode(sizes)  # a JSON array: far cheaper than str()
                added = b"%d" % sum(sizes)
                args += (
                    b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n"
                    % (len(first), first, len(last), last, len(events)),
                    events,
                    b"\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(listed), listed, len(added), added),
                )
            else:
                args.append(b"$1\r\n0\r\n$1\r\n0\r\n$0\r\n\r\n$0\r\n\r\n$1\r\n0\r\n")
            args.append(_small(len(fields) // 2 + 1))
            if fields:
                args += map(wire.bulk, fields)
            ts = _encoder.encode(write.updated)  # as repr() writes it, several times faster
            args.append(b"$7\r\nupdated\r\n$%d\r\n%s\r\n" % (len(ts), ts))
            n_args += 11 + len(fields)
            if record.final and record.node:
                after.append(
                    wire.command("SREM", self._node_key(record.node, "tasks"), _member(*key))
                )
        n_keys = 1 + 3 * len(op.tasks)
        head = b"*%d\r\n%s%s" % (3 + n_keys + n_args, self._append_sha, wire.bulk(n_keys))
        op.packed = b"".join((head, *keys, *args, *after))
        op.replies = 1 + len(after)

    async def read(self, owner: str, task_id: str, after_seq: int) -> LogSlice | None:
        keys = self._task_keys(owner, task_id)
        await self._ensure()
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hmget(keys[0], "first_seq", "last_seq")
            pipe.xrange(keys[1], min=f"{after_seq + 1}-0")
            (first, last), entries = await pipe.execute()
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc
        if last is None:
            return None
        start = max(after_seq, int(first or 1) - 1)
        frames = [
            frame
            for _, entry in entries
            for frame in _entry_frames(entry[b"f"])
            if frame.seq > start
        ]
        return LogSlice(int(first or 1), frames)

    async def listen(self, owner: str, task_id: str, listener: Listener) -> Callable[[], None]:
        key = (owner, task_id)
        await self._ensure()
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(self._task_keys(owner, task_id)[2])
            if key not in self._local:
                self._subscribe(key, watch)
        watch.listeners = (*watch.listeners, listener)

        def undo() -> None:
            watch.listeners = tuple(x for x in watch.listeners if x is not listener)
            if not watch.listeners and self._watches.get(key) is watch:
                del self._watches[key]
                self._unsubscribe(watch)

        subscribed = watch.subscribed
        if subscribed is not None and not subscribed.done():
            # Only events published after the subscription is in place reach this process:
            # wait for it, so the caller's read of the log that follows misses nothing.
            try:
                async with asyncio.timeout(self._timeout):
                    await asyncio.wait([subscribed])  # also ends if it is dropped (cancelled)
            except TimeoutError:
                undo()
                raise BackendUnavailable(
                    "cannot subscribe to the task's events: Redis is unreachable"
                ) from None
            except BaseException:
                undo()
                raise
        return undo

    def _dispatch(self, key: Key, frame: EventFrame) -> None:
        watch = self._watches.get(key)
        if watch is None:
            return
        if watch.filling:
            watch.held.append(frame)
        elif frame.seq > watch.last_seq + 1 and watch.last_seq and watch.remote:
            # A live frame after a hole (the subscriber reconnected): read the hole first.
            watch.held.append(frame)
            self._fill(key, watch)
        else:
            self._deliver(key, watch, frame)

    def _deliver(self, key: Key, watch: _Watch, item: EventFrame | Gap) -> None:
        if isinstance(item, EventFrame):
            self._deliver_frames(key, watch, (item,))
            return
        for listener in watch.listeners:
            try:
                listener(item)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("event listener of task %s failed", key[1])

    def _deliver_frames(self, key: Key, watch: _Watch, frames: Iterable[EventFrame]) -> None:
        for frame in frames:
            if frame.seq <= watch.last_seq:
                continue  # delivered already (a hole read overlapping live frames)
            watch.last_seq = frame.seq
            for listener in watch.listeners:
                try:
                    listener(frame)
                except Exception:  # one broken subscriber must not stop the others
                    log.exception("event listener of task %s failed", key[1])

    def _fill(self, key: Key, watch: _Watch) -> None:
        """Read the log after the last delivered seq, then deliver what was held."""
        if not watch.filling:
            watch.filling = True
            self._spawn(self._read_hole(key, watch))

    async def _read_hole(self, key: Key, watch: _Watch) -> None:
        backoff = 0.05
        after = watch.last_seq
        found = None
        while not self._closing and self._watches.get(key) is watch:
            try:
                found = await self.read(key[0], key[1], after)
                break
            except BackendUnavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        held, watch.held = watch.held, []
        watch.filling = False
        if found is None:
            return
        if after and found.first_available_seq > after + 1:
            # Retention dropped part of the hole: say so, as a subscribe would.
            self._deliver(
                key,
                watch,
                Gap(task_id=key[1], first_available_seq=found.first_available_seq, after_seq=after),
            )
            watch.last_seq = max(watch.last_seq, found.first_available_seq - 1)
        for frame in sorted([*found.frames, *held], key=_seq):
            self._deliver(key, watch, frame)

    # ------------------------------------------------------------------ lifetime of a task

    def expire(self, owner: str, task_id: str, after: float) -> None:
        key = (owner, task_id)
        local = self._local.pop(key, None)
        if local is not None and local.fenced:
            return  # another node ended it and decides
        keys = self._task_keys(owner, task_id)
        if after <= 0:
            self._queue_remove(owner, task_id)
        elif math.isinf(after):
            packed = wire.command("PERSIST", keys[0]) + wire.command("PERSIST", keys[1])
            self._queue(_Op(_PERSIST, key, packed, 2))
        else:
            ms = max(1, int(after * 1000))
            packed = wire.command("PEXPIRE", keys[0], ms) + wire.command("PEXPIRE", keys[1], ms)
            self._queue(_Op(_EXPIRE, key, packed, 2))

    def _queue_remove(self, owner: str, task_id: str) -> None:
        keys = self._task_keys(owner, task_id)
        base = self._base(owner)
        packed = wire.command(
            "EVALSHA",
            self._scripts["REMOVE"].sha,
            7,
            keys[0],
            keys[1],
            base + "idx",
            keys[3],
            base + "done",
            base + "done_bytes",
            base + "meta",
            task_id,
        )
        self._queue(_Op(_REMOVE, (owner, task_id), packed))

    # ------------------------------------------------------------------ cancel across nodes

    async def request_cancel(self, owner: str, task_id: str, reason: str) -> CancelResult:
        await self._ensure()
        try:
            result = await self._scripts["CANCEL"](
                keys=[self._task_keys(owner, task_id)[0]], args=[reason]
            )
        except (*_UNREACHABLE, RedisError) as exc:
            raise _unavailable(exc) from exc
        verdict = result[0]
        if verdict == b"unknown":
            return "unknown"
        if verdict == b"terminal":
            return "already_terminal"
        node = result[1].decode()
        if node in self._handlers:  # this process runs it: no round trip
            self._handlers[node].cancel_requested(owner, task_id, reason)
        elif node:
            message = _encoder.encode({"owner": owner, "task_id": task_id, "reason": reason})
            with contextlib.suppress(RedisError, *_UNREACHABLE):
                pipe = self._redis.pipeline(transaction=False)
                pipe.execute_command("SPUBLISH", self._node_key(node, "ctl"), message)
                pipe.sadd(self._node_key(node, "cancels"), message)
                await pipe.execute()
        return "accepted"

    def _on_control(self, node: str, payload: bytes) -> None:
        handler = self._handlers.get(node)
        try:
            msg = _ctl_decoder.decode(payload)
        except msgspec.DecodeError:
            log.warning("redis: bad control message %r", payload[:200])
            return
        if msg.op == "reply":
            future = self._replies.get(msg.corr)
            if future is not None and not future.done():
                future.set_result(msg.verdict or "")
            return
        if msg.op in ("input", "message"):
            if handler is not None and msg.corr:
                self._spawn(self._serve(node, msg, payload))
            return
        local = self._local.get((msg.owner, msg.task_id))
        if handler is not None and local is not None and not local.fenced:
            handler.cancel_requested(msg.owner, msg.task_id, msg.reason)

    # ------------------------------------------------------------------ the flusher

    def _queue_call(self, op: _Op) -> None:
        """A call: at the head of the next batch, in order with the other calls."""
        self._calls.append(op)
        if not self._wake.is_set():
            self._wake.set()

    def _queue(self, op: _Op) -> None:
        self._ops.append(op)
        self._queued += op.writes
        if not self._wake.is_set():
            self._wake.set()

    async def _flusher(self) -> None:
        backoff = 0.05
        while not self._closing:
            if not self._ops and not self._calls:
                self._flushed.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            started = time.perf_counter()
            try:
                results = await self._execute(batch)
            except _UNREACHABLE as exc:
                self._note_outage(exc)
                if isinstance(exc, wire.NotSent):
                    self._refuse_calls(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self.rtt = time.perf_counter() - started
            self.last_batch = sum(op.writes for op in batch)
            if self._outage_since is not None:
                log.warning(
                    "redis: reachable again after %.1f s; writing %d queued writes",
                    time.monotonic() - self._outage_since,
                    self._queued,
                )
                self._outage_since = None
                self._aborted = False
                self.health_changed.set()
            ops, calls = self._ops, self._calls  # (_fenced may have replaced _ops)
            for op in batch:
                if op.kind == _CALL:
                    if calls and calls[0] is op:
                        calls.popleft()
                elif ops and ops[0] is op:
                    ops.popleft()
                    self._queued -= op.writes
            for op, result in zip(batch, results, strict=True):
                self._applied(op, result)
            if self._untrimmed:
                self._queue_trim_all()

    def _refuse_calls(self, exc: BaseException) -> None:
        """Fail the calls waited for that have never reached Redis (this batch, not sent, was
        their first): their callers get the outage at once, and nothing of them is carried
        out later. One sent before, whose outcome is unknown, stays to be sent again, as do
        the calls nobody waits for (they put the node's set right)."""
        kept: deque[_Op] = deque()
        for op in self._calls:
            if op.sends > 1 or op.waiter is None:
                kept.append(op)
            elif not op.waiter.done():
                op.waiter.set_exception(exc)
        self._calls = kept

    def _take(self) -> list[_Op]:
        """The calls waited for, then the ops at the head of the queue, up to ``pipeline``
        times ``batch`` writes (one op at least); a write taken gathers no more (later ones of
        its owner start a new write behind it)."""
        batch: list[_Op] = list(self._calls)
        for op in batch:
            op.sends += 1
        limit = self.config.batch * self.config.pipeline
        n = 0
        for op in self._ops:
            if n and n + op.writes > limit:
                break
            if op.kind == _WRITE and not op.packed:
                if self._open.get(op.key[0]) is op:
                    del self._open[op.key[0]]
                self._pack_write(op)
            op.sends += 1
            batch.append(op)
            n += op.writes
        return batch

    async def _execute(self, batch: list[_Op]) -> list[Any]:
        raw = await self._wire.call(
            b"".join(op.packed for op in batch), sum(op.replies for op in batch)
        )
        results: list[Any] = []
        i = 0
        for op in batch:  # a call's result: its last reply; any other op's: its first
            results.append(raw[i + op.replies - 1] if op.kind == _CALL else raw[i])
            i += op.replies
        for result in raw:
            if not isinstance(result, ResponseError):
                continue
            message = str(result)
            if message.startswith("OOM"):
                # maxmemory reached (noeviction): keep the writes and retry, as in an outage.
                raise RedisConnectionError(f"Redis refuses writes: {message}")
            if message.startswith("NOSCRIPT"):  # Redis restarted without its script cache
                for script in self._scripts.values():
                    await self._redis.script_load(script.script)
                raise RedisConnectionError("the scripts were reloaded (Redis restarted?)")
        return results

    def _applied(self, op: _Op, result: Any) -> None:
        if op.kind == _CALL:
            waiter = op.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(result)
            elif op.orphaned is not None and not isinstance(result, Exception):
                try:
                    op.orphaned(result)
                except Exception:  # the flusher goes on whatever a node does with it
                    log.exception("redis: handling the late reply of task %s failed", op.key[1])
            return
        if isinstance(result, Exception):
            tasks = ", ".join(k[1] for k in op.tasks) or op.key[1]
            log.error("redis: a write of task(s) %s failed: %s", tasks, result)
            return
        if op.kind == _WRITE:
            results, removed = result
            owner = op.key[0]
            for task_id in removed[::2]:  # by the owner's bounds: not counted for all owners
                self._untrimmed.append((owner, task_id.decode(), -1, 0.0))
            for (key, write), done in zip(op.tasks.items(), results, strict=True):
                if done == -1:
                    self._fenced(key, write.record.node)
                    continue
                if done != 0 and done[1]:  # the task ended: count it as finished
                    self._untrimmed.append((*key, int(done[1]), write.updated))
                # Sent again after a lost reply (0), its events are delivered here now: the
                # listeners drop what they had already.
                watch = self._watches.get(key)
                if watch is None:
                    continue
                if watch.filling or watch.remote:
                    for frame in write.frames:
                        self._dispatch(key, frame)
                else:  # the path of every event: one call per write, not per event
                    self._deliver_frames(key, watch, write.frames)
        elif op.kind == _REMOVE and result:
            self._untrimmed.append((*op.key, -1, 0.0))
        elif op.kind == _TRIM_ALL:
            for member in result:  # past the bounds on all owners: remove them
                owner, _, task_id = member.decode().partition("\0")
                self._queue_remove(owner, task_id)

    def _all_keys(self) -> list[str]:
        """The keys of the bounds on all owners: one hash tag for the three (no escaped owner
        holds a ':'), so they share a Cluster slot."""
        every = f"{self._p}:{{:all}}:"
        return [every + "done", every + "done_bytes", every + "meta"]

    def _queue_trim_all(self) -> None:
        """Count the tasks that ended in (and the ones removed out of) the bounds on all
        owners, in the next batch (see :data:`~gateway.tasks.redis_scripts.TRIM_ALL`); the
        owners' bounds were applied by the writes that ended them."""
        finished, self._untrimmed = self._untrimmed, []
        r = self.retention
        added = [f for f in finished if f[2] >= 0]
        args: list[Any] = [r.max_finished, r.max_finished_bytes, len(added)]
        for owner, task_id, size, ended in added:
            args += [_member(owner, task_id), repr(ended), size]
        args += [_member(o, t) for o, t, size, _ in finished if size < 0]
        packed = wire.command("EVALSHA", self._scripts["TRIM_ALL"].sha, 3, *self._all_keys(), *args)
        self._queue(_Op(_TRIM_ALL, ("", ""), packed, writes=len(finished)))

    async def _trim(self) -> None:
        """Apply the bounds on finished tasks: the owners' in their slots, then all owners'
        (see :data:`~gateway.tasks.redis_scripts.TRIM_ALL`)."""
        finished, self._untrimmed = self._untrimmed, []
        try:
            await self._trim_finished(finished)
        except BaseException:
            self._untrimmed[:0] = finished  # counted again on the next try
            raise

    async def _trim_finished(self, finished: list[Finished]) -> None:
        r = self.retention
        forgotten = [_member(o, t) for o, t, size, _ in finished if size < 0]
        added = [f for f in finished if f[2] >= 0]
        for owner in {f[0] for f in added}:
            base = self._base(owner)
            removed = await self._scripts["TRIM_OWNER"](
                keys=[base + "done", base + "done_bytes", base + "meta", base + "idx"],
                args=[base, r.max_finished_per_owner, r.max_finished_bytes_per_owner],
            )
            forgotten += [_member(owner, tid.decode()) for tid in removed[::2]]
        args: list[Any] = [r.max_finished, r.max_finished_bytes, len(added)]
        for owner, task_id, size, ended in added:
            args += [_member(owner, task_id), repr(ended), size]
        popped = await self._scripts["TRIM_ALL"](keys=self._all_keys(), args=[*args, *forgotten])
        for member in popped:
            owner, _, task_id = member.decode().partition("\0")
            keys = self._task_keys(owner, task_id)
            base = self._base(owner)
            await self._scripts["REMOVE"](
                keys=[
                    keys[0],
                    keys[1],
                    base + "idx",
                    keys[3],
                    base + "done",
                    base + "done_bytes",
                    base + "meta",
                ],
                args=[task_id],
            )

    def _fenced(self, key: Key, node: str) -> None:
        local = self._local.get(key)
        if local is None or local.fenced:
            return
        local.fenced = True
        log.warning("redis: task %s was ended by another node; stopping it here", key[1])
        for op in self._ops:  # none is packed: the batches sent were all taken off
            write = op.tasks.pop(key, None)
            if write is not None:
                op.writes -= write.writes
        self._ops = deque(op for op in self._ops if op.kind != _WRITE or op.tasks)
        if key[0] in self._open and not self._open[key[0]].tasks:
            del self._open[key[0]]
        self._queued = sum(op.writes for op in self._ops)
        watch = self._watches.get(key)
        if watch is not None:  # the other node's terminal event is in the log already
            watch.remote = True
            self._fill(key, watch)
        handler = self._handlers.get(node)
        if handler is not None:
            handler.task_lost(*key, "another gateway process took this task over")

    def _note_outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._outage_since is None:
            self._outage_since = now
            log.warning("redis: unreachable (%s); queueing writes", self.last_error)
            self.health_changed.set()
        over = self._queued > self.config.max_buffered or (
            now - self._outage_since > self.config.buffer_seconds
        )
        if over and not self._aborted:
            self._aborted = True
            self._abort_running(
                f"the task store (Redis) has been unreachable for {now - self._outage_since:.0f} s"
                f" ({self._queued} writes queued)"
            )

    def _abort_running(self, reason: str) -> None:
        """Past the outage bound: stop every task this process runs; each ends with
        ``task_failed`` (``store_unavailable``), queued after its events."""
        log.error("redis: %s; stopping this process's running tasks", reason)
        for key, local in list(self._local.items()):
            if local.fenced or local.record.final:
                continue
            local.fenced = True  # nothing more from the run
            record = local.record
            handler = self._handlers.get(record.node)
            if handler is not None:
                handler.task_lost(*key, reason)
            now = time.time()
            final = msgspec.structs.replace(
                record, state="failed", last_seq=local.seq + 1, updated=now
            )
            frame = EventFrame(
                task_id=record.task_id,
                seq=local.seq + 1,
                ts=now,
                event=TaskFailed(reason=reason, code="store_unavailable"),
            )
            local.record = final
            self._queue_append(local, key, final, frame)

    # ------------------------------------------------------------------ subscriber

    def _subscribe(self, key: Key, watch: _Watch) -> None:
        watch.remote = True
        watch.subscribed = asyncio.get_running_loop().create_future()
        self._by_channel[watch.channel] = key
        if self._pubsub is not None:
            self._spawn(self._send("SSUBSCRIBE", watch.channel))

    def _unsubscribe(self, watch: _Watch) -> None:
        if watch.subscribed is not None and not watch.subscribed.done():
            watch.subscribed.cancel()
        if self._by_channel.pop(watch.channel, None) is not None and self._pubsub is not None:
            self._spawn(self._send("SUNSUBSCRIBE", watch.channel))

    async def _send(self, *command: str) -> None:
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(RedisError, *_UNREACHABLE):
                await pubsub.execute_command(*command)

    async def _subscriber(self) -> None:
        backoff = 0.05
        reconnected = False
        while not self._closing:
            pubsub = self._new_pubsub()
            try:
                await pubsub.execute_command("SSUBSCRIBE", self._p + ":hello")  # connects
                # From here on, a new watch subscribes itself; the ones made before are in
                # the snapshot below (one twice at most, which is harmless).
                self._pubsub = pubsub
                channels = [
                    *(self._node_key(n, "ctl") for n in self._handlers),
                    *self._by_channel,
                ]
                # One channel per command: on a Cluster each may live on another shard.
                for channel in channels:
                    await pubsub.execute_command("SSUBSCRIBE", channel)
                self._pubsub_up.set()
                backoff = 0.05
                while True:
                    msg = await pubsub.parse_response(block=True)
                    self._on_pubsub(msg, reconnected)
            except _UNREACHABLE as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not self._closing:
                    log.warning("redis: subscriber connection lost (%s); reconnecting", exc)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            self._pubsub_up.set()  # start() must not wait forever on a dead Redis
            reconnected = True
            await asyncio.sleep(backoff)
            await self._subscriber_gate.wait()
            backoff = min(backoff * 2, 2.0)

    def _on_pubsub(self, msg: Any, reconnected: bool) -> None:
        if not isinstance(msg, list) or len(msg) < 3:
            return
        kind = msg[0]
        channel = msg[1].decode()
        if kind == b"smessage":
            key = self._by_channel.get(channel)
            if key is not None:
                for frame in _frames_decoder.decode(msg[2]):  # one task's write: its events
                    self._dispatch(key, frame)
            elif channel.endswith(":ctl"):
                node = channel[len(self._p) + len(":node:") : -len(":ctl")]
                self._on_control(node, msg[2])
        elif kind == b"ssubscribe":
            key = self._by_channel.get(channel)
            watch = self._watches.get(key) if key is not None else None
            if watch is None or key is None:
                return
            if watch.subscribed is not None and not watch.subscribed.done():
                watch.subscribed.set_result(None)
            elif reconnected:
                # Subscribed again after a lost connection: read what was published meanwhile.
                self._fill(key, watch)

    # ------------------------------------------------------------------ lease and sweep

    async def _renew_lease(self, node: str) -> None:
        ms = max(1, int(self.config.lease * 1000))
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._node_key(node), "1", px=ms, xx=True)
        pipe.zadd(self._nodes_key, {node: time.time()})
        renewed, added = await pipe.execute()
        if not renewed:
            if not added:  # known before, but its lease had run out
                log.error("redis: node %s had lost its lease; its tasks were taken over", node)
            await self._redis.set(self._node_key(node), "1", px=ms)

    async def _lease_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.config.lease / 3)
            try:
                for node in list(self._handlers):
                    await self._renew_lease(node)
                    await self._take_cancels(node)
                if self._sweep_after == math.inf:
                    self._sweep_after = time.monotonic() + self.config.lease
                await self._sweep()
                if self._outage_since is not None and not self._ops:
                    log.warning("redis: reachable again")
                    self._outage_since = None
                    self._aborted = False
                    self.health_changed.set()
            except _UNREACHABLE as exc:
                self._sweep_after = math.inf
                self._note_outage(exc)
            except RedisError:
                log.exception("redis: lease tick failed")

    async def _take_cancels(self, node: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.smembers(self._node_key(node, "cancels"))
        pipe.delete(self._node_key(node, "cancels"))
        messages, _ = await pipe.execute()
        for message in messages:
            self._on_control(node, message)

    async def _sweep(self) -> None:
        nodes = [n.decode() for n in await self._redis.zrange(self._nodes_key, 0, -1)]
        pipe = self._redis.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(self._node_key(node))
        alive = await pipe.execute()
        self.nodes_alive = sum(1 for a in alive if a)
        if time.monotonic() < self._sweep_after:
            return
        for node, is_alive in zip(nodes, alive, strict=True):
            if not is_alive and node not in self._handlers:
                await self.sweep_node(node)

    async def sweep_node(self, node: str) -> int:
        """End (or adopt, when queued) every active task of a lost ``node``; returns how many
        this call handled. Safe to run in several processes at once."""
        tasks_key = self._node_key(node, "tasks")
        handled = 0
        for member in await self._redis.smembers(tasks_key):
            owner, _, task_id = member.decode().partition("\0")
            if await self._end_lost(node, owner, task_id):
                handled += 1
            await self._redis.srem(tasks_key, member)
        if not await self._redis.exists(self._node_key(node)):
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(self._nodes_key, node)
            pipe.delete(tasks_key, self._node_key(node, "cancels"))
            await pipe.execute()
        if handled:
            log.warning("redis: node %s was lost; %d of its tasks ended or moved", node, handled)
        return handled

    async def _end_lost(self, node: str, owner: str, task_id: str) -> bool:
        keys = self._task_keys(owner, task_id)
        r = self.retention
        for _ in range(100):  # compare-and-set, retried while the lost node still writes
            raw = await self._redis.hgetall(keys[0])
            if not raw or raw.get(b"node", b"").decode() != node:
                return False
            record = _record_from(raw)
            if record.final:
                return False
            if record.state == "pending" and not raw.get(b"cancel"):
                adopted = await self._adopt(node, record)
                if adopted is None:
                    continue
                if adopted:
                    return True
            frame = EventFrame(
                task_id=task_id,
                seq=record.last_seq + 1,
                ts=time.time(),
                event=TaskFailed(
                    reason=f"the gateway process running this task ({node}) was lost",
                    code="node_lost",
                ),
            )
            done = await self._scripts["END_LOST"](
                keys=keys,
                args=[
                    node,
                    record.epoch,
                    record.last_seq,
                    _event_bytes(frame),
                    task_id,
                    repr(frame.ts),
                    r.max_events,
                    r.max_bytes,
                    self._base(owner),
                ],
            )
            if done:
                self._untrimmed.append((owner, task_id, int(done), frame.ts))
                await self._trim()
                return True
        return False

    async def _adopt(self, lost: str, record: TaskRecord) -> bool | None:
        """Move a queued task to a node of this process that can run it. True: moved; False:
        no node here adopts tasks; None: the record changed meanwhile (read it again)."""
        for node, handler in self._handlers.items():
            adopt = getattr(handler, "task_adopted", None)
            if adopt is None:
                continue
            epoch = await self._scripts["ADOPT"](
                keys=[self._task_keys(record.owner, record.task_id)[0]],
                args=[lost, record.epoch, node],
            )
            if not epoch:
                return None
            await self._redis.sadd(
                self._node_key(node, "tasks"), _member(record.owner, record.task_id)
            )
            moved = msgspec.structs.replace(record, node=node, epoch=int(epoch))
            key = (record.owner, record.task_id)
            self._local[key] = self._new_local(moved)
            watch = self._watches.get(key)
            if watch is not None:
                watch.remote = False  # this process writes it now; the channel echo is deduped
            adopt(moved)
            return True
        return False


# ---------------------------------------------------------------------- records


def _seq(frame: EventFrame) -> int:
    return frame.seq


_SMALL = [wire.bulk(i) for i in range(1024)]


def _small(n: int) -> bytes:
    """A count as a RESP bulk string (the small ones packed once)."""
    return _SMALL[n] if 0 <= n < 1024 else wire.bulk(n)


def _event_bytes(frame: EventFrame) -> bytes:
    """An event as stored in its task's log and published to other processes (JSON); a
    write's events are the array of the same (``_encoder.encode(frames)``, in
    :meth:`RedisBackend._pack_write`)."""
    return _encoder.encode(frame)


def _entry_frames(payload: bytes) -> list[EventFrame]:
    """The events of one entry of a task's log: a write's, as a JSON array (or a single event,
    as earlier versions stored them)."""
    if payload[:1] == b"[":
        return _frames_decoder.decode(payload)
    return [_frame_decoder.decode(payload)]


def _runs_here(existing: TaskRecord | None, record: TaskRecord) -> bool:
    """Whether the task a create found is one the creating node runs (it stays named)."""
    return existing is not None and existing.node == record.node and not existing.final


def _own(stored: Iterable[Any], made: str) -> bool:
    """Whether a stored task (its hash, flat) was written by the create named ``made``."""
    return _pairs(stored).get(b"made") == made.encode()


def _member(owner: str, task_id: str) -> str:
    return f"{owner}\0{task_id}"


def _fields(record: TaskRecord, *, full: bool = False) -> list[Any]:
    """The record's mutable fields as hash field/value pairs (all of them with ``full``)."""
    fields: list[Any] = [
        "state",
        record.state,
        "progress",
        record.progress or "",
        "turn",
        record.turn,
        "updated",
        repr(record.updated),
    ]
    if record.usage is not None:
        fields += ["usage", _encoder.encode(record.usage)]
    pending = record.pending_input
    fields += ["pending_input", _encoder.encode(pending) if pending is not None else ""]
    if full:
        fields += [
            "owner",
            record.owner,
            "task_id",
            record.task_id,
            "input",
            record.input,
            "options",
            _encoder.encode(record.options),
            "created",
            repr(record.created),
            "last_seq",
            record.last_seq,
            "node",
            record.node,
            "epoch",
            record.epoch,
        ]
        if record.thread_id is not None:
            fields += ["thread_id", record.thread_id]
    return fields


def _pairs(flat: Iterable[Any]) -> dict[bytes, bytes]:
    items = list(flat)
    return dict(zip(items[::2], items[1::2], strict=True))


def _record_from(raw: dict[bytes, bytes]) -> TaskRecord:
    def text(name: str, default: str = "") -> str:
        value = raw.get(name.encode())
        return value.decode() if value is not None else default

    usage = raw.get(b"usage")
    pending = raw.get(b"pending_input")
    state: TaskState = text("state", "pending")  # type: ignore[assignment]
    return TaskRecord(
        owner=text("owner"),
        task_id=text("task_id"),
        input=text("input"),
        options=_options_decoder.decode(raw.get(b"options") or b"{}"),
        created=float(text("created", "0")),
        node=text("node"),
        epoch=int(text("epoch", "0")),
        state=state,
        updated=float(text("updated", "0")),
        last_seq=int(text("last_seq", "0")),
        progress=text("progress") or None,
        turn=int(text("turn", "0")),
        usage=_usage_decoder.decode(usage) if usage else None,
        thread_id=text("thread_id") or None,
        pending_input=_input_request_decoder.decode(pending) if pending else None,
    )


def _unavailable(exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(
        f"the task store (Redis) is unreachable: {exc}; retry with backoff", retry_after=1.0
    )


def _safe_url(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"
