"""Detach clocks (:mod:`gateway.tasks.detach`)."""

from __future__ import annotations

import asyncio

from gateway.tasks.detach import DetachClocks


class Expired:
    def __init__(self) -> None:
        self.calls: list[tuple[object, str]] = []
        self.fired = asyncio.Event()

    def __call__(self, key: object, reason: str) -> None:
        self.calls.append((key, reason))
        self.fired.set()


async def test_policy_cancel_fires_when_the_last_subscriber_leaves() -> None:
    expired = Expired()
    clocks = DetachClocks(expired)
    clocks.track("k", "cancel", 600)
    first = clocks.watch("k")
    second = clocks.watch("k")
    clocks.settle("k")
    first()
    first()  # idempotent: one leave per subscriber
    assert expired.calls == []
    second()
    assert expired.calls == [("k", "detached: no subscriber left")]


async def test_an_unwatched_task_runs_its_ttl_and_a_subscriber_stops_it() -> None:
    expired = Expired()
    clocks = DetachClocks(expired)
    clocks.track("k", "keep", 3600)
    clocks.settle("k")
    assert clocks.armed("k")
    leave = clocks.watch("k")
    assert not clocks.armed("k")
    leave()
    assert clocks.armed("k")
    clocks.forget("k")
    assert not clocks.armed("k") and len(clocks) == 0
    assert expired.calls == []


async def test_the_ttl_fires() -> None:
    expired = Expired()
    clocks = DetachClocks(expired)
    clocks.track("k", "keep", 0.001)
    clocks.settle("k")
    await expired.fired.wait()
    assert expired.calls == [("k", "detached: no subscriber for 0.001 s")]


async def test_untracked_tasks_are_not_counted() -> None:
    clocks = DetachClocks(Expired())
    clocks.watch("elsewhere")()
    clocks.track("k", "keep", float("inf"))
    clocks.settle("k")
    assert not clocks.armed("k")  # inf: never
