"""A small test client over a real `websockets` connection, and demo-config helpers."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

from protocol import (
    JSON,
    MSGPACK,
    TERMINAL_KINDS,
    ClientFrame,
    ClientSession,
    Codec,
    Event,
    EventFrame,
    Gap,
    Hello,
    ProtocolError,
    Start,
    StartOptions,
)
from protocol.session import IncomingFrame

DEMO_YAML = Path(__file__).resolve().parents[2] / "gateway" / "configs" / "demo.yaml"


def demo_config(tmp_path: Path, pace_ms: int, name: str = "demo.yaml") -> str:
    """The shipped demo config (offline demo model, built-in tools, one sub-agent) streaming
    at ``pace_ms`` per word."""
    text = DEMO_YAML.read_text(encoding="utf-8")
    pace = "${oc.env:OSPARK_DEMO_PACE_MS,20}"
    assert pace in text, "the demo config's pace setting moved"
    path = tmp_path / name
    path.write_text(text.replace(pace, str(pace_ms)), encoding="utf-8")
    return str(path)


def event_key(event: Event) -> dict[str, Any]:
    """An event as plain data (for comparing runs)."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    if data.get("kind") == "tool_call_complete":
        data.pop("duration_ms", None)
    return data


class Client:
    """A protocol client for tests: sends frames, reads frames, sorts events by task."""

    def __init__(self, ws: ClientConnection, codec: Codec) -> None:
        self.ws = ws
        self.session = ClientSession(codec)
        self.hello: Hello | None = None
        self.events: dict[str, list[EventFrame]] = defaultdict(list)
        self.others: list[IncomingFrame] = []
        self._ids = itertools.count(1)

    @classmethod
    async def connect(
        cls, url: str, *, codec: Codec = JSON, headers: dict[str, str] | None = None, **kw: Any
    ) -> Client:
        subprotocols = [codec.subprotocol]  # type: ignore[list-item]
        ws = await websockets.connect(
            url, subprotocols=subprotocols, additional_headers=headers, **kw
        )
        client = cls(ws, codec)
        first = await client.recv()
        assert isinstance(first[0], Hello), first
        client.hello = first[0]
        return client

    def next_id(self) -> str:
        return f"r{next(self._ids)}"

    async def send(self, frame: ClientFrame) -> None:
        await self.ws.send(self.session.send(frame))

    async def start(self, text: str, **kw: Any) -> str:
        """Send ``start``; return the request id."""
        rid = self.next_id()
        options = kw.pop("options", None)
        await self.send(Start(id=rid, input=text, options=options, **kw))
        return rid

    async def recv(self) -> list[IncomingFrame]:
        frames = self.session.receive(await self.ws.recv())
        assert not isinstance(frames, ProtocolError), frames
        for frame in frames:
            if isinstance(frame, EventFrame):
                self.events[frame.task_id].append(frame)
            elif self.hello is not None:
                self.others.append(frame)
        return frames

    async def reply(self, request_id: str | int, kind: type | None = None) -> Any:
        """Read until the reply to ``request_id`` arrives (events are kept)."""
        while True:
            for frame in await self.recv():
                if getattr(frame, "id", None) == request_id and not isinstance(frame, EventFrame):
                    if kind is not None:
                        assert isinstance(frame, kind), frame
                    return frame

    def finished(self, task_ids: Iterable[str]) -> bool:
        return all(
            self.events[t] and self.events[t][-1].event.__struct_config__.tag in TERMINAL_KINDS
            for t in task_ids
        )

    async def until_finished(self, task_ids: Iterable[str]) -> None:
        task_ids = list(task_ids)
        while not self.finished(task_ids):
            await self.recv()

    async def until(self, predicate: Any) -> None:
        while not predicate():
            await self.recv()

    async def close(self) -> None:
        await self.ws.close()


async def raw_close_code(port: int, headers: dict[str, str]) -> int | None:
    """Open a WebSocket with exactly these handshake headers (as a browser would send them,
    one ``Host``), and return the close code of the server's first frame if it is a close."""
    import base64
    import os
    import struct

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    first = await reader.readexactly(2)
    payload = await reader.readexactly(first[1] & 0x7F)
    writer.close()
    if first[0] & 0x0F != 0x8:
        return None
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def server_log() -> Iterator[list[logging.LogRecord]]:
    """What the gateway and uvicorn log (uvicorn's loggers do not reach pytest's root
    handler)."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("gateway", "uvicorn", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def assert_seq_continuous(frames: list[EventFrame]) -> None:
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))


def gaps(client: Client) -> list[Gap]:
    return [f for f in client.others if isinstance(f, Gap)]


CODECS = [JSON, MSGPACK]
__all__ = [
    "CODECS",
    "Client",
    "StartOptions",
    "assert_seq_continuous",
    "asyncio",
    "demo_config",
    "event_key",
    "gaps",
    "raw_close_code",
    "server_log",
]
