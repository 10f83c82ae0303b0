"""Admission: at most ``limit`` runs at a time; the others wait in FIFO order.

:class:`RunSlots` knows nothing of tasks but their keys. A slot is taken with
:meth:`RunSlots.acquire` (which waits in the queue when none is free) and given back with
:meth:`RunSlots.release`, which hands it straight to the first waiter.

Cancellation: :meth:`RunSlots.acquire` is safe to cancel at any point. Cancelled while
queued, it leaves the queue; cancelled after a slot was handed to it but before it resumed,
it gives the slot back — a cancel that arrives between "let out of the queue" and "started"
is never lost, and never leaks a slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

__all__ = ["RunSlots"]


class RunSlots:
    """A counting semaphore with visible queue positions."""

    __slots__ = ("_queue", "limit", "running")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the run-slot limit must be positive")
        self.limit = limit
        self.running = 0
        """Slots taken."""
        self._queue: dict[Hashable, asyncio.Future[None]] = {}  # insertion order = FIFO

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return len(self._queue)

    async def acquire(self, key: Hashable, queued: Callable[[int], None] | None = None) -> None:
        """Take a slot, waiting for one if all are taken; ``queued(position)`` is called
        (synchronously, before waiting) when the caller has to wait."""
        if self.running < self.limit:
            self.running += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._queue[key] = waiter
        if queued is not None:
            queued(len(self._queue))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over, but we will not use it
            else:
                self._queue.pop(key, None)
            raise

    def release(self) -> None:
        """Give a slot back: the first waiter gets it."""
        self.running -= 1
        queue = self._queue
        while queue and self.running < self.limit:
            key = next(iter(queue))
            waiter = queue.pop(key)
            if waiter.done():  # its caller was cancelled; it cleans up by itself
                continue
            self.running += 1
            waiter.set_result(None)

    def position(self, key: Hashable) -> int | None:
        """1-based place of ``key`` in the queue, or ``None`` if it is not waiting."""
        if key not in self._queue:
            return None
        return list(self._queue).index(key) + 1

    def positions(self) -> dict[Hashable, int]:
        """Every waiting key with its 1-based place."""
        return {k: i for i, k in enumerate(self._queue, 1)}
