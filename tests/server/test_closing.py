"""How the server closes a socket whose client does not read: the close frame waits behind
the unread data (no reset), and a heartbeat timeout ends the connection without errors."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
from pathlib import Path

import websockets

from gateway.connection import ConnectionSettings
from gateway.server import RunningGateway, Settings, serve_in_background
from protocol import Limits
from tests.server.helpers import Client, demo_config, server_log

QUESTION = "What is 17*23+4?"


def small_send_buffers(gw: RunningGateway) -> None:
    """Accepted sockets inherit the listening socket's send buffer: keep it small, so that
    what a client does not read piles up in the server, not in the kernel."""
    for server in gw.server.servers:
        for listening in server.sockets:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)


async def gone(gw: RunningGateway) -> None:
    """Until the server's endpoint is done with every connection."""
    await gw.gateway._no_connections.wait()


async def test_a_slow_consumer_finds_its_4000_close_when_it_reads_again(tmp_path: Path) -> None:
    s = Settings(port=0, agent_config=demo_config(tmp_path, 1), web_root=None)
    s.connection = ConnectionSettings(
        limits=Limits(max_starts_per_second=10_000, max_tasks_per_connection=200),
        max_outbox=100,
    )
    async with serve_in_background(s) as gw:
        small_send_buffers(gw)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", gw.port))
        slow = await Client.connect(gw.url, sock=raw, max_queue=1)
        for i in range(100):
            await slow.start(QUESTION, task_id=f"slow-{i}")
        # The client reads nothing until the server has closed it and its endpoint is done.
        await gone(gw)
        try:
            while True:
                await slow.recv()
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "the connection was reset, not closed"
            assert exc.rcvd.code == 4000
            assert exc.rcvd.reason == "slow consumer: resume with subscribe"


def _masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + mask + body


async def test_a_heartbeat_timeout_ends_the_connection_without_errors(tmp_path: Path) -> None:
    s = Settings(port=0, agent_config=demo_config(tmp_path, 0), web_root=None)
    s.connection.heartbeat_interval = 0.2
    s.heartbeat_timeout = 0.3
    async with serve_in_background(s) as gw:
        small_send_buffers(gw)
        with server_log() as records:
            # A raw client that asks for more than its socket can buffer (200 pongs of 1,000
            # characters), then reads nothing and answers no ping: the server's writer is left
            # waiting on the socket when the heartbeat times out.
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.setblocking(False)
            await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", gw.port))
            reader, writer = await asyncio.open_connection(sock=raw)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                (
                    f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            assert b"101" in await reader.readuntil(b"\r\n\r\n")
            head = await reader.readexactly(4)  # `hello` (126..65535 bytes): registered
            assert head[1] == 126
            await reader.readexactly(struct.unpack("!H", head[2:])[0])
            ping = b'{"type":"ping","payload":"' + b"p" * 1000 + b'"}'
            for _ in range(200):
                writer.write(_masked_text(ping))
            await writer.drain()
            await gone(gw)  # the heartbeat timed out and the endpoint ended
            writer.close()
        problems = [r for r in records if r.levelno >= logging.WARNING]
        assert not problems, [r.getMessage() for r in problems]
