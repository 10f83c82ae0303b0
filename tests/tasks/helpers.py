"""Helpers of the task tests (not a test module)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.tasks import Delivery, Subscription, TaskBackend, TaskManager
from protocol.events import TERMINAL_STATES
from protocol.frames import EventFrame, Gap

BackendFactory = Callable[..., TaskBackend]
"""``make_backend(retention=None)`` of the ``make_backend`` fixture."""


async def collect(sub: Subscription) -> list[Delivery]:
    """Everything a subscription delivers, until it closes."""
    return [item async for item in sub]


def kind(item: Delivery) -> str:
    if isinstance(item, Gap):
        return "gap"
    tag = item.event.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def kinds(items: list[Delivery]) -> list[str]:
    return [kind(item) for item in items]


def seqs(items: list[Delivery]) -> list[int]:
    return [item.seq for item in items if isinstance(item, EventFrame)]


def is_terminal(item: Delivery) -> bool:
    return isinstance(item, EventFrame) and type(item.event) in TERMINAL_STATES


class Recorder:
    """A ``deliver`` callback that keeps what it gets; ``ended`` is set by the terminal event
    and :meth:`seen` waits for the first delivery of a kind."""

    def __init__(self) -> None:
        self.items: list[Delivery] = []
        self.ended = asyncio.Event()
        self._seen: dict[str, asyncio.Event] = {}

    def __call__(self, item: Delivery) -> None:
        self.items.append(item)
        self._event(kind(item)).set()
        if is_terminal(item):
            self.ended.set()

    def _event(self, name: str) -> asyncio.Event:
        event = self._seen.get(name)
        if event is None:
            event = self._seen[name] = asyncio.Event()
        return event

    async def seen(self, name: str) -> None:
        await self._event(name).wait()

    async def wait(self) -> list[Delivery]:
        await self.ended.wait()
        return self.items


async def terminal_of(tm: TaskManager, owner: str, task_id: str) -> asyncio.Future[EventFrame]:
    """A future resolved by the task's terminal event, via a raw backend listener (not a
    subscriber, so it does not stop a detach clock)."""
    fut: asyncio.Future[EventFrame] = asyncio.get_running_loop().create_future()

    def listener(item: EventFrame | Gap) -> None:
        if isinstance(item, EventFrame) and is_terminal(item) and not fut.done():
            fut.set_result(item)

    await tm.backend.listen(owner, task_id, listener)
    return fut
