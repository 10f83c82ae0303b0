"""Detach: what happens to a task that nobody watches.

A task with no subscriber in this process (never subscribed, or after the last one left) keeps
running for its detach TTL, then is cancelled (reason ``detached…``); with policy ``cancel`` it
is cancelled as soon as its last subscriber leaves (or at once, if it starts without one).
Subscribing again stops the clock.

:class:`DetachClocks` keeps one subscriber count and one timer per task, by key, and calls its
``expired(key, reason)`` when a task is to be cancelled; it cancels nothing itself.
Subscribers on other nodes (a shared backend) are not counted: a task watched only from
another gateway is detached by its own node's clock.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from protocol.frames import DetachPolicy

__all__ = ["DetachClocks"]

K = TypeVar("K", bound=Hashable)


class _Clock:
    __slots__ = ("policy", "subscribers", "timer", "ttl")

    def __init__(self, policy: DetachPolicy, ttl: float) -> None:
        self.policy = policy
        self.ttl = ttl
        self.subscribers = 0
        self.timer: asyncio.TimerHandle | None = None


class DetachClocks(Generic[K]):
    """Subscriber counts and detach timers of the tasks a node runs."""

    __slots__ = ("_clocks", "_expired")

    def __init__(self, expired: Callable[[K, str], None]) -> None:
        self._expired = expired
        self._clocks: dict[K, _Clock] = {}

    def track(self, key: K, policy: DetachPolicy, ttl: float) -> None:
        """Start following a new task (no clock runs until :meth:`settle`)."""
        self._clocks[key] = _Clock(policy, ttl)

    def settle(self, key: K) -> None:
        """Start the clock of a tracked task if nobody watches it (after :meth:`track` and the
        first subscriber's :meth:`watch`, if it has one)."""
        clock = self._clocks.get(key)
        if clock is not None and clock.subscribers == 0 and clock.timer is None:
            self._arm(key, clock)

    def watch(self, key: K) -> Callable[[], None]:
        """A subscriber joined; returns what to call when it leaves (idempotent). Tasks not
        tracked (finished, or run elsewhere) are not counted."""
        clock = self._clocks.get(key)
        if clock is None:
            return _noop
        clock.subscribers += 1
        self._disarm(clock)
        left = False

        def leave() -> None:
            nonlocal left
            if left:
                return
            left = True
            clock.subscribers -= 1
            if clock.subscribers == 0 and self._clocks.get(key) is clock:
                self._arm(key, clock)

        return leave

    def forget(self, key: K) -> None:
        """The task ended or is being cancelled: no clock any more."""
        clock = self._clocks.pop(key, None)
        if clock is not None:
            self._disarm(clock)

    def armed(self, key: K) -> bool:
        """Whether the task's detach timer runs."""
        clock = self._clocks.get(key)
        return clock is not None and clock.timer is not None

    def _arm(self, key: K, clock: _Clock) -> None:
        ttl = clock.ttl
        if clock.policy == "cancel" or ttl <= 0:
            self._expired(key, "detached: no subscriber left")
        elif math.isfinite(ttl):
            clock.timer = asyncio.get_running_loop().call_later(
                ttl, self._expired, key, f"detached: no subscriber for {ttl:g} s"
            )

    @staticmethod
    def _disarm(clock: _Clock) -> None:
        if clock.timer is not None:
            clock.timer.cancel()
            clock.timer = None

    def __len__(self) -> int:
        return len(self._clocks)


def _noop() -> None:
    pass
