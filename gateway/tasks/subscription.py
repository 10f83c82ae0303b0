"""A subscription to one task's events: replay of the retained ones, then live ones.

A :class:`Subscription` is made by :meth:`TaskManager.subscribe`. It delivers, in this order
and exactly once each:

1. a :class:`protocol.frames.Gap` when events after ``after_seq`` were already dropped by
   retention (``first_available_seq`` says where the replay starts), never a silent loss;
2. the retained :class:`protocol.frames.EventFrame` s with ``seq > after_seq``;
3. the live ones, until the terminal event, after which the subscription closes itself (a
   ``Gap`` among them if the backend lost live events that its log no longer has).

The join point between replay and live is race-free for any backend: the live listener is
attached *before* the log is read, live events that arrive while the replay is being read are
held back, and every frame is delivered only if its ``seq`` follows the last one delivered.

Two ways to consume it:

- **callback** (for the connection multiplexer, which owns one outbox per socket): pass
  ``deliver``; it is called synchronously, in order, from the task producing the event. It
  must not block or await; put the frame in your own bounded outbox and apply your own
  slow-consumer policy. No extra asyncio task is created per subscription.
- **async iterator** (for scripts and tests): omit ``deliver`` and ``async for`` over the
  subscription; iteration ends after the terminal event or when :meth:`close` is called.
  The buffer is unbounded: this mode is for consumers that keep up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from protocol.events import TERMINAL_STATES
from protocol.frames import EventFrame, Gap

__all__ = ["Deliver", "Delivery", "Subscription"]

Delivery = EventFrame | Gap
"""What a subscription delivers: events, preceded by a ``Gap`` when some were dropped."""

Deliver = Callable[[Delivery], None]
"""Synchronous callback receiving each delivery in order."""


class Subscription:
    """One subscriber of one task (see the module docstring)."""

    __slots__ = (
        "_buffer",
        "_deliver",
        "_on_close",
        "_queue",
        "_waiter",
        "closed",
        "finished",
        "gap",
        "last_seq",
        "owner",
        "task_id",
    )

    def __init__(
        self, owner: str, task_id: str, after_seq: int, deliver: Deliver | None = None
    ) -> None:
        self.owner = owner
        self.task_id = task_id
        self.last_seq = after_seq
        """``seq`` of the last event delivered (``after_seq`` before any)."""
        self.gap: Gap | None = None
        """The ``Gap`` delivered first, if events after ``after_seq`` had been dropped."""
        self.closed = False
        """True once unsubscribed (explicitly or after the terminal event)."""
        self.finished = False
        """True once the task's terminal event was delivered."""
        self._queue: deque[Delivery] | None = None
        self._waiter: asyncio.Future[None] | None = None
        if deliver is None:
            self._queue = deque()
            deliver = self._enqueue
        self._deliver: Deliver = deliver
        self._buffer: list[EventFrame | Gap] | None = []  # live items held back during the replay
        self._on_close: Callable[[], None] | None = None

    # -- called by the TaskManager

    def _on_live(self, item: EventFrame | Gap) -> None:
        # The hot path of every live event: _push inlined for the common case.
        if self._buffer is not None:
            self._buffer.append(item)
        elif type(item) is Gap:
            self._skip(item)
        elif item.seq > self.last_seq and not self.closed:  # type: ignore[union-attr]
            self.last_seq = item.seq  # type: ignore[union-attr]
            if type(item.event) in TERMINAL_STATES:  # type: ignore[union-attr]
                self.finished = True
                self._deliver(item)
                self.close()
            else:
                self._deliver(item)

    def _start(
        self, gap: Gap | None, replay: list[EventFrame], on_close: Callable[[], None]
    ) -> None:
        self._on_close = on_close
        if gap is not None:
            self.gap = gap
            self.last_seq = max(self.last_seq, gap.first_available_seq - 1)
            self._deliver(gap)
        for frame in replay:
            self._push(frame)
        buffered, self._buffer = self._buffer, None
        if buffered:
            for item in buffered:
                if type(item) is Gap:
                    self._skip(item)
                else:
                    self._push(item)  # type: ignore[arg-type]
        if self.finished:
            self.close()

    def _push(self, frame: EventFrame) -> None:
        if frame.seq <= self.last_seq or self.closed:
            return  # already delivered by the replay (join point), or unsubscribed
        self.last_seq = frame.seq
        if type(frame.event) in TERMINAL_STATES:
            self.finished = True
            self._deliver(frame)
            if self._buffer is None:  # not during the replay: _start closes after it
                self.close()
            return
        self._deliver(frame)

    def _skip(self, gap: Gap) -> None:
        """The backend lost live events its log no longer has: say so, go on after them."""
        if self.closed or gap.first_available_seq <= self.last_seq + 1:
            return
        gap = Gap(
            task_id=self.task_id,
            first_available_seq=gap.first_available_seq,
            after_seq=self.last_seq,
        )
        self.last_seq = gap.first_available_seq - 1
        self._deliver(gap)

    # -- public

    def close(self) -> None:
        """Stop receiving events. Idempotent; the task itself is not affected."""
        if self.closed:
            return
        self.closed = True
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()
        self._wake()

    def _enqueue(self, item: Delivery) -> None:
        assert self._queue is not None
        self._queue.append(item)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        queue = self._queue
        if queue is None:
            raise TypeError("this subscription delivers to a callback; it cannot be iterated")
        while not queue:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return queue.popleft()

    def __repr__(self) -> str:
        return (
            f"<Subscription {self.owner}/{self.task_id} last_seq={self.last_seq}"
            f"{' closed' if self.closed else ''}>"
        )
