"""A frame-level protocol client for tests: any frame out, every frame in, events by task.

:class:`gateway.client.GatewayClient` is the client for applications (tasks as objects,
reconnects, resume). A test of the gateway itself needs the wire instead: send a frame the SDK
would never send, see each reply and event frame as it came. :class:`FrameClient` is that, over a
real ``websockets`` connection and the protocol's own :class:`~protocol.ClientSession`::

    async with await FrameClient.connect(url) as client:
        rid = await client.start("What is 17*23+4?", task_id="t1")
        accepted = await client.reply(rid, Accepted)
        await client.until_finished(["t1"])
        assert client.events["t1"][-1].event.final_answer == "395"
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar, overload

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from protocol import (
    JSON,
    TERMINAL_KINDS,
    Cancel,
    ClientFrame,
    ClientSession,
    Codec,
    EventFrame,
    Hello,
    ProtocolError,
    Start,
)
from protocol.session import IncomingFrame

__all__ = ["FrameClient"]

F = TypeVar("F")


class FrameClient:
    """One WebSocket to the gateway. ``events`` holds every event frame received, by task id;
    ``others`` every other frame after ``hello`` (replies, gaps, errors)."""

    def __init__(self, ws: ClientConnection, codec: Codec = JSON) -> None:
        self.ws = ws
        self.session = ClientSession(codec)
        self.hello: Hello | None = None
        self.events: dict[str, list[EventFrame]] = defaultdict(list)
        self.others: list[IncomingFrame] = []
        self._ids = itertools.count(1)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        codec: Codec = JSON,
        headers: dict[str, str] | None = None,
        **options: Any,
    ) -> FrameClient:
        """Open the socket with ``codec``'s subprotocol and read ``hello``. ``options`` go to
        :func:`websockets.asyncio.client.connect` (``max_size``, ``ping_interval``, …)."""
        ws = await websockets.connect(
            url,
            subprotocols=[Subprotocol(codec.subprotocol)],
            additional_headers=headers,
            **options,
        )
        client = cls(ws, codec)
        first = await client.recv()
        if not first or not isinstance(first[0], Hello):
            await ws.close()
            raise AssertionError(f"the server's first frame is not hello: {first!r}")
        client.hello = first[0]
        return client

    async def __aenter__(self) -> FrameClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def next_id(self) -> str:
        """A fresh request id (``r1``, ``r2``, …)."""
        return f"r{next(self._ids)}"

    async def send(self, frame: ClientFrame) -> None:
        await self.ws.send(self.session.send(frame))

    async def start(self, text: str, **fields: Any) -> str:
        """Send ``start`` (``fields``: ``task_id``, ``options``, ``subscribe``); return its
        request id."""
        rid = self.next_id()
        await self.send(Start(id=rid, input=text, **fields))
        return rid

    async def cancel(self, task_id: str) -> str:
        """Send ``cancel``; return its request id."""
        rid = self.next_id()
        await self.send(Cancel(id=rid, task_id=task_id))
        return rid

    async def recv(self) -> list[IncomingFrame]:
        """Read one WebSocket message (one frame, or the events of a ``batch``) and file it."""
        frames = self.session.receive(await self.ws.recv())
        if isinstance(frames, ProtocolError):
            raise frames  # the server sent something that is not a valid frame
        for frame in frames:
            if isinstance(frame, EventFrame):
                self.events[frame.task_id].append(frame)
            elif self.hello is not None:
                self.others.append(frame)
        return frames

    @overload
    async def reply(self, request_id: str | int, kind: type[F]) -> F: ...

    @overload
    async def reply(self, request_id: str | int, kind: None = None) -> IncomingFrame: ...

    async def reply(self, request_id: str | int, kind: type[Any] | None = None) -> Any:
        """Read until the reply to ``request_id`` arrives (events on the way are kept); with
        ``kind``, fail unless the reply is of that type."""
        while True:
            for frame in await self.recv():
                if isinstance(frame, EventFrame) or getattr(frame, "id", None) != request_id:
                    continue
                if kind is not None and not isinstance(frame, kind):
                    raise AssertionError(f"expected {kind.__name__}, got {frame!r}")
                return frame

    def finished(self, task_ids: Iterable[str]) -> bool:
        """Whether each of these tasks has received its terminal event."""
        return all(
            self.events[t] and self.events[t][-1].event.__struct_config__.tag in TERMINAL_KINDS
            for t in task_ids
        )

    async def until_finished(self, task_ids: Iterable[str]) -> None:
        """Read until each of these tasks has received its terminal event."""
        task_ids = list(task_ids)
        while not self.finished(task_ids):
            await self.recv()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Read until ``predicate()`` holds."""
        while not predicate():
            await self.recv()

    async def close(self) -> None:
        await self.ws.close()
