"""What a hostile or careless client can make the server hold, over raw sockets.

Each test talks bytes to a real uvicorn server on an ephemeral port: handshakes refused with an
HTTP status before any upgrade, fragments and pings bounded, half-sent request heads dropped,
the ``Host`` rule on plain HTTP. The bounds are configured small so that the tests wait on the
server's verdict (a close frame, end of stream, a status line), never on time.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import struct
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram
from starlette.datastructures import Headers, QueryParams

from gateway.server import RunningGateway, Settings, serve_in_background
from gateway.server.auth import check_http
from gateway.server.metrics import sample_loop_lag
from gateway.server.protocols import TransportLimits
from protocol import Accepted, Cancel, Closing
from tests.server.helpers import Client, demo_config

TOKEN = "alice-token-0123456789"

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A client frame. The mask key is zero (valid, and the payload stays as it is)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\0\0\0\0" + payload


class RawSocket:
    """A WebSocket client that writes exactly the bytes it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, rcvbuf: int | None = None) -> RawSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connecting, so the TCP window starts small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def handshake(self, port: int, target: str = "/ws", **headers: str) -> bytes:
        """Send an upgrade request; return the response head."""
        key = base64.b64encode(os.urandom(16)).decode()
        fields = {
            "Host": f"127.0.0.1:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        fields.update({name.replace("_", "-"): value for name, value in headers.items()})
        lines = [f"GET {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        return await self.reader.readuntil(b"\r\n\r\n")

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def read_frame(self) -> tuple[int, bytes]:
        first, second = await self.reader.readexactly(2)
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(n)

    async def close_code(self) -> int:
        """Read frames until the server's close frame; its code."""
        while True:
            opcode, payload = await self.read_frame()
            if opcode == CLOSE:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code

    def close(self) -> None:
        self.writer.close()


async def upgraded(port: int, **headers: str) -> RawSocket:
    raw = await RawSocket.open(port)
    head = await raw.handshake(port, **headers)
    assert head.startswith(b"HTTP/1.1 101"), head
    opcode, hello = await raw.read_frame()
    assert opcode == TEXT and b'"hello"' in hello
    return raw


async def handshake_status(port: int, headers: dict[str, str], target: str = "/ws") -> int:
    """The status of an upgrade request sent with exactly these headers."""
    raw = await RawSocket.open(port)
    head = await raw.handshake(port, target, **headers)
    raw.close()
    return int(head.split(b" ", 2)[1])


async def http_status(port: int, path: str, **headers: str) -> int:
    """``GET path`` over a fresh connection; the response's status."""
    fields = {"Host": f"127.0.0.1:{port}", "Connection": "close"}
    fields.update({name.replace("_", "-"): value for name, value in headers.items()})
    lines = [f"GET {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields.items()]
    raw = await RawSocket.open(port)
    raw.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await raw.reader.readuntil(b"\r\n\r\n")
    raw.close()
    return int(head.split(b" ", 2)[1])


def transport_closes(gw: RunningGateway, reason: str) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(
        "ospark_transport_closes_total", {"reason": reason}
    )
    assert value is not None
    return value


def settings(tmp_path: Path, **kw: object) -> Settings:
    kw.setdefault("web_root", None)
    return Settings(port=0, agent_config=demo_config(tmp_path, 0), **kw)  # type: ignore[arg-type]


# -- refused at the handshake ------------------------------------------------------------------


async def test_bad_tokens_and_origins_never_get_an_upgrade(tmp_path: Path) -> None:
    s = settings(tmp_path, tokens={TOKEN: "alice"}, allowed_origins=frozenset({"https://ok.test"}))
    async with serve_in_background(s) as gw:
        for target, headers, status in [
            ("/ws", {}, 401),
            ("/ws?token=wrong-token-0000000000", {}, 401),
            ("/ws", {"Authorization": "Bearer wrong-token-0000000000"}, 401),
            (f"/ws?token={TOKEN}", {"Origin": "https://evil.test"}, 403),
        ]:
            raw = await RawSocket.open(gw.port)
            head = await raw.handshake(gw.port, target, **headers)
            assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
            # The refusal is the whole answer: the server closes, no WebSocket frame follows.
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await raw.reader.readexactly(length)
            assert await raw.reader.read() == b""
            raw.close()
        assert (
            await handshake_status(gw.port, {"Origin": "https://ok.test"}, f"/ws?token={TOKEN}")
            == 101
        )
        # A plain GET of the WebSocket URL says why (browsers only see a 1006).
        assert await http_status(gw.port, "/ws?token=wrong-token-0000000000") == 401
        assert await http_status(gw.port, f"/ws?token={TOKEN}") == 426
        rejected = gw.gateway.metrics.registry.get_sample_value
        assert rejected("ospark_connections_rejected_total", {"reason": "unauthorized"}) == 3
        assert rejected("ospark_connections_rejected_total", {"reason": "forbidden"}) == 1


# -- fragments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [b"x", b""], ids=["one-byte", "empty"])
async def test_a_message_in_too_many_fragments_closes_the_connection(
    tmp_path: Path, piece: bytes
) -> None:
    s = settings(tmp_path, transport=TransportLimits(max_fragments=100))
    async with serve_in_background(s) as gw:
        raw = await upgraded(gw.port)
        # Within the bound, a fragmented message arrives whole.
        ping = b'{"type":"ping","id":"p1"}'
        raw.send(
            frame(TEXT, ping[:5], fin=False)
            + frame(CONT, ping[5:10], fin=False)
            + frame(CONT, ping[10:])
        )
        opcode, reply = await raw.read_frame()
        assert opcode == TEXT and b'"pong"' in reply and b'"p1"' in reply

        # Past it the connection is closed with 1009. The ping behind the fragments comes in
        # the same read and may still be answered; our own close after its pong would be
        # echoed with 1000 by a server that let the fragments pile up.
        raw.send(
            frame(TEXT, b"{", fin=False)
            + frame(CONT, piece, fin=False) * 1_000
            + frame(PING, b"after")
        )
        while True:
            opcode, payload = await raw.read_frame()
            if opcode == PONG:
                raw.send(frame(CLOSE, struct.pack("!H", 1000)))
                continue
            assert opcode == CLOSE
            assert struct.unpack("!H", payload[:2])[0] == 1009
            break
        assert transport_closes(gw, "fragments") == 1
        raw.close()

        # Everybody else is fine.
        other = await Client.connect(gw.url)
        await other.close()


async def test_a_large_read_of_small_frames_is_parsed_in_slices_without_loss(
    tmp_path: Path,
) -> None:
    """One write far larger than a parsing slice (16 KiB): every frame is still handled,
    once and in order, across the pauses between slices."""
    async with serve_in_background(settings(tmp_path)) as gw:
        raw = await upgraded(gw.port)
        n = 3_000
        raw.send(b"".join(frame(TEXT, b'{"type":"ping","id":"p%d"}' % i) for i in range(n)))
        ids = []
        while len(ids) < n:
            opcode, payload = await raw.read_frame()
            assert opcode == TEXT
            ids.extend(re.findall(rb'"id":"p(\d+)"', payload))
        assert [int(i) for i in ids] == list(range(n))
        raw.close()


# -- pings from a client that never reads -------------------------------------------------------


async def test_a_ping_flood_from_a_client_that_never_reads_is_cut_off(tmp_path: Path) -> None:
    s = settings(tmp_path, transport=TransportLimits(max_unread_pongs=16))
    async with serve_in_background(s) as gw:
        raw = await RawSocket.open(gw.port, rcvbuf=4096)
        head = await raw.handshake(gw.port)
        assert head.startswith(b"HTTP/1.1 101"), head
        burst = frame(PING, b"p" * 125) * 100
        cut_off = False
        for _ in range(2_000):  # at most 200,000 pings (26 MB), far beyond the bound
            try:
                raw.send(burst)
                await raw.writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                cut_off = True
                break
        assert cut_off, "the server kept answering pings nobody read"
        assert transport_closes(gw, "ping_flood") == 1
        raw.close()
        other = await Client.connect(gw.url)
        await other.close()


# -- half-sent request heads ---------------------------------------------------------------------


async def test_half_sent_heads_are_dropped(tmp_path: Path) -> None:
    s = settings(tmp_path, transport=TransportLimits(handshake_timeout=0.2))
    async with serve_in_background(s) as gw:
        # A WebSocket opened first has its timer armed first: were the timer left running
        # after the handshake, it would fire before the half-sent heads' timers below.
        ws = await Client.connect(gw.url)

        silent = await RawSocket.open(gw.port)  # connects, sends nothing
        half = await RawSocket.open(gw.port)
        half.send(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        keep_alive = await RawSocket.open(gw.port)  # one full request, then half of another
        keep_alive.send(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode())
        assert (await keep_alive.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        keep_alive.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")

        for raw in (silent, half, keep_alive):
            assert (await raw.reader.read()).endswith(b"") and raw.reader.at_eof()
            raw.close()
        assert transport_closes(gw, "handshake_timeout") == 3

        await (await ws.ws.ping())  # the WebSocket opened first is still up
        await ws.close()


# -- the Host rule on plain HTTP -----------------------------------------------------------------


async def test_http_routes_refuse_a_rebound_host(tmp_path: Path) -> None:
    s = settings(tmp_path, web_root=Settings().web_root, allowed_hosts=frozenset({"gw.internal"}))
    async with serve_in_background(s) as gw:
        for path in ("/metrics", "/healthz", "/"):
            assert await http_status(gw.port, path, Host=f"attacker.example:{gw.port}") == 403
            assert await http_status(gw.port, path) == 200
            assert await http_status(gw.port, path, Host="gw.internal") == 200


async def test_a_token_passes_the_host_rule(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path, tokens={TOKEN: "alice"})) as gw:
        host = "gateway.example.com"
        assert await http_status(gw.port, "/metrics", Host=host) == 403
        bearer = f"Bearer {TOKEN}"
        assert await http_status(gw.port, "/metrics", Host=host, Authorization=bearer) == 200


def test_metrics_need_a_token_off_loopback() -> None:
    s = Settings(host="10.0.0.5", tokens={TOKEN: "alice"}, web_root=None)

    def verdict(path: str, **headers: str) -> int:
        return check_http(Headers(headers), QueryParams(""), path, s).status

    assert verdict("/metrics", host="10.0.0.5:8000") == 401
    assert verdict("/metrics", host="10.0.0.5:8000", authorization=f"Bearer {TOKEN}") == 200
    assert verdict("/healthz", host="10.0.0.5:8000") == 200


# -- the drain -----------------------------------------------------------------------------------


async def test_healthz_answers_503_while_draining(tmp_path: Path) -> None:
    s = Settings(
        port=0, agent_config=demo_config(tmp_path, 200), web_root=None, shutdown_deadline=60
    )
    async with serve_in_background(s) as gw:
        client = await Client.connect(gw.url)
        rid = await client.start("What is 17*23+4?", task_id="long")
        await client.reply(rid, Accepted)
        assert await http_status(gw.port, "/healthz") == 200
        gw.server.should_exit = True  # what SIGTERM does
        await client.until(lambda: any(isinstance(f, Closing) for f in client.others))

        # The task still runs: the gateway is draining, still listening, and says so.
        assert await http_status(gw.port, "/healthz") == 503
        assert await handshake_status(gw.port, {}) == 503

        await client.send(Cancel(id="c", task_id="long"))  # lets the drain end early
        await client.until_finished(["long"])


# -- the event-loop lag metric -------------------------------------------------------------------


async def test_the_event_loop_lag_is_exposed_and_sampled(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        raw = await RawSocket.open(gw.port)
        raw.send(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode())
        head = await raw.reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await raw.reader.readexactly(length)
        raw.close()
        assert b"ospark_event_loop_lag_seconds_bucket" in body
        assert b'ospark_transport_closes_total{reason="ping_flood"} 0.0' in body

    class Recorder(Histogram):
        seen = asyncio.Event()

        def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
            super().observe(amount, exemplar)
            self.seen.set()

    lag = Recorder("lag", "test", registry=CollectorRegistry())
    sampler = asyncio.create_task(sample_loop_lag(lag, interval=0.01))
    await Recorder.seen.wait()
    sampler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sampler
