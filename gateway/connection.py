"""The multiplexer: one WebSocket's protocol session, subscriptions and outbox.

A :class:`Connection` sits between the socket and the :class:`~gateway.tasks.TaskManager`.
The endpoint feeds it every incoming message (:meth:`Connection.handle`) from one reader task
and drains it from one writer task (:meth:`Connection.run_writer`); all decisions are here,
so it is tested with a fake socket.

Flow control. Each connection has one bounded outbox of frames to send, in order. Task events
are pushed into it synchronously by the subscriptions (from the task producing them), so a
slow socket never slows a task, and a slow task never delays another task's events.

- When more than one event is waiting, the writer sends them as one ``batch`` frame (up to
  ``max_batch``); when it keeps up, one event per frame — low latency when idle, high
  throughput when busy.
- When the outbox holds ``merge_after`` frames or more (the client lags), an ``llm_response``
  is merged into the previous still-queued delta of the same task when no other event of that
  task came between them and agent, channel, phase and turn match. The merged frame carries
  the later ``seq``; lifecycle and tool events are never merged or dropped.
- Past ``max_outbox`` frames (or ``max_outbox_bytes`` of queued text) the client is a slow
  consumer: the connection closes with close code 4000; the client resumes with ``subscribe``
  and its last seen ``seq``, losing nothing.

Cancellation: :meth:`run_writer` may be cancelled at any time; :meth:`close` unsubscribes
everything (tasks keep running under their detach policy) and is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gateway
from gateway.tasks import Subscription, TaskError, TaskManager
from protocol import (
    Accepted,
    Batch,
    Cancel,
    CancelAck,
    CloseCode,
    ErrorCode,
    ErrorFrame,
    EventFrame,
    Gap,
    Hello,
    Limits,
    LlmResponse,
    Ping,
    Pong,
    ProtocolError,
    ServerFrame,
    ServerSession,
    Start,
    StatusReply,
    StatusRequest,
    Subscribe,
    Unsubscribe,
)
from protocol.events import TaskCancelled, TaskCompleted, TaskFailed

if TYPE_CHECKING:
    from gateway.server.metrics import Metrics

__all__ = ["Connection", "ConnectionSettings", "ConnectionStats"]

log = logging.getLogger(__name__)

Send = Callable[[str | bytes], Awaitable[None]]

_TERMINAL = (TaskCompleted, TaskFailed, TaskCancelled)


@dataclass(slots=True)
class ConnectionSettings:
    """Per-connection limits and flow-control knobs."""

    limits: Limits = field(default_factory=Limits)
    """What ``hello`` announces and :meth:`Connection.handle` enforces."""
    max_outbox: int = 10_000
    """Frames waiting for the socket before the client is closed as a slow consumer."""
    max_outbox_bytes: int = 16 << 20
    """Approximate bytes of queued text before the client is closed as a slow consumer."""
    merge_after: int = 32
    """Outbox depth from which consecutive deltas of one task are merged."""
    max_batch: int = 256
    """Most events in one ``batch`` frame."""
    max_violations: int = 3
    """Oversized frames tolerated before closing with 4002."""
    heartbeat_interval: float = 20.0
    """Announced in ``hello``: seconds between the server's WebSocket pings."""
    server_version: str = gateway.__version__


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one connection (the metrics module sums them)."""

    frames_sent: int = 0
    bytes_sent: int = 0
    events_sent: int = 0
    batches_sent: int = 0
    events_merged: int = 0
    frames_received: int = 0
    errors_sent: int = 0


class _Slot:
    """One queued event; mutable so a later delta can be merged into it."""

    __slots__ = ("frame", "replay", "sent", "size")

    def __init__(self, frame: EventFrame, size: int, replay: bool) -> None:
        self.frame = frame
        self.sent = False
        self.size = size
        self.replay = replay


_EVENT_OVERHEAD = 96  # rough bytes of an event frame besides its text


class Connection:
    """One client connection (see the module docstring)."""

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
        self.close_code: int | None = None
        """Set when the connection must be closed; the endpoint closes with it."""
        self.close_reason = ""
        self.close_requested = asyncio.Event()
        """Set with ``close_code``: the endpoint stops its reader and writer (the writer may be
        blocked on a socket that does not drain) and closes the socket."""
        self._outbox: deque[_Slot | str | bytes] = deque()
        self._outbox_bytes = 0
        # Replayed events are already held by the task's log (bounded by its retention), so
        # they do not count against the slow-consumer bounds; only live lag does.
        self._replaying = False
        self._replay_items = 0
        self._replay_bytes = 0
        self._open_delta: dict[str, _Slot] = {}
        self._wakeup = asyncio.Event()
        self._subscriptions: dict[str, Subscription] = {}
        self._started: dict[str, None] = {}  # tasks started here, for the per-connection limit
        limits = self.settings.limits
        self._bucket = _TokenBucket(
            limits.max_starts_per_second, max(1.0, limits.max_starts_per_second)
        )
        self._closed = False
        self._sending = False
        self._flush_waiters: list[asyncio.Future[None]] = []

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
        if self.close_code is not None or self._closed:
            return  # closing: a reply could not be delivered, so do not act on it
        self.stats.frames_received += 1
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
                case Subscribe(id=rid, task_id=task_id, after_seq=after_seq):
                    self._unsubscribe(task_id)
                    self._replaying = True
                    try:
                        sub = await self.manager.subscribe(
                            self.principal,
                            task_id,
                            after_seq=after_seq,
                            deliver=self._deliver,
                            request_id=rid,
                        )
                    finally:
                        self._replaying = False
                    self._keep(task_id, sub)
                case Unsubscribe(task_id=task_id):
                    self._unsubscribe(task_id)
                case Ping(id=rid, payload=payload):
                    self._reply(Pong(id=rid, payload=payload, ts=time.time()))
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
        if not self._bucket.take():
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
        deliver = self._deliver if frame.subscribe else None
        if frame.task_id is not None and frame.task_id in self._subscriptions and deliver:
            deliver = None  # a retried start on a connection already following it
        self._replaying = True  # a retried start replays the existing task's events
        try:
            result = await self.manager.start(
                self.principal,
                frame.input,
                task_id=frame.task_id,
                options=frame.options,
                deliver=deliver,
            )
        finally:
            self._replaying = False
        self._started[result.task_id] = None
        self._reply(
            Accepted(
                id=frame.id,
                task_id=result.task_id,
                state=result.state,
                existing=result.existing,
            )
        )
        if result.subscription is not None:
            self._keep(result.task_id, result.subscription)
        # Accepted is queued after the events the subscription may already have delivered;
        # move it in front so the client learns the task id before its events.
        self._hoist_last_control()

    async def _forget_finished(self) -> None:
        """Drop the tasks that ended from the per-connection count (only when at the limit)."""
        if len(self._started) < self.settings.limits.max_tasks_per_connection:
            return
        for task_id in list(self._started):
            try:
                status = await self.manager.status(self.principal, task_id)
            except TaskError:
                status = None
            if status is None or status.state in ("completed", "failed", "cancelled"):
                del self._started[task_id]

    def _keep(self, task_id: str, sub: Subscription) -> None:
        if sub.closed:  # replay ended with the terminal event already
            return
        self._subscriptions[task_id] = sub

    def _unsubscribe(self, task_id: str) -> None:
        sub = self._subscriptions.pop(task_id, None)
        if sub is not None:
            sub.close()

    # ------------------------------------------------------------------ outgoing

    def _deliver(self, item: EventFrame | Gap) -> None:
        """Subscription callback: queue an event (or a gap) for this socket. Never blocks."""
        if self._closed or self.close_code is not None:
            return
        if isinstance(item, Gap):
            self._reply(item)
            return
        outbox = self._outbox
        event = item.event
        task_id = item.task_id
        if isinstance(event, LlmResponse):
            slot = self._open_delta.get(task_id)
            if slot is not None and not slot.sent and len(outbox) >= self.settings.merge_after:
                prev = slot.frame.event
                if (
                    isinstance(prev, LlmResponse)
                    and prev.agent == event.agent
                    and prev.channel == event.channel
                    and prev.phase == event.phase
                    and prev.turn == event.turn
                ):
                    merged = LlmResponse(
                        delta=prev.delta + event.delta,
                        channel=event.channel,
                        phase=event.phase,
                        turn=event.turn,
                        agent=event.agent,
                    )
                    slot.frame = EventFrame(
                        task_id=task_id, seq=item.seq, ts=slot.frame.ts, event=merged
                    )
                    slot.size += len(event.delta)
                    if slot.replay:
                        self._replay_bytes += len(event.delta)
                    else:
                        self._outbox_bytes += len(event.delta)
                    self.stats.events_merged += 1
                    self._check_overflow()
                    return
            new = _Slot(item, len(event.delta) + _EVENT_OVERHEAD, self._replaying)
            self._open_delta[task_id] = new
        else:
            new = _Slot(item, _EVENT_OVERHEAD, self._replaying)
            if isinstance(event, _TERMINAL):
                self._open_delta.pop(task_id, None)
                self._subscriptions.pop(task_id, None)  # the subscription closes itself
            else:
                self._open_delta.pop(task_id, None)
        outbox.append(new)
        if new.replay:
            self._replay_items += 1
            self._replay_bytes += new.size
        else:
            self._outbox_bytes += new.size
            self._check_overflow()
        self._wakeup.set()

    def send_frame(self, frame: ServerFrame) -> None:
        """Queue a server frame (not an event) for this client."""
        self._reply(frame)

    async def flushed(self) -> None:
        """Wait until everything queued so far was handed to the socket (or it closed)."""
        if self._closed or self.close_code is not None:
            return
        if not self._outbox and not self._sending:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._flush_waiters.append(waiter)
        await waiter

    def _reply(self, frame: ServerFrame) -> None:
        if self._closed:
            return
        payload = self.session.send(frame)
        self._outbox.append(payload)
        self._outbox_bytes += len(payload)
        self._check_overflow()
        self._wakeup.set()

    def _hoist_last_control(self) -> None:
        outbox = self._outbox
        if len(outbox) < 2 or not isinstance(outbox[-1], str | bytes):
            return
        last = outbox.pop()
        # Put it before the trailing run of events (those delivered during the start call).
        held: list[_Slot | str | bytes] = []
        while outbox and isinstance(outbox[-1], _Slot) and not outbox[-1].sent:
            held.append(outbox.pop())
        outbox.append(last)
        outbox.extend(reversed(held))

    def _reply_error(
        self,
        code: ErrorCode,
        message: str,
        request_id: str | int | None,
        task_id: str | None,
        field_path: str | None,
    ) -> None:
        self.stats.errors_sent += 1
        self._reply(
            ErrorFrame(
                code=code.value, message=message, id=request_id, task_id=task_id, field=field_path
            )
        )

    def _check_overflow(self) -> None:
        s = self.settings
        if (
            len(self._outbox) - self._replay_items > s.max_outbox
            or self._outbox_bytes > s.max_outbox_bytes
        ):
            self.request_close(CloseCode.SLOW_CONSUMER, "slow consumer: resume with subscribe")

    def request_close(self, code: int, reason: str) -> None:
        """Ask the endpoint to close the socket with ``code`` (first request wins)."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self._outbox.clear()
        self._outbox_bytes = self._replay_items = self._replay_bytes = 0
        self._unsubscribe_all()
        self._wakeup.set()
        self._wake_flush_waiters()
        self.close_requested.set()

    @property
    def outbox_depth(self) -> int:
        return len(self._outbox)

    def take_frame(self) -> tuple[str | bytes, int] | None:
        """Remove and encode the next frame to send: a reply as is, or the consecutive events
        at the head of the outbox (``max_batch`` at most) as one ``batch`` — a lone event as its
        own frame. Returns ``(payload, number of events)``, or None when nothing is queued."""
        outbox = self._outbox
        if not outbox:
            return None
        head = outbox[0]
        if not isinstance(head, _Slot):
            outbox.popleft()
            self._outbox_bytes -= len(head)
            return head, 0
        events: list[EventFrame] = []
        max_batch = self.settings.max_batch
        while outbox and len(events) < max_batch:
            slot = outbox[0]
            if not isinstance(slot, _Slot):
                break
            outbox.popleft()
            slot.sent = True
            if slot.replay:
                self._replay_items -= 1
                self._replay_bytes -= slot.size
            else:
                self._outbox_bytes -= slot.size
            events.append(slot.frame)
        self.stats.frames_sent += 1
        return self._encode_events(events), len(events)

    def _encode_events(self, events: list[EventFrame]) -> str | bytes:
        self.stats.events_sent += len(events)
        if len(events) == 1:
            return self.session.send(events[0])
        self.stats.batches_sent += 1
        return self.session.send(Batch(events=events))

    async def run_writer(self, send: Send, metrics: Metrics | None = None) -> None:
        """Send queued frames until a close is requested; cancel it to stop."""
        wakeup = self._wakeup
        stats = self.stats
        try:
            while self.close_code is None:
                await wakeup.wait()
                wakeup.clear()
                if self.close_code is not None:
                    return
                if metrics is not None:
                    metrics.outbox_depth.observe(len(self._outbox))
                self._sending = True
                while (item := self.take_frame()) is not None:
                    payload, n_events = item
                    size = len(payload)
                    stats.bytes_sent += size
                    await send(payload)
                    if metrics is not None:
                        metrics.frames_sent.inc()
                        metrics.bytes_sent.inc(size)
                        if n_events:
                            metrics.events_sent.inc(n_events)
                            metrics.batch_size.observe(n_events)
                    if self.close_code is not None:
                        return
                self._sending = False
                if not self._outbox:
                    self._wake_flush_waiters()
        finally:
            self._sending = False
            self._wake_flush_waiters()

    def _wake_flush_waiters(self) -> None:
        waiters, self._flush_waiters = self._flush_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ lifetime

    def _unsubscribe_all(self) -> None:
        subs, self._subscriptions = self._subscriptions, {}
        for sub in subs.values():
            sub.close()

    def close(self) -> None:
        """Unsubscribe from every task (they keep running under their detach policy)."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe_all()
        self._outbox.clear()
        self._open_delta.clear()
        self._wakeup.set()
        self._wake_flush_waiters()


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
