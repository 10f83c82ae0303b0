"""Helpers of the server tests; the test client and the demo config are gateway.testing's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from gateway.testing import FrameClient as Client
from gateway.testing import write_demo_config as demo_config
from protocol import (
    JSON,
    MSGPACK,
    Event,
    EventFrame,
    Gap,
    StartOptions,
)


def event_key(event: Event) -> dict[str, Any]:
    """An event as plain data (for comparing runs)."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    if data.get("kind") == "tool_call_complete":
        data.pop("duration_ms", None)
    return data


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
