"""Run slots (:mod:`gateway.tasks.admission`): FIFO, positions, and cancels in every state."""

from __future__ import annotations

import asyncio

import pytest

from gateway.tasks.admission import RunSlots


class Queued:
    """The ``queued`` callback: records positions; ``wait(key)`` until ``key`` is queued."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}

    def __call__(self, key: str) -> object:
        def queued(position: int) -> None:
            self.positions[key] = position
            self._event(key).set()

        return queued

    def _event(self, key: str) -> asyncio.Event:
        return self._events.setdefault(key, asyncio.Event())

    async def wait(self, key: str) -> None:
        await self._event(key).wait()


async def test_fifo_with_positions() -> None:
    slots = RunSlots(1)
    await slots.acquire("a")
    queued = Queued()
    b = asyncio.create_task(slots.acquire("b", queued("b")))  # type: ignore[arg-type]
    c = asyncio.create_task(slots.acquire("c", queued("c")))  # type: ignore[arg-type]
    await queued.wait("b")
    await queued.wait("c")
    assert queued.positions == {"b": 1, "c": 2}
    assert slots.positions() == {"b": 1, "c": 2} and slots.position("c") == 2
    assert slots.position("a") is None and slots.running == 1 and slots.waiting == 2
    slots.release()
    await b
    assert slots.running == 1 and slots.position("c") == 1
    slots.release()
    await c
    slots.release()
    assert slots.running == 0 and slots.waiting == 0


async def test_a_cancel_while_queued_leaves_the_queue() -> None:
    slots = RunSlots(1)
    await slots.acquire("a")
    queued = Queued()
    b = asyncio.create_task(slots.acquire("b", queued("b")))  # type: ignore[arg-type]
    await queued.wait("b")
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert slots.waiting == 0
    slots.release()
    assert slots.running == 0


async def test_a_cancel_after_the_slot_was_handed_over_gives_it_back() -> None:
    slots = RunSlots(1)
    await slots.acquire("a")
    queued = Queued()
    b = asyncio.create_task(slots.acquire("b", queued("b")))  # type: ignore[arg-type]
    await queued.wait("b")
    slots.release()  # hands the slot to b, which has not resumed yet
    assert slots.running == 1 and slots.waiting == 0
    b.cancel()
    with pytest.raises(asyncio.CancelledError):
        await b
    assert slots.running == 0  # not leaked


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RunSlots(0)
