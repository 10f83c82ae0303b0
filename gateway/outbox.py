"""The outbox of one connection: what waits for the socket, in order. Sans-I/O.

An :class:`Outbox` holds no socket and no event loop. The connection adds to it (task events
with :meth:`Outbox.add_event`, any other frame with :meth:`Outbox.add_reply`); the I/O loop
takes payloads from it (:meth:`Outbox.take`) and tells it when it is waiting on the socket
(:meth:`Outbox.begin_write` / :meth:`Outbox.end_write`). It never closes anything: when the
client cannot keep up it returns a :class:`SlowConsumer` verdict, and the caller closes.

Policy (the only place it lives):

- **Batching.** :meth:`take` gives a reply as it is, and events one per frame, except when the
  client lags (events were added while the writer waited on the socket) or ``batch_after``
  frames or more wait: then up to ``max_batch`` consecutive events go out as one ``batch``.
  An idle connection sees single events with the lowest latency, a busy one fewer frames.
- **Merging.** While the writer waits on the socket and ``merge_after`` frames or more wait,
  an ``llm_response`` is merged into the previous still-queued delta of the same task when no
  other event of that task came between them and the stream matches
  (:meth:`protocol.LlmResponse.same_stream`). The merged frame carries the later ``seq``;
  lifecycle and tool events are never merged or dropped.
- **Budgets.** Live events and replies count against ``max_outbox`` frames and
  ``max_outbox_bytes``; replayed events (``replay=True``, already held by the task's log)
  against ``max_replay`` events and four times ``max_outbox_bytes``. A live backlog counts
  against the client only while the writer waits on the socket; a burst the writer has not
  had its turn for yet may reach four times the bounds.

Payloads are assembled in one place (:meth:`_assemble`), from the frames kept in the queue:
a ``batch`` is encoded in one call from the frames themselves (msgspec encodes a list of
frames several times faster than the same frames one call each, so keeping every event's own
encoding to share between connections costs more than it saves below about six subscribers
per event).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from protocol import Batch, CloseCode, EventFrame, Gap, LlmResponse, ServerFrame

__all__ = [
    "LAGGING",
    "REPLAY_FLOOD",
    "Outbox",
    "OutboxLimits",
    "Payload",
    "SlowConsumer",
]

Payload = str | bytes
"""What goes on the wire: text for JSON, bytes for MessagePack."""

Encode = Callable[[ServerFrame], Payload]

_EVENT_OVERHEAD = 96  # rough bytes of an event frame besides its text


@dataclass(frozen=True, slots=True)
class SlowConsumer:
    """The verdict: close the connection with ``code`` and ``reason``."""

    reason: str
    code: int = CloseCode.SLOW_CONSUMER


LAGGING = SlowConsumer("slow consumer: resume with subscribe")
REPLAY_FLOOD = SlowConsumer("too much to replay at once: subscribe to fewer tasks")


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """The outbox's bounds and thresholds (see the module docstring)."""

    max_outbox: int = 10_000
    max_outbox_bytes: int = 16 << 20
    max_replay: int = 100_000
    merge_after: int = 32
    batch_after: int = 8
    max_batch: int = 256


class _Slot(msgspec.Struct, gc=False):
    """One queued event. Deltas merged into it are kept as parts and joined once, when the
    frame is taken (merging stays linear however far the client lags). (A Struct: one is made
    per event, and its constructor runs no Python code; nothing it holds refers back to it.)"""

    frame: EventFrame
    size: int
    replay: bool
    parts: list[str] | None = None
    last_seq: int = 0
    """The ``seq`` of the latest delta merged in (with ``parts``)."""
    taken: bool = False

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


class Outbox:
    """The frames waiting for one socket (see the module docstring)."""

    __slots__ = (
        "_behind",
        "_encode",
        "_items",
        "_live_bytes",
        "_open_delta",
        "_replay_bytes",
        "_replay_items",
        "_writing",
        "events_merged",
        "limits",
    )

    def __init__(self, encode: Encode, limits: OutboxLimits | None = None) -> None:
        self._encode = encode
        self.limits = limits or OutboxLimits()
        self._items: deque[_Slot | Payload] = deque()
        self._live_bytes = 0
        # Replayed events are already held by the task's log (bounded by its retention), so
        # they count against their own, larger bound, not the live-lag ones.
        self._replay_items = 0
        self._replay_bytes = 0
        self._open_delta: dict[str, _Slot] = {}
        self._writing = False
        self._behind = False
        self.events_merged = 0
        """Deltas merged into an earlier one so far."""

    def __len__(self) -> int:
        return len(self._items)

    # ------------------------------------------------------------------ adding

    def add_event(self, frame: EventFrame, replay: bool = False) -> SlowConsumer | None:
        """Queue an event of a followed task (``replay``: read back from the task's log)."""
        items = self._items
        event = frame.event
        task_id = frame.task_id
        writing = self._writing
        if type(event) is LlmResponse:
            slot = self._open_delta.get(task_id)
            if (
                slot is not None
                and writing  # the writer waits on the socket: the client lags
                and not slot.taken
                and len(items) >= self.limits.merge_after
            ):
                prev = slot.frame.event
                if isinstance(prev, LlmResponse) and prev.same_stream(event):
                    return self._merge(slot, frame, event, replay)
            new = _Slot(frame, len(event.delta) + _EVENT_OVERHEAD, replay)
            self._open_delta[task_id] = new
        else:
            new = _Slot(frame, _EVENT_OVERHEAD, replay)
            self._open_delta.pop(task_id, None)
        items.append(new)
        if writing:
            self._behind = True
        if replay:
            self._replay_items += 1
            self._replay_bytes += new.size
            return self._verdict()
        # A live event (the hot path): only the live bounds can be crossed here (as in
        # _verdict: a backlog counts in full only while the writer waits on the socket).
        self._live_bytes += new.size
        limits = self.limits
        factor = 1 if writing else 4
        if (
            len(items) - self._replay_items > limits.max_outbox * factor
            or self._live_bytes > limits.max_outbox_bytes * factor
        ):
            return LAGGING
        return None

    def _merge(
        self, slot: _Slot, frame: EventFrame, event: LlmResponse, replay: bool
    ) -> SlowConsumer | None:
        if slot.parts is None:
            first = slot.frame.event
            assert isinstance(first, LlmResponse)
            slot.parts = [first.delta]
        slot.parts.append(event.delta)
        slot.last_seq = frame.seq
        size = len(event.delta)
        if slot.replay and not replay:  # live text joins it: it now counts as live lag
            self._uncount(slot)
            slot.replay = False
            self._live_bytes += slot.size
        slot.size += size
        if slot.replay:
            self._replay_bytes += size
        else:
            self._live_bytes += size
        self.events_merged += 1
        return self._verdict()

    def add_reply(self, frame: ServerFrame) -> SlowConsumer | None:
        """Queue any other frame (a reply, a ``gap``, ``closing``), encoded now."""
        if isinstance(frame, Gap):  # a later delta must not merge across it
            self._open_delta.pop(frame.task_id, None)
        payload = self._encode(frame)
        self._items.append(payload)
        self._live_bytes += len(payload)
        if self._writing:
            self._behind = True
        return self._verdict()

    def drop_task(self, task_id: str) -> None:
        """Forget the queued events of one task (unsubscribed, or subscribed afresh)."""
        self._open_delta.pop(task_id, None)
        items = self._items
        if not any(isinstance(x, _Slot) and x.frame.task_id == task_id for x in items):
            return
        kept: deque[_Slot | Payload] = deque()
        for item in items:
            if isinstance(item, _Slot) and item.frame.task_id == task_id:
                self._uncount(item)
            else:
                kept.append(item)
        self._items = kept

    def clear(self) -> None:
        """Drop everything queued (the connection is closing)."""
        self._items.clear()
        self._open_delta.clear()
        self._live_bytes = self._replay_items = self._replay_bytes = 0
        self._behind = False

    # ------------------------------------------------------------------ taking

    def take(self) -> tuple[Payload, int] | None:
        """Remove the next payload to send: ``(payload, number of events in it)``, or None
        when nothing waits. A reply comes as it is; events one per frame, or as one ``batch``
        when the client lags or a burst waits (see the module docstring)."""
        items = self._items
        if not items:
            return None
        head = items[0]
        if type(head) is not _Slot:
            items.popleft()
            self._live_bytes -= len(head)  # type: ignore[arg-type]
            return head, 0  # type: ignore[return-value]
        limits = self.limits
        most = limits.max_batch if self._behind or len(items) >= limits.batch_after else 1
        slots: list[_Slot] = []
        popleft = items.popleft
        live = 0
        while items and len(slots) < most:
            slot = items[0]
            if type(slot) is not _Slot:
                break
            popleft()
            slot.taken = True
            if slot.replay:
                self._replay_items -= 1
                self._replay_bytes -= slot.size
            else:
                live += slot.size
            slots.append(slot)
        self._live_bytes -= live
        return self._assemble(slots), len(slots)

    def _assemble(self, slots: list[_Slot]) -> Payload:
        """Encode taken events as one payload: the only place payloads of events are built."""
        if len(slots) == 1:
            return self._encode(slots[0].materialize())
        return self._encode(Batch(events=[slot.materialize() for slot in slots]))

    # ------------------------------------------------------------------ the socket

    def begin_write(self) -> None:
        """The writer starts handing payloads to the socket. The I/O loop yields only when the
        socket stalls, so whatever is added before :meth:`end_write` found it stalled: the
        client lags, so deltas merge, events batch and the live backlog counts against the
        tight bounds (the verdict comes from the ``add_*`` call that crosses them)."""
        self._writing = True

    def end_write(self) -> None:
        """The writer took everything and the socket accepted it."""
        self._writing = False
        if not self._items:
            self._behind = False

    @property
    def writing(self) -> bool:
        return self._writing

    # ------------------------------------------------------------------ budgets

    def _uncount(self, slot: _Slot) -> None:
        if slot.replay:
            self._replay_items -= 1
            self._replay_bytes -= slot.size
        else:
            self._live_bytes -= slot.size

    def _verdict(self) -> SlowConsumer | None:
        limits = self.limits
        live = len(self._items) - self._replay_items
        # A backlog counts against the client only while the writer waits on the socket; a
        # burst the writer has not had its turn for yet is ours, bounded at four times the bound.
        factor = 1 if self._writing else 4
        if live > limits.max_outbox * factor or self._live_bytes > limits.max_outbox_bytes * factor:
            return LAGGING
        if (
            self._replay_items > limits.max_replay
            or self._replay_bytes > limits.max_outbox_bytes * 4
        ):
            return REPLAY_FLOOD
        return None

    @property
    def live_bytes(self) -> int:
        """Approximate bytes of queued replies and live events."""
        return self._live_bytes

    @property
    def replay_items(self) -> int:
        """Replayed events waiting."""
        return self._replay_items
