"""The Redis backend: many gateway processes, one task space.

Tasks, their event logs and their state live in Redis (key layout and scripts in
:mod:`gateway.tasks.redis_scripts`). Each gateway process is a *node* with a random id; the
node running a task is the only writer of its log.

Writes (``append``, ``update``, ``expire``) return at once; a per-node *flusher* sends them in
pipelined batches, one script call per event (epoch check, ``XADD`` with the seq as entry id,
trim, record update, ``SPUBLISH``). **Durable before visible**: this node's listeners get an
event only once Redis has it, and other nodes get it from the publish that the same script
does, so a client never sees an event that a later reader cannot replay.

Listening to a task another node runs subscribes to its channel; ``read`` waits for that
subscription to be in place before it reads the log, so the replay/live join of
:class:`~gateway.tasks.subscription.Subscription` stays race-free across nodes. A seq jump on
the channel, or a reconnection of the subscriber connection, reads the hole from the log.

Nodes and failure:

- every node renews a lease (``P:node:N`` with a TTL of ``lease`` seconds) each
  ``lease / 3`` seconds, and then sweeps: a node whose lease expired is *lost*. Each of its
  unfinished tasks gets exactly one terminal ``task_failed`` with code ``node_lost`` (written by
  a compare-and-set script that bumps the task's epoch, so the lost node, if it comes back,
  cannot append anything after it), except tasks still queued (no work done), which a survivor
  adopts and runs. Running tasks are not re-run: their tools may have had side effects.
  A node is noticed lost within ``lease * 4 / 3`` seconds (13.3 s with the default 10 s).
- cancel through another node marks the task (``cancel`` field), publishes to the running
  node's control channel, and adds the request to that node's ``cancels`` set, which the node
  reads on every lease tick: a lost publish delays a cancel by one tick, never forever.
- Redis unavailable: calls that need an answer raise :class:`TaskError` with code
  ``unavailable`` (retryable); writes stay buffered and the flusher retries with backoff (50 ms
  doubling to 2 s). Past ``max_buffered`` events or ``buffer_seconds`` of outage, this node's
  running tasks are stopped and end with ``task_failed`` code ``store_unavailable``; everything
  buffered, those terminal events included, is written once Redis answers again.
  :meth:`RedisBackend.health` says why the node is unhealthy (``/healthz`` answers 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from protocol.errors import ErrorCode
from protocol.events import TERMINAL_STATES, TaskFailed, Usage
from protocol.frames import EventFrame, StartOptions, TaskState

from . import redis_scripts as lua
from .backend import Listener, LogSlice, TaskRecord
from .errors import TaskError

__all__ = ["RedisBackend", "RedisConfig", "TaskHooks"]

log = logging.getLogger(__name__)

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_FINAL = frozenset({"completed", "failed", "cancelled"})

_frame_encoder = msgspec.json.Encoder()
_frame_decoder = msgspec.json.Decoder(EventFrame)
_options_decoder = msgspec.json.Decoder(StartOptions)
_usage_decoder = msgspec.json.Decoder(Usage)
_ctl_decoder = msgspec.json.Decoder(dict[str, str])


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Where and how the Redis backend keeps tasks."""

    url: str = "redis://127.0.0.1:6379/0"
    """``redis://[user:password@]host:port/db`` or ``rediss://`` (TLS)."""
    prefix: str = "osp"
    """First part of every key (several gateways' task spaces can share one Redis)."""
    lease: float = 10.0
    """Seconds a node's lease lasts; it is renewed every third of it. A node silent for
    longer is lost: its unfinished tasks end with ``node_lost``."""
    max_events: int = 10_000
    """Events retained per task log (the oldest go first; the newest is always kept)."""
    max_bytes: int = 2 * 1024 * 1024
    """Bytes retained per task log (encoded event frames)."""
    max_buffered: int = 100_000
    """Events a node keeps while Redis is unreachable before it stops its running tasks."""
    buffer_seconds: float = 30.0
    """Seconds of outage after which a node stops its running tasks."""
    batch: int = 512
    """Most writes sent in one pipeline."""


class TaskHooks(Protocol):
    """What the backend asks of the task manager of its node."""

    def cancel_local(self, owner: str, task_id: str, reason: str) -> None:
        """A cancel for a task of this node arrived through another node."""

    def abort_local(self, owner: str, task_id: str, code: str, reason: str) -> None:
        """Stop the run and end the task with ``task_failed`` of that code (storage lost)."""

    def drop_local(self, owner: str, task_id: str) -> None:
        """Another node ended this task (fenced out): stop the run, write nothing more."""

    def adopt(self, record: TaskRecord) -> None:
        """Run a queued task of a lost node here (its record has this node's epoch)."""


Key = tuple[str, str]


class _Local:
    """A task this node writes to."""

    __slots__ = ("epoch", "fenced")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.fenced = False


class _Watch:
    """The listeners of one task on this node, and its live feed from Redis (when remote)."""

    __slots__ = ("channel", "filling", "held", "last_seq", "listeners", "ready")

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.listeners: tuple[Listener, ...] = ()
        self.last_seq = 0  # highest seq given to the listeners
        self.ready: asyncio.Future[None] | None = None  # subscription confirmed (remote)
        self.filling = False  # a read of a hole is under way; live frames wait in held
        self.held: list[EventFrame] = []


# Write operations queued for the flusher.
_APPEND, _UPDATE, _EXPIRE, _PERSIST = 0, 1, 2, 3


@dataclass(slots=True)
class _Op:
    kind: int
    key: Key
    args: list[Any] = field(default_factory=list)
    frame: EventFrame | None = None
    terminal: bool = False


class RedisBackend:
    """A :class:`~gateway.tasks.backend.TaskBackend` over Redis (see the module docstring).

    ``await start()`` before use (connects, registers the node, starts the flusher, the lease
    and the subscriber); ``await close()`` at the end."""

    def __init__(
        self,
        config: RedisConfig | None = None,
        *,
        max_active_per_owner: int = 0,
        node_id: str | None = None,
    ) -> None:
        cfg = config or RedisConfig()
        if cfg.max_events < 1 or cfg.max_bytes < 1 or cfg.lease <= 0:
            raise ValueError("max_events, max_bytes and lease must be positive")
        self.config = cfg
        self.max_active_per_owner = max_active_per_owner
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.hooks: TaskHooks | None = None
        self._timeout = max(2.0, cfg.lease / 3)
        # One immediate retry (a pooled connection may be stale after a Redis restart), no
        # more: callers get a clear `unavailable` at once and the flusher has its own backoff.
        # Typed as Any: redis-py declares its replies as unions of str and bytes; with
        # decode_responses off (the default, used here) they are bytes.
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
        p = cfg.prefix
        self._p = p
        self._node_key = f"{p}:node:{self.node_id}"
        self._node_tasks = f"{p}:node:{self.node_id}:tasks"
        self._node_cancels = f"{p}:node:{self.node_id}:cancels"
        self._node_ctl = f"{p}:node:{self.node_id}:ctl"
        self._nodes = f"{p}:nodes"
        self._scripts = {
            name: self._redis.register_script(getattr(lua, name))
            for name in ("CREATE", "APPEND", "UPDATE", "END_LOST", "ADOPT", "CANCEL")
        }
        self._local: dict[Key, _Local] = {}
        self._watches: dict[Key, _Watch] = {}
        self._by_channel: dict[str, Key] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._ops: deque[_Op] = deque()
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self._subscribed: set[str] = set()
        self._pubsub_ready = asyncio.Event()
        self._closing = False
        self._outage_since: float | None = None
        self._aborted = False
        self._lease_ok = True
        self.last_error: str | None = None
        # Metrics (read by the server's /metrics).
        self.rtt = 0.0
        self.last_batch = 0
        self.nodes_alive = 1

    # ------------------------------------------------------------------ keys

    def _k(self, owner: str, kind: str, task_id: str) -> str:
        return f"{self._p}:{{{lua.escape_owner(owner)}}}:{kind}:{task_id}"

    def _owner_key(self, owner: str, kind: str) -> str:
        return f"{self._p}:{{{lua.escape_owner(owner)}}}:{kind}"

    def _task_keys(self, owner: str, task_id: str) -> list[str]:
        return [
            self._k(owner, "t", task_id),
            self._k(owner, "e", task_id),
            self._k(owner, "c", task_id),
            self._owner_key(owner, "active"),
        ]

    # ------------------------------------------------------------------ lifetime

    async def start(self, hooks: TaskHooks | None = None) -> None:
        """Connect, register this node and start the background work. Raises
        :class:`TaskError` (``unavailable``) when Redis cannot be reached."""
        if hooks is not None:
            self.hooks = hooks
        try:
            await self._redis.ping()
            for script in self._scripts.values():
                await self._redis.script_load(script.script)
            await self._renew_lease()
        except _UNREACHABLE as exc:
            raise TaskError(
                ErrorCode.UNAVAILABLE, f"Redis at {_safe_url(self.config.url)}: {exc}"
            ) from exc
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._flusher(), name="redis-flusher"),
            loop.create_task(self._subscriber(), name="redis-subscriber"),
            loop.create_task(self._lease_loop(), name="redis-lease"),
        ]
        await self._pubsub_ready.wait()

    async def close(self) -> None:
        """Write what is buffered (for up to ``lease`` seconds), leave, disconnect."""
        if self._closing:
            return
        self._closing = True
        if self._ops:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.lease):
                    await self.flushed()
        if self._ops:
            log.error("redis: %d buffered writes lost at shutdown", len(self._ops))
        for task in (*self._tasks, *self._background):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        with contextlib.suppress(RedisError, *_UNREACHABLE):
            async with asyncio.timeout(2):
                pipe = self._redis.pipeline(transaction=False)
                pipe.delete(self._node_key)
                pipe.zrem(self._nodes, self.node_id)
                await pipe.execute()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._redis.aclose()
        await self._pubsub_client.aclose()

    async def flushed(self) -> None:
        """Wait until every write queued so far is in Redis."""
        while self._ops:
            self._flushed.clear()
            await self._flushed.wait()

    def health(self) -> str | None:
        """``None`` when healthy, else why not (for ``/healthz``)."""
        if self._outage_since is not None:
            return (
                f"Redis unreachable for {time.monotonic() - self._outage_since:.1f} s "
                f"({self.last_error}); {len(self._ops)} writes buffered"
            )
        if not self._lease_ok:
            return f"Redis lease renewal failing ({self.last_error})"
        return None

    @property
    def buffered(self) -> int:
        """Writes not yet in Redis."""
        return len(self._ops)

    # ------------------------------------------------------------------ registry

    async def create(self, record: TaskRecord) -> TaskRecord | None:
        owner, task_id = record.owner, record.task_id
        keys = self._task_keys(owner, task_id)
        fields = _record_fields(record)
        fields += ["node", self.node_id, "epoch", "1", "first_seq", "1", "bytes", "0"]
        member = _member(owner, task_id)
        try:
            # Registered with the node first: if this process dies right after the create,
            # the sweeper still finds the task.
            await self._redis.sadd(self._node_tasks, member)
            result = await self._scripts["CREATE"](
                keys=[keys[0], self._owner_key(owner, "idx"), keys[3]],
                args=[task_id, record.created, self.max_active_per_owner, *fields],
            )
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        if result[0] == 1:
            self._local[(owner, task_id)] = _Local(1)
            return None
        with contextlib.suppress(RedisError, *_UNREACHABLE):
            await self._redis.srem(self._node_tasks, member)
        if result[0] == -1:
            raise TaskError(
                ErrorCode.TOO_MANY_TASKS,
                f"you already have {self.max_active_per_owner} active tasks (the limit, across "
                "all gateways); retry after one of them ends",
                task_id=task_id,
            )
        return _record_from(_pairs(result[1]))

    async def get(self, owner: str, task_id: str) -> TaskRecord | None:
        try:
            raw = await self._redis.hgetall(self._k(owner, "t", task_id))
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        return _record_from(raw) if raw else None

    async def list_tasks(self, owner: str) -> list[TaskRecord]:
        idx = self._owner_key(owner, "idx")
        try:
            ids = await self._redis.zrange(idx, 0, -1)
            pipe = self._redis.pipeline(transaction=False)
            for tid in ids:
                pipe.hgetall(self._k(owner, "t", tid.decode()))
            raws = await pipe.execute()
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        records, gone = [], []
        for tid, raw in zip(ids, raws, strict=True):
            if raw:
                records.append(_record_from(raw))
            else:
                gone.append(tid)
        if gone:  # expired: drop them from the index too
            with contextlib.suppress(RedisError, *_UNREACHABLE):
                await self._redis.zrem(idx, *gone)
        return records

    def update(self, record: TaskRecord) -> None:
        key = (record.owner, record.task_id)
        local = self._local.get(key)
        if local is None or local.fenced:
            return
        self._queue(_Op(_UPDATE, key, [local.epoch, *_record_fields(record, full=False)]))

    # ------------------------------------------------------------------ event log

    def append(self, record: TaskRecord, frame: EventFrame) -> None:
        key = (record.owner, record.task_id)
        local = self._local.get(key)
        if local is None or local.fenced:
            return
        terminal = type(frame.event) in TERMINAL_STATES
        fields = _record_fields(record, full=False)
        if terminal and record.usage is not None:
            fields += ["usage", _frame_encoder.encode(record.usage)]
        args = [
            local.epoch,
            frame.seq,
            _frame_encoder.encode(frame),
            self.config.max_events,
            self.config.max_bytes,
            1 if terminal else 0,
            record.task_id,
            *fields,
        ]
        self._queue(_Op(_APPEND, key, args, frame, terminal))

    async def read(self, owner: str, task_id: str, after_seq: int) -> LogSlice | None:
        watch = self._watches.get((owner, task_id))
        if watch is not None and watch.ready is not None and not watch.ready.done():
            try:
                async with asyncio.timeout(self._timeout):
                    await asyncio.shield(watch.ready)
            except TimeoutError as exc:
                raise _unavailable(exc) from exc
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hmget(self._k(owner, "t", task_id), "first_seq", "last_seq")
            pipe.xrange(self._k(owner, "e", task_id), min=f"{after_seq + 1}-0")
            (first, last), entries = await pipe.execute()
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        if last is None:
            return None
        frames = [_frame_decoder.decode(fields[b"f"]) for _, fields in entries]
        return LogSlice(int(first or 1), frames)

    def listen(self, owner: str, task_id: str, listener: Listener) -> Callable[[], None]:
        key = (owner, task_id)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(self._k(owner, "c", task_id))
            if key not in self._local:
                self._subscribe(key, watch)
        watch.listeners = (*watch.listeners, listener)

        def undo() -> None:
            watch.listeners = tuple(x for x in watch.listeners if x is not listener)
            if not watch.listeners and self._watches.get(key) is watch:
                del self._watches[key]
                self._unsubscribe(watch)

        return undo

    def _dispatch(self, key: Key, frame: EventFrame) -> None:
        watch = self._watches.get(key)
        if watch is None:
            return
        if watch.filling:
            watch.held.append(frame)
        elif frame.seq > watch.last_seq + 1 and watch.last_seq and watch.ready is not None:
            # A live frame after a hole (the subscriber reconnected): read the hole first.
            watch.held.append(frame)
            self._fill(key, watch)
        else:
            self._deliver(key, watch, frame)

    def _deliver(self, key: Key, watch: _Watch, frame: EventFrame) -> None:
        if frame.seq <= watch.last_seq:
            return  # delivered already (a hole read overlapping live frames)
        watch.last_seq = frame.seq
        for listener in watch.listeners:
            try:
                listener(frame)
            except Exception:  # one broken subscriber must not stop the others
                log.exception("event listener of task %s failed", key[1])

    def _fill(self, key: Key, watch: _Watch) -> None:
        """Read the log after the last delivered seq, then deliver what was held."""
        if watch.filling:
            return
        watch.filling = True
        task = asyncio.get_running_loop().create_task(self._read_hole(key, watch))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_hole(self, key: Key, watch: _Watch) -> None:
        backoff = 0.05
        stream = self._k(key[0], "e", key[1])
        entries: list[Any] = []
        while not self._closing and self._watches.get(key) is watch:
            try:
                entries = await self._redis.xrange(stream, min=f"{watch.last_seq + 1}-0")
                break
            except _UNREACHABLE:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        frames = [_frame_decoder.decode(fields[b"f"]) for _, fields in entries]
        held, watch.held = watch.held, []
        watch.filling = False
        # Frames the log no longer holds (retention) cannot be delivered: the listeners get a
        # jump, which a Subscription passes on; clients resubscribe and are told with a gap.
        for frame in sorted([*frames, *held], key=_seq):
            self._deliver(key, watch, frame)

    # ------------------------------------------------------------------ lifetime of a task

    def expire(self, owner: str, task_id: str, after: float) -> None:
        key = (owner, task_id)
        local = self._local.pop(key, None)
        if local is not None and not local.fenced:  # only the node running it decides
            self._queue(_Op(_PERSIST if math.isinf(after) else _EXPIRE, key, [after]))

    # ------------------------------------------------------------------ cancel across nodes

    async def request_cancel(self, owner: str, task_id: str, reason: str) -> str:
        """Cancel a task wherever it runs: ``accepted``, ``already_terminal`` or ``unknown``.
        The node running it is told at once (pub/sub) and on its next lease tick (a set)."""
        try:
            result = await self._scripts["CANCEL"](
                keys=[self._k(owner, "t", task_id)], args=[reason]
            )
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        verdict = result[0].decode()
        if verdict == "unknown":
            return "unknown"
        if verdict == "terminal":
            return "already_terminal"
        node = result[1].decode()
        if node:
            message = _frame_encoder.encode({"owner": owner, "task_id": task_id, "reason": reason})
            with contextlib.suppress(RedisError, *_UNREACHABLE):
                pipe = self._redis.pipeline(transaction=False)
                pipe.sadd(f"{self._p}:node:{node}:cancels", message)
                pipe.execute_command("SPUBLISH", f"{self._p}:node:{node}:ctl", message)
                await pipe.execute()
        return "accepted"

    def _on_control(self, payload: bytes) -> None:
        try:
            msg = _ctl_decoder.decode(payload)
            owner, task_id, reason = msg["owner"], msg["task_id"], msg["reason"]
        except (msgspec.DecodeError, KeyError):
            log.warning("redis: bad control message %r", payload[:200])
            return
        if (owner, task_id) in self._local and self.hooks is not None:
            self.hooks.cancel_local(owner, task_id, reason)

    # ------------------------------------------------------------------ the flusher

    def _queue(self, op: _Op) -> None:
        self._ops.append(op)
        if not self._wake.is_set():
            self._wake.set()

    async def _flusher(self) -> None:
        ops = self._ops
        backoff = 0.05
        while True:
            if not ops:
                self._flushed.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [ops[i] for i in range(min(len(ops), self.config.batch))]
            started = time.perf_counter()
            try:
                results = await self._execute(batch)
            except _UNREACHABLE as exc:
                self._note_outage(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redis: a batch of %d writes failed; dropping it", len(batch))
                results = [None] * len(batch)
            backoff = 0.05
            self.rtt = time.perf_counter() - started
            self.last_batch = len(batch)
            if self._outage_since is not None:
                log.warning(
                    "redis: reachable again after %.1f s; flushing %d buffered writes",
                    time.monotonic() - self._outage_since,
                    len(ops),
                )
                self._outage_since = None
                self._aborted = False
            for _ in batch:
                ops.popleft()
            for op, result in zip(batch, results, strict=True):
                self._applied(op, result)

    async def _execute(self, batch: list[_Op]) -> list[Any]:
        # EVALSHA straight into the pipeline (redis-py's pipelined Script objects would add a
        # SCRIPT EXISTS round trip to every batch); NOSCRIPT after a Redis restart reloads.
        pipe = self._redis.pipeline(transaction=False)
        append = self._scripts["APPEND"].sha
        update = self._scripts["UPDATE"].sha
        for op in batch:
            owner, task_id = op.key
            if op.kind == _APPEND:
                pipe.evalsha(append, 4, *self._task_keys(owner, task_id), *op.args)
                if op.terminal:
                    pipe.srem(self._node_tasks, _member(owner, task_id))
            elif op.kind == _UPDATE:
                pipe.evalsha(update, 1, self._k(owner, "t", task_id), *op.args)
            else:
                keys = (self._k(owner, "t", task_id), self._k(owner, "e", task_id))
                for k in keys:
                    if op.kind == _EXPIRE:
                        pipe.pexpire(k, max(1, int(op.args[0] * 1000)))
                    else:
                        pipe.persist(k)
        raw = await pipe.execute(raise_on_error=False)
        # One result per op: an append's SREM and an expiry's second key are extra.
        results: list[Any] = []
        it = iter(raw)
        for op in batch:
            results.append(next(it))
            if (op.kind == _APPEND and op.terminal) or op.kind in (_EXPIRE, _PERSIST):
                next(it)
        for result in results:
            if isinstance(result, _UNREACHABLE):
                raise result
            if isinstance(result, NoScriptError):
                for script in self._scripts.values():
                    await self._redis.script_load(script.script)
                raise RedisConnectionError("scripts reloaded (Redis restarted?); retrying")
        return results

    def _applied(self, op: _Op, result: Any) -> None:
        if isinstance(result, Exception):
            log.error("redis: write of task %s failed: %s", op.key[1], result)
            return
        if op.kind == _APPEND:
            if result == -1:
                self._fenced(op.key)
                return
            assert op.frame is not None
            self._dispatch(op.key, op.frame)
        elif op.kind == _UPDATE and result == -1:
            self._fenced(op.key)

    def _fenced(self, key: Key) -> None:
        local = self._local.get(key)
        if local is None or local.fenced:
            return
        local.fenced = True
        log.warning("redis: task %s was ended by another node; this node stops it", key[1])
        # Drop what is still queued for it, and let listeners here follow the log instead.
        self._ops = deque(op for op in self._ops if op.key != key)
        watch = self._watches.get(key)
        if watch is not None:  # the other node's terminal event is in the log already
            self._fill(key, watch)
        if self.hooks is not None:
            self.hooks.drop_local(*key)

    def _note_outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._outage_since is None:
            self._outage_since = now
            log.warning("redis: unreachable (%s); buffering writes", self.last_error)
        over = len(self._ops) > self.config.max_buffered or (
            now - self._outage_since > self.config.buffer_seconds
        )
        if over and not self._aborted and self.hooks is not None:
            self._aborted = True
            reason = (
                f"the task store (Redis) has been unreachable for "
                f"{now - self._outage_since:.0f} s ({len(self._ops)} events buffered)"
            )
            log.error("redis: %s; stopping this node's running tasks", reason)
            for (owner, task_id), local in list(self._local.items()):
                if not local.fenced:
                    self.hooks.abort_local(owner, task_id, "store_unavailable", reason)

    # ------------------------------------------------------------------ subscriber

    def _subscribe(self, key: Key, watch: _Watch) -> None:
        if watch.ready is None:
            watch.ready = asyncio.get_running_loop().create_future()
        self._by_channel[watch.channel] = key
        if self._pubsub is not None and watch.channel not in self._subscribed:
            self._subscribed.add(watch.channel)
            asyncio.get_running_loop().create_task(self._send_subscribe([watch.channel]))

    async def _send_subscribe(self, channels: list[str]) -> None:
        with contextlib.suppress(RedisError, *_UNREACHABLE):
            await self._pubsub.execute_command("SSUBSCRIBE", *channels)

    def _unsubscribe(self, watch: _Watch) -> None:
        self._by_channel.pop(watch.channel, None)
        if watch.ready is not None and not watch.ready.done():
            watch.ready.cancel()
        if watch.channel in self._subscribed:
            self._subscribed.discard(watch.channel)
            if self._pubsub is not None:
                asyncio.get_running_loop().create_task(self._send_unsubscribe(watch.channel))

    async def _send_unsubscribe(self, channel: str) -> None:
        with contextlib.suppress(RedisError, *_UNREACHABLE):
            await self._pubsub.execute_command("SUNSUBSCRIBE", channel)

    async def _subscriber(self) -> None:
        backoff = 0.05
        reconnected = False
        while True:
            pubsub = self._pubsub_client.pubsub()
            try:
                channels = [self._node_ctl, *self._by_channel]
                self._subscribed = set(channels)
                await pubsub.execute_command("SSUBSCRIBE", *channels)
                self._pubsub = pubsub
                self._pubsub_ready.set()
                backoff = 0.05
                while True:
                    msg = await pubsub.parse_response(block=True)
                    self._on_pubsub(msg, reconnected)
            except _UNREACHABLE as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("redis: subscriber connection lost (%s); reconnecting", exc)
            finally:
                self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            self._pubsub_ready.set()  # start() must not wait forever on a dead Redis
            reconnected = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_pubsub(self, msg: Any, reconnected: bool) -> None:
        if not isinstance(msg, list) or len(msg) < 3:
            return
        kind = msg[0]
        channel = msg[1].decode() if isinstance(msg[1], bytes) else str(msg[1])
        if kind == b"smessage":
            if channel == self._node_ctl:
                self._on_control(msg[2])
                return
            key = self._by_channel.get(channel)
            if key is not None:
                self._dispatch(key, _frame_decoder.decode(msg[2]))
        elif kind == b"ssubscribe":
            key = self._by_channel.get(channel)
            watch = self._watches.get(key) if key is not None else None
            if watch is None:
                return
            if watch.ready is not None and not watch.ready.done():
                watch.ready.set_result(None)
            elif reconnected:
                # Subscribed again after a lost connection: read what was published meanwhile.
                assert key is not None
                self._fill(key, watch)

    # ------------------------------------------------------------------ lease and sweep

    async def _renew_lease(self) -> None:
        ms = max(1, int(self.config.lease * 1000))
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._node_key, self.node_id, px=ms, xx=True)
        pipe.zadd(self._nodes, {self.node_id: time.time()})
        renewed, _ = await pipe.execute()
        if not renewed:
            known = bool(await self._redis.zscore(self._nodes, self.node_id))
            if known and self._tasks:
                log.error("redis: this node's lease had expired; other nodes took its tasks")
            await self._redis.set(self._node_key, self.node_id, px=ms)

    async def _lease_loop(self) -> None:
        interval = self.config.lease / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._renew_lease()
                await self._take_cancels()
                await self._sweep()
                self._lease_ok = True
                if self._outage_since is not None and not self._ops:
                    log.warning("redis: reachable again")
                    self._outage_since = None
                    self._aborted = False
            except _UNREACHABLE as exc:
                self._lease_ok = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._note_outage(exc)
            except RedisError:
                log.exception("redis: lease tick failed")

    async def _take_cancels(self) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.smembers(self._node_cancels)
        pipe.delete(self._node_cancels)
        messages, _ = await pipe.execute()
        for message in messages:
            self._on_control(message)

    async def _sweep(self) -> None:
        nodes = [n.decode() for n in await self._redis.zrange(self._nodes, 0, -1)]
        pipe = self._redis.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(f"{self._p}:node:{node}")
        alive = await pipe.execute()
        self.nodes_alive = sum(1 for a in alive if a)
        for node, is_alive in zip(nodes, alive, strict=True):
            if not is_alive and node != self.node_id:
                await self.sweep_node(node)

    async def sweep_node(self, node: str) -> int:
        """End (or adopt, when queued) every unfinished task of a lost ``node``; returns how
        many this call handled. Safe to run on several nodes at once."""
        tasks_key = f"{self._p}:node:{node}:tasks"
        members = await self._redis.smembers(tasks_key)
        handled = 0
        for member in members:
            owner, _, task_id = member.decode().partition("\0")
            if await self._end_lost(node, owner, task_id):
                handled += 1
            await self._redis.srem(tasks_key, member)
        if not await self._redis.exists(f"{self._p}:node:{node}"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(self._nodes, node)
            pipe.delete(tasks_key, f"{self._p}:node:{node}:cancels")
            await pipe.execute()
        if handled:
            log.warning("redis: node %s was lost; %d of its tasks ended or adopted", node, handled)
        return handled

    async def _end_lost(self, node: str, owner: str, task_id: str) -> bool:
        keys = self._task_keys(owner, task_id)
        for _ in range(100):  # compare-and-set: retried while the lost node still writes
            raw = await self._redis.hgetall(keys[0])
            if not raw or raw.get(b"node", b"").decode() != node:
                return False
            state = raw.get(b"state", b"").decode()
            epoch = raw[b"epoch"].decode()
            if state in _FINAL:
                return False
            if state == "pending" and self.hooks is not None and not raw.get(b"cancel"):
                new_epoch = await self._scripts["ADOPT"](
                    keys=[keys[0]], args=[node, epoch, self.node_id]
                )
                if new_epoch:
                    await self._redis.sadd(self._node_tasks, _member(owner, task_id))
                    record = _record_from(await self._redis.hgetall(keys[0]))
                    self._local[(owner, task_id)] = _Local(int(new_epoch))
                    watch = self._watches.get((owner, task_id))
                    if watch is not None:
                        self._unsubscribe_local(watch)
                    self.hooks.adopt(record)
                    return True
                continue
            last = raw.get(b"last_seq", b"0").decode()
            frame = EventFrame(
                task_id=task_id,
                seq=int(last) + 1,
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
                    epoch,
                    last,
                    _frame_encoder.encode(frame),
                    task_id,
                    time.time(),
                    self.config.max_events,
                ],
            )
            if done:
                return True
        return False

    def _unsubscribe_local(self, watch: _Watch) -> None:
        # This node now writes the task: its listeners are fed by the flusher.
        if watch.ready is not None and not watch.ready.done():
            watch.ready.set_result(None)


# ---------------------------------------------------------------------- records


def _seq(frame: EventFrame) -> int:
    return frame.seq


def _member(owner: str, task_id: str) -> str:
    return f"{owner}\0{task_id}"


def _record_fields(record: TaskRecord, *, full: bool = True) -> list[Any]:
    fields: list[Any] = [
        "state",
        record.state,
        "updated",
        repr(record.updated),
        "progress",
        record.progress or "",
        "turn",
        record.turn,
    ]
    if full:
        fields += [
            "owner",
            record.owner,
            "task_id",
            record.task_id,
            "input",
            record.input,
            "options",
            _frame_encoder.encode(record.options),
            "created",
            repr(record.created),
            "last_seq",
            record.last_seq,
        ]
    return fields


def _pairs(flat: Iterable[Any]) -> dict[bytes, bytes]:
    items = list(flat)
    return dict(zip(items[::2], items[1::2], strict=True))


def _record_from(raw: dict[bytes, bytes]) -> TaskRecord:
    def text(name: str, default: str = "") -> str:
        value = raw.get(name.encode())
        return value.decode() if value is not None else default

    usage = raw.get(b"usage")
    state: TaskState = text("state", "pending")  # type: ignore[assignment]
    return TaskRecord(
        owner=text("owner"),
        task_id=text("task_id"),
        input=text("input"),
        options=_options_decoder.decode(raw.get(b"options") or b"{}"),
        created=float(text("created", "0")),
        state=state,
        updated=float(text("updated", "0")),
        last_seq=int(text("last_seq", "0")),
        progress=text("progress") or None,
        turn=int(text("turn", "0")),
        usage=_usage_decoder.decode(usage) if usage else None,
    )


def _unavailable(exc: BaseException) -> TaskError:
    return TaskError(
        ErrorCode.UNAVAILABLE,
        f"the task store (Redis) is unreachable: {exc}; retry with backoff",
    )


def _safe_url(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"
