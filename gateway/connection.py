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
- When the writer is blocked on the socket and ``merge_after`` frames or more wait behind it
  (the client lags), an ``llm_response`` is merged into the previous still-queued delta of
  the same task when no other event of that task came between them and agent, channel, phase
  and turn match. The merged frame carries
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
from gateway.tasks import Deliver, Delivery, Subscription, TaskError, TaskManager
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
from protocol.events import TERMINAL_STATES

if TYPE_CHECKING:
    from gateway.server.metrics import Metrics

__all__ = ["Connection", "ConnectionSettings", "ConnectionStats"]

log = logging.getLogger(__name__)

Send = Callable[[str | bytes], Awaitable[None]]


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
    max_batch: int = 256
    """Most events in one ``batch`` frame."""
    max_violations: int = 3
    """Oversized frames tolerated before closing with 4002."""
    heartbeat_interval: float = 20.0
    """Announced in ``hello``: seconds between the server's WebSocket pings."""
    server_version: str = gateway.__version__


@dataclass(slots=True)
class ConnectionStats:
    """Counters of one connection (the process-wide ones are in ``gateway.server.metrics``)."""

    frames_sent: int = 0
    bytes_sent: int = 0
    events_sent: int = 0
    batches_sent: int = 0
    events_merged: int = 0
    frames_received: int = 0
    errors_sent: int = 0


class _Slot:
    """One queued event. Deltas merged into it are kept as parts and joined once, when the
    frame is sent (merging stays linear however far the client lags)."""

    __slots__ = ("frame", "last_seq", "parts", "replay", "sent", "size")

    def __init__(self, frame: EventFrame, size: int, replay: bool) -> None:
        self.frame = frame
        self.sent = False
        self.size = size
        self.replay = replay
        self.parts: list[str] | None = None
        self.last_seq = frame.seq

    def materialize(self) -> EventFrame:
        """The frame to send, with any merged deltas joined into it."""
        frame = self.frame
        if self.parts is None:
            return frame
        event = frame.event
        assert isinstance(event, LlmResponse)
        merged = LlmResponse(
            delta="".join(self.parts),
            channel=event.channel,
            phase=event.phase,
            turn=event.turn,
            agent=event.agent,
        )
        return EventFrame(task_id=frame.task_id, seq=self.last_seq, ts=frame.ts, event=merged)


class _Follow:
    """This connection's subscription to one task. While a request that subscribes is in
    progress, deliveries are held and released after the reply (so ``accepted`` comes before
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
        metrics: Metrics | None = None,
    ) -> None:
        self.manager = manager
        self.session = session
        self.principal = principal
        self.settings = settings or ConnectionSettings()
        self.session_id = session_id or uuid.uuid4().hex[:16]
        self.stats = ConnectionStats()
        self.metrics = metrics
        self.close_code: int | None = None
        """Set when the connection must be closed; the endpoint closes with it."""
        self.close_reason = ""
        self.close_requested = asyncio.Event()
        """Set with ``close_code``: the endpoint stops its reader and writer (the writer may be
        blocked on a socket that does not drain) and closes the socket."""
        self._outbox: deque[_Slot | str | bytes] = deque()
        self._outbox_bytes = 0
        # Replayed events are already held by the task's log (bounded by its retention), so
        # they count against their own, larger bound (``max_replay``), not the live-lag ones.
        self._replay_items = 0
        self._replay_bytes = 0
        self._open_delta: dict[str, _Slot] = {}
        self._wakeup = asyncio.Event()
        self._follows: dict[str, _Follow] = {}
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
        if self.metrics is not None:
            self.metrics.frames_received.inc()
            self.metrics.bytes_received.inc(len(data))
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
                    follow, deliver = self._new_follow(task_id)
                    follow.sub = await self.manager.subscribe(
                        self.principal,
                        task_id,
                        after_seq=after_seq,
                        deliver=deliver,
                        request_id=rid,
                    )
                    # Only now drop the previous subscription, so the task never looks
                    # detached in between (on_detach=cancel would cancel it).
                    self._unsubscribe(task_id)
                    self._release(follow)
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
        )
        self._started[result.task_id] = None
        self._reply(
            Accepted(
                id=frame.id,
                task_id=result.task_id,
                state=result.state,
                existing=result.existing,
            )
        )
        if follow is not None:
            follow.task_id = result.task_id
            follow.sub = result.subscription
            self._release(follow)  # the task's events (a retry's replay) after `accepted`

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

    def _new_follow(self, task_id: str | None) -> tuple[_Follow, Deliver]:
        follow = _Follow(task_id)
        deliver_now = self._deliver

        def deliver(item: Delivery) -> None:
            if follow.active:
                held = follow.held
                if held is None:
                    deliver_now(item, False)
                else:
                    held.append(item)

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
        self._open_delta.pop(task_id, None)
        outbox = self._outbox
        if not any(isinstance(x, _Slot) and x.frame.task_id == task_id for x in outbox):
            return
        kept: deque[_Slot | str | bytes] = deque()
        for item in outbox:
            if isinstance(item, _Slot) and item.frame.task_id == task_id:
                self._uncount(item)
            else:
                kept.append(item)
        self._outbox = kept

    def _uncount(self, slot: _Slot) -> None:
        """Take a slot leaving the outbox off the replay or live-backlog counters."""
        if slot.replay:
            self._replay_items -= 1
            self._replay_bytes -= slot.size
        else:
            self._outbox_bytes -= slot.size

    # ------------------------------------------------------------------ outgoing

    def _deliver(self, item: Delivery, replay: bool) -> None:
        """Queue an event (or a gap) of a followed task for this socket. Never blocks."""
        if self._closed or self.close_code is not None:
            return
        if isinstance(item, Gap):
            self._open_delta.pop(item.task_id, None)
            self._reply(item)
            return
        outbox = self._outbox
        event = item.event
        task_id = item.task_id
        if isinstance(event, LlmResponse):
            slot = self._open_delta.get(task_id)
            if (
                slot is not None
                and not slot.sent
                and self._sending  # the writer is stuck on the socket: the client lags
                and len(outbox) >= self.settings.merge_after
            ):
                prev = slot.frame.event
                if isinstance(prev, LlmResponse) and prev.same_stream(event):
                    self._merge(slot, item, event, replay)
                    return
            new = _Slot(item, len(event.delta) + _EVENT_OVERHEAD, replay)
            self._open_delta[task_id] = new
        else:
            new = _Slot(item, _EVENT_OVERHEAD, replay)
            self._open_delta.pop(task_id, None)
            if type(event) in TERMINAL_STATES:
                self._follows.pop(task_id, None)  # the subscription closes itself
        outbox.append(new)
        if replay:
            self._replay_items += 1
            self._replay_bytes += new.size
        else:
            self._outbox_bytes += new.size
        self._check_overflow()
        self._wakeup.set()

    def _merge(self, slot: _Slot, item: EventFrame, event: LlmResponse, replay: bool) -> None:
        if slot.parts is None:
            first = slot.frame.event
            assert isinstance(first, LlmResponse)
            slot.parts = [first.delta]
        slot.parts.append(event.delta)
        slot.last_seq = item.seq
        size = len(event.delta)
        if slot.replay and not replay:  # live text joins it: it now counts as live lag
            self._uncount(slot)
            slot.replay = False
            self._outbox_bytes += slot.size
        slot.size += size
        if slot.replay:
            self._replay_bytes += size
        else:
            self._outbox_bytes += size
        self.stats.events_merged += 1
        self._check_overflow()

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

    def _reply_error(
        self,
        code: ErrorCode,
        message: str,
        request_id: str | int | None,
        task_id: str | None,
        field_path: str | None,
    ) -> None:
        self.stats.errors_sent += 1
        if self.metrics is not None:
            self.metrics.errors_sent.labels(code.value).inc()
        self._reply(
            ErrorFrame(
                code=code.value, message=message, id=request_id, task_id=task_id, field=field_path
            )
        )

    def _check_overflow(self) -> None:
        s = self.settings
        live = len(self._outbox) - self._replay_items
        # A backlog counts against the client only while the socket does not drain (the writer
        # is blocked on it); a burst of events the writer has not had its turn for yet is ours,
        # bounded by a hard limit of four times the bound.
        factor = 1 if self._sending else 4
        if live > s.max_outbox * factor or self._outbox_bytes > s.max_outbox_bytes * factor:
            self.request_close(CloseCode.SLOW_CONSUMER, "slow consumer: resume with subscribe")
        elif self._replay_items > s.max_replay or self._replay_bytes > s.max_outbox_bytes * 4:
            self.request_close(
                CloseCode.SLOW_CONSUMER, "too much to replay at once: subscribe to fewer tasks"
            )

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
            self._uncount(slot)
            events.append(slot.materialize())
        if len(events) == 1:
            return self.session.send(events[0]), 1
        return self.session.send(Batch(events=events)), len(events)

    async def run_writer(self, send: Send) -> None:
        """Send queued frames until a close is requested; cancel it to stop."""
        metrics = self.metrics
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
                    await send(payload)
                    stats.frames_sent += 1
                    stats.bytes_sent += size
                    stats.events_sent += n_events
                    stats.batches_sent += n_events > 1
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
        follows, self._follows = self._follows, {}
        for follow in follows.values():
            follow.stop()

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
