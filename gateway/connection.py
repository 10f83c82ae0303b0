"""The multiplexer: one WebSocket's requests, subscriptions and outbox.

A :class:`Connection` sits between the socket and the :class:`~gateway.tasks.TaskManager`:
it answers requests (:meth:`Connection.handle`, one incoming message at a time) and follows
tasks, queueing their events in its :class:`~gateway.outbox.Outbox`. It does no I/O: the
endpoint's reader feeds :meth:`Connection.handle`, and its writer waits with
:meth:`Connection.wait_for_output`, takes payloads from :attr:`Connection.outbox` and counts
what it sent in :attr:`Connection.stats`. The first time anything is queued the connection
calls :attr:`Connection.start_writer`, once (an idle connection needs no writer); when a close
is requested it sets :attr:`Connection.close_code` and calls :attr:`Connection.on_close`, and
the endpoint stops its writer and closes the socket with that code.

Task events are pushed in synchronously by the subscriptions (from the task producing them),
so a slow socket never slows a task, and a slow task never delays another task's events.
Batching, merging and the slow-consumer verdict are the outbox's (see :mod:`gateway.outbox`).

Every request that carries an ``id`` gets exactly one reply: ``accepted``, ``cancel_ack``,
``status``, ``subscribed``, ``unsubscribed``, ``pong``, ``threads``, ``thread``, ``input_ack``,
``message_ack`` or ``error``. A request that subscribes
holds the task's events until its reply is queued, so the reply comes first.

Cancellation: :meth:`handle` may be cancelled with the reader; :meth:`close` unsubscribes
everything (tasks keep running under their detach policy) and is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import gateway
from gateway.outbox import Outbox, OutboxLimits, SlowConsumer
from gateway.tasks import Deliver, Delivery, Subscription, TaskError, TaskManager
from protocol import (
    Accepted,
    Cancel,
    CancelAck,
    ErrorCode,
    ErrorFrame,
    EventFrame,
    Gap,
    Hello,
    Input,
    InputAck,
    Limits,
    Message,
    MessageAck,
    Ping,
    Pong,
    ProtocolError,
    ServerFrame,
    ServerSession,
    Start,
    StatusReply,
    StatusRequest,
    Subscribe,
    Subscribed,
    ThreadReply,
    ThreadRequest,
    ThreadsReply,
    ThreadsRequest,
    Unsubscribe,
    Unsubscribed,
)
from protocol.events import TERMINAL_STATES

__all__ = ["Connection", "ConnectionSettings", "ConnectionStats"]

log = logging.getLogger(__name__)

_FINAL_STATES = frozenset(TERMINAL_STATES.values())


@dataclass(slots=True)
class ConnectionSettings:
    """Per-connection limits and flow-control knobs."""

    limits: Limits = field(default_factory=Limits)
    """What ``hello`` announces and :meth:`Connection.handle` enforces."""
    max_outbox: int = 10_000
    """Frames waiting for the socket before the client is closed as a slow consumer."""
    max_outbox_bytes: int = 16 << 20
    """Approximate bytes of queued text before the client is closed as a slow consumer."""
    max_replay: int = 100_000
    """Replayed events waiting for the socket (``subscribe`` of many long tasks at once)
    before the client is closed as a slow consumer."""
    merge_after: int = 32
    """Outbox depth from which consecutive deltas of one task are merged."""
    batch_after: int = 8
    """Outbox depth from which events go out in ``batch`` frames even when the client keeps
    up (a burst); below it, and when the client does not lag, each event goes alone."""
    max_batch: int = 256
    """Most events in one ``batch`` frame."""
    max_violations: int = 3
    """Oversized frames tolerated before closing with 4002."""
    heartbeat_interval: float = 20.0
    """Announced in ``hello``: seconds between the server's WebSocket pings."""
    server_version: str = gateway.__version__

    def outbox_limits(self) -> OutboxLimits:
        return OutboxLimits(
            max_outbox=self.max_outbox,
            max_outbox_bytes=self.max_outbox_bytes,
            max_replay=self.max_replay,
            merge_after=self.merge_after,
            batch_after=self.batch_after,
            max_batch=self.max_batch,
        )


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one connection, bumped by the connection (received, errors) and by the
    endpoint's writer (sent); the server's metrics read them (``gateway.server.metrics``)."""

    frames_sent: int = 0
    bytes_sent: int = 0
    events_sent: int = 0
    batches_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    errors_sent: Counter[str] = field(default_factory=Counter)
    """``error`` frames sent, by code."""


class _Follow:
    """This connection's subscription to one task. While a request that subscribes is in
    progress, deliveries are held and released after the reply (so the reply comes before
    the task's events) and counted as replay; a superseded follow delivers nothing."""

    __slots__ = ("active", "held", "sub", "task_id")

    def __init__(self, task_id: str | None) -> None:
        self.task_id = task_id
        self.sub: Subscription | None = None
        self.held: list[Delivery] | None = []
        self.active = True

    def stop(self) -> None:
        self.active = False
        if self.sub is not None:
            self.sub.close()


class Connection:
    """One client connection (see the module docstring)."""

    __slots__ = (
        "_bucket",
        "_close_event",
        "_closed",
        "_flush_waiters",
        "_follows",
        "_outbox",
        "_started",
        "_waiter",
        "close_code",
        "close_reason",
        "manager",
        "on_close",
        "principal",
        "session",
        "session_id",
        "settings",
        "start_writer",
        "stats",
    )

    def __init__(
        self,
        manager: TaskManager,
        session: ServerSession,
        *,
        principal: str,
        settings: ConnectionSettings | None = None,
        session_id: str | None = None,
    ) -> None:
        self.manager = manager
        self.session = session
        self.principal = principal
        self.settings = settings or ConnectionSettings()
        self.session_id = session_id or uuid.uuid4().hex[:16]
        self.stats = ConnectionStats()
        self._outbox: Outbox | None = None  # made with the first output (see `outbox`)
        self.start_writer: Callable[[], None] | None = None
        """Called (then cleared) the first time output is queued or a close requested: the
        endpoint starts its writer there, so an idle connection holds no writer task."""
        self.on_close: Callable[[], None] | None = None
        """Called (then cleared) when a close is requested: the endpoint stops its writer and
        closes the socket with :attr:`close_code`."""
        self.close_code: int | None = None
        """Set when the connection must be closed; the endpoint closes with it."""
        self.close_reason = ""
        # Created on demand, so that an idle connection holds none of them.
        self._waiter: asyncio.Future[None] | None = None  # the writer, parked
        self._close_event: asyncio.Event | None = None
        self._follows: dict[str, _Follow] = {}
        self._started: dict[str, None] = {}  # tasks started here, for the per-connection limit
        self._bucket: _TokenBucket | None = None
        self._closed = False
        """No more frames are queued: closed, or a close was requested."""
        self._flush_waiters: list[asyncio.Future[None]] | None = None

    @property
    def outbox(self) -> Outbox:
        """What waits for the socket; the endpoint's writer takes from it. Made on first use,
        so that an idle connection holds none."""
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = Outbox(self.session.send, self.settings.outbox_limits())
        return outbox

    # ------------------------------------------------------------------ handshake

    def hello(self) -> str | bytes:
        """The ``hello`` frame; send it first."""
        s = self.settings
        return self.session.hello(
            Hello(
                server=s.server_version,
                session_id=self.session_id,
                encoding="msgpack" if self.session.codec.binary else "json",
                principal=self.principal,
                limits=s.limits,
                heartbeat_interval=s.heartbeat_interval,
            )
        )

    # ------------------------------------------------------------------ incoming

    async def handle(self, data: str | bytes) -> None:
        """Handle one incoming WebSocket message. Never raises for bad input."""
        if self._closed:
            return  # closing: a reply could not be delivered, so do not act on it
        stats = self.stats
        stats.frames_received += 1
        stats.bytes_received += len(data)
        frame = self.session.receive(data)
        if isinstance(frame, ProtocolError):
            self._reply_error(
                frame.code, frame.message, frame.request_id, frame.task_id, frame.field
            )
            if self.session.close_code is not None:
                self.request_close(self.session.close_code, "repeated protocol violations")
            return
        try:
            match frame:
                case Start():
                    await self._start(frame)
                case Cancel(id=rid, task_id=task_id):
                    result = await self.manager.cancel(self.principal, task_id)
                    self._reply(CancelAck(id=rid, task_id=task_id, result=result))
                case StatusRequest(id=rid, task_id=None):
                    self._reply(
                        StatusReply(id=rid, tasks=await self.manager.list_tasks(self.principal))
                    )
                case StatusRequest(id=rid, task_id=str(task_id)):
                    status = await self.manager.status(self.principal, task_id)
                    self._reply(StatusReply(id=rid, tasks=[status]))
                case Subscribe():
                    await self._subscribe(frame)
                case Unsubscribe(id=rid, task_id=task_id):
                    self._unsubscribe(task_id)
                    self._reply(Unsubscribed(id=rid, task_id=task_id))
                case Ping(id=rid, payload=payload):
                    self._reply(Pong(id=rid, payload=payload, ts=time.time()))
                case ThreadsRequest(id=rid, limit=limit):
                    threads = await self.manager.threads(self.principal, limit)
                    self._reply(ThreadsReply(id=rid, threads=threads))
                case ThreadRequest(id=rid, thread_id=thread_id):
                    tasks = await self.manager.thread(self.principal, thread_id)
                    self._reply(ThreadReply(id=rid, thread_id=thread_id, tasks=tasks))
                case Input():
                    await self._input(frame)
                case Message():
                    await self._message(frame)
        except TaskError as exc:
            self._reply_error(exc.code, exc.message, frame.id, exc.task_id, None)
        except Exception:
            log.exception("connection %s: request %r failed", self.session_id, frame)
            self._reply_error(
                ErrorCode.INTERNAL,
                "internal error; the request may be retried",
                frame.id,
                None,
                None,
            )

    async def _start(self, frame: Start) -> None:
        limits = self.settings.limits
        if not frame.input.strip():
            self._reply_error(
                ErrorCode.INVALID_FIELD,
                "`input` is empty; say what the task is",
                frame.id,
                frame.task_id,
                "$.input",
            )
            return
        if len(frame.input) > limits.max_input_chars:
            self._reply_error(
                ErrorCode.INPUT_TOO_LONG,
                f"input of {len(frame.input)} characters exceeds the limit of "
                f"{limits.max_input_chars}",
                frame.id,
                frame.task_id,
                "$.input",
            )
            return
        bucket = self._bucket
        if bucket is None:
            rate = limits.max_starts_per_second
            bucket = self._bucket = _TokenBucket(rate, max(1.0, rate))
        if not bucket.take():
            self._reply_error(
                ErrorCode.RATE_LIMITED,
                f"more than {limits.max_starts_per_second:g} starts per second; slow down",
                frame.id,
                frame.task_id,
                None,
            )
            return
        await self._forget_finished()
        if len(self._started) >= limits.max_tasks_per_connection and (
            frame.task_id is None or frame.task_id not in self._started
        ):
            self._reply_error(
                ErrorCode.TOO_MANY_TASKS,
                f"this connection already runs {limits.max_tasks_per_connection} tasks (the "
                "limit); wait for one to end or open another connection",
                frame.id,
                frame.task_id,
                None,
            )
            return
        follow: _Follow | None = None
        deliver: Deliver | None = None
        # A retried start on a connection that already follows the task does not subscribe again.
        if frame.subscribe and (frame.task_id is None or frame.task_id not in self._follows):
            follow, deliver = self._new_follow(frame.task_id)
        result = await self.manager.start(
            self.principal,
            frame.input,
            task_id=frame.task_id,
            options=frame.options,
            deliver=deliver,
            thread_id=frame.thread_id,
            if_busy=frame.if_busy,
        )
        self._started[result.task_id] = None
        self._reply(
            Accepted(
                id=frame.id,
                task_id=result.task_id,
                state=result.state,
                existing=result.existing,
                thread_id=result.thread_id,
                after_task_id=result.after_task_id,
            )
        )
        if follow is not None:
            follow.task_id = result.task_id
            follow.sub = result.subscription
            self._release(follow)  # the task's events (a retry's replay) after `accepted`

    async def _input(self, frame: Input) -> None:
        limit = self.settings.limits.max_input_chars
        if frame.text is not None and len(frame.text) > limit:
            self._reply_error(
                ErrorCode.INPUT_TOO_LONG,
                f"text of {len(frame.text)} characters exceeds the limit of {limit}",
                frame.id,
                frame.task_id,
                "$.text",
            )
            return
        resent = await self.manager.answer(self.principal, frame)
        self._reply(
            InputAck(id=frame.id, task_id=frame.task_id, request_id=frame.request_id, resent=resent)
        )

    async def _message(self, frame: Message) -> None:
        limit = self.settings.limits.max_input_chars
        if len(frame.text) > limit:
            self._reply_error(
                ErrorCode.INPUT_TOO_LONG,
                f"text of {len(frame.text)} characters exceeds the limit of {limit}",
                frame.id,
                frame.task_id,
                "$.text",
            )
            return
        if not frame.text.strip():
            self._reply_error(
                ErrorCode.INVALID_FIELD,
                "`text` is empty; say what the agent should know",
                frame.id,
                frame.task_id,
                "$.text",
            )
            return
        message_id = await self.manager.message(self.principal, frame.task_id, frame.text)
        self._reply(MessageAck(id=frame.id, task_id=frame.task_id, message_id=message_id))

    async def _subscribe(self, frame: Subscribe) -> None:
        task_id = frame.task_id
        follow, deliver = self._new_follow(task_id)
        try:
            follow.sub = await self.manager.subscribe(
                self.principal,
                task_id,
                after_seq=frame.after_seq,
                deliver=deliver,
                request_id=frame.id,
            )
            status = await self.manager.status(self.principal, task_id)
        except BaseException:
            follow.stop()
            raise
        if frame.after_seq > status.last_seq and status.state not in _FINAL_STATES:
            # Events the task has not produced yet cannot have been seen: following from
            # there would skip the task's end without a word.
            follow.stop()
            self._reply_error(
                ErrorCode.INVALID_FIELD,
                f"after_seq {frame.after_seq} is past the task's latest seq {status.last_seq}",
                frame.id,
                task_id,
                "$.after_seq",
            )
            return
        # Only now drop the previous subscription, so the task never looks detached in
        # between (on_detach=cancel would cancel it).
        self._unsubscribe(task_id)
        self._reply(
            Subscribed(id=frame.id, task_id=task_id, state=status.state, last_seq=status.last_seq)
        )
        self._release(follow)

    async def _forget_finished(self) -> None:
        """Drop the tasks that ended from the per-connection count (only when at the limit)."""
        if len(self._started) < self.settings.limits.max_tasks_per_connection:
            return
        for task_id in list(self._started):
            try:
                status = await self.manager.status(self.principal, task_id)
            except TaskError:
                status = None
            if status is None or status.state in _FINAL_STATES:
                del self._started[task_id]

    def _new_follow(self, task_id: str | None) -> tuple[_Follow, Deliver]:
        follow = _Follow(task_id)
        outbox = self.outbox
        deliver_now = self._deliver

        def deliver(item: Delivery) -> None:
            # The hot path of every live event: the common case (an event of a followed task,
            # the connection open) goes straight to the outbox.
            if not follow.active:
                return
            if follow.held is not None:
                follow.held.append(item)
            elif type(item) is EventFrame and not self._closed:
                if type(item.event) in TERMINAL_STATES:
                    self._follows.pop(item.task_id, None)  # the subscription closes itself
                verdict = outbox.add_event(item)
                if verdict is not None:
                    self._overflow(verdict)
                else:
                    self._wake()  # (a no-op when the writer is awake already)
            else:
                deliver_now(item, False)

        return follow, deliver

    def _release(self, follow: _Follow) -> None:
        """Queue what a new subscription delivered during its request, then go live."""
        held, follow.held = follow.held, None
        sub = follow.sub
        task_id = follow.task_id
        if sub is None or task_id is None:
            return
        if not sub.closed:  # (closed: the replay already ended with the terminal event)
            self._follows[task_id] = follow
        for item in held or ():
            self._deliver(item, True)

    def _unsubscribe(self, task_id: str) -> None:
        """Stop following a task and drop its events still queued for this socket."""
        follow = self._follows.pop(task_id, None)
        if follow is not None:
            follow.stop()
        if self._outbox is not None:
            self._outbox.drop_task(task_id)

    # ------------------------------------------------------------------ outgoing

    def _deliver(self, item: Delivery, replay: bool) -> None:
        """Queue an event (or a gap) of a followed task for this socket. Never blocks."""
        if self._closed:
            return
        if isinstance(item, Gap):
            verdict = self.outbox.add_reply(item)
        else:
            if type(item.event) in TERMINAL_STATES:
                self._follows.pop(item.task_id, None)  # the subscription closes itself
            verdict = self.outbox.add_event(item, replay)
        if verdict is not None:
            self._overflow(verdict)
        else:
            self._wake()

    def send_frame(self, frame: ServerFrame) -> None:
        """Queue a server frame (not an event) for this client."""
        self._reply(frame)

    def _reply(self, frame: ServerFrame) -> None:
        if self._closed:
            return
        verdict = self.outbox.add_reply(frame)
        if verdict is not None:
            self._overflow(verdict)
        else:
            self._wake()

    def _reply_error(
        self,
        code: ErrorCode,
        message: str,
        request_id: str | int | None,
        task_id: str | None,
        field_path: str | None,
    ) -> None:
        self.stats.errors_sent[code.value] += 1
        self._reply(
            ErrorFrame(
                code=code.value, message=message, id=request_id, task_id=task_id, field=field_path
            )
        )

    def _overflow(self, verdict: SlowConsumer) -> None:
        self.request_close(verdict.code, verdict.reason)

    # ------------------------------------------------------------------ the writer's side

    def _wake(self) -> None:
        """Something was queued (or a close requested): wake the writer, or have it started."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
            return
        start = self.start_writer
        if start is not None:
            self.start_writer = None
            start()

    async def wait_for_output(self) -> None:
        """Return once something waits in the outbox or a close was requested (at once if so
        already). For the one writer of the connection."""
        if self._outbox or self.close_code is not None:
            return
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    @property
    def close_requested(self) -> asyncio.Event:
        """Set once a close was requested (``close_code`` is set)."""
        event = self._close_event
        if event is None:
            event = self._close_event = asyncio.Event()
            if self.close_code is not None:
                event.set()
        return event

    async def flushed(self) -> None:
        """Wait until everything queued so far was handed to the socket (or it closed)."""
        if self._closed:
            return
        outbox = self._outbox
        if outbox is None or (not outbox and not outbox.writing):
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._flush_waiters is None:
            self._flush_waiters = []
        self._flush_waiters.append(waiter)
        await waiter

    def sent_all(self) -> None:
        """Called by the writer when the outbox is empty: wakes :meth:`flushed`."""
        waiters, self._flush_waiters = self._flush_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def request_close(self, code: int, reason: str) -> None:
        """Ask the endpoint to close the socket with ``code`` (first request wins)."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self._closed = True
        self.start_writer = None
        if self._outbox is not None:
            self._outbox.clear()
        self._unsubscribe_all()
        self._wake()
        self.sent_all()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()
        if self._close_event is not None:
            self._close_event.set()

    # ------------------------------------------------------------------ lifetime

    def _unsubscribe_all(self) -> None:
        follows, self._follows = self._follows, {}
        for follow in follows.values():
            follow.stop()

    def close(self) -> None:
        """Unsubscribe from every task (they keep running under their detach policy)."""
        self._closed = True
        self.start_writer = self.on_close = None
        self._unsubscribe_all()
        if self._outbox is not None:
            self._outbox.clear()
        self._wake()
        self.sent_all()


class _TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
