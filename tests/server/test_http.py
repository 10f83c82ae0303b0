"""`/healthz`, `/metrics`, and the server's WebSocket heartbeat."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import urllib.request
from pathlib import Path

from gateway.server import Settings, serve_in_background
from tests.server.helpers import Client, demo_config


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


async def test_healthz_and_metrics(tmp_path: Path) -> None:
    async with serve_in_background(
        Settings(port=0, agent_config=demo_config(tmp_path, 0), web_root=None)
    ) as gw:
        client = await Client.connect(gw.url)
        await client.start("What is 17*23+4?", task_id="m1")
        await client.until_finished(["m1"])
        status, body = await asyncio.to_thread(get, gw.http_url + "/healthz")
        assert status == 200 and '"status":"ok"' in body and '"connections":1' in body
        status, text = await asyncio.to_thread(get, gw.http_url + "/metrics")
        assert status == 200
        for name in (
            "ospark_connections 1.0",
            'ospark_tasks_finished_total{state="completed"} 1.0',
            "ospark_events_sent_total",
            "ospark_frames_sent_total",
            "ospark_bytes_sent_total",
            "ospark_batch_size_bucket",
            "ospark_outbox_depth_bucket",
            "ospark_cancel_latency_seconds_bucket",
            "ospark_llm_time_to_first_token_seconds_count 1.0",
            'ospark_tasks{state="running"} 0.0',
        ):
            assert name in text, name
        events = len(client.events["m1"])
        sent = next(
            line for line in text.splitlines() if line.startswith("ospark_events_sent_total")
        )
        assert float(sent.split()[-1]) == events
        await client.close()


async def test_a_client_that_never_answers_pings_is_dropped(tmp_path: Path) -> None:
    s = Settings(port=0, agent_config=demo_config(tmp_path, 0), web_root=None)
    s.connection.heartbeat_interval = 0.2
    s.heartbeat_timeout = 0.3
    async with serve_in_background(s) as gw:
        # A raw WebSocket handshake, then silence: no pong is ever sent.
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        assert b"101" in await reader.readuntil(b"\r\n\r\n")
        opcodes = []
        while True:  # read frames until the server closes
            head = await reader.readexactly(2)
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(length)
            opcodes.append(opcode)
            if opcode == 0x8:
                break
        assert 0x9 in opcodes  # the server pinged
        assert struct.unpack("!H", payload[:2])[0] == 1011  # then gave up: keepalive timeout
        writer.close()


async def test_metrics_count_cancels_and_errors(tmp_path: Path) -> None:
    from protocol import Cancel, ErrorFrame

    async with serve_in_background(
        Settings(port=0, agent_config=demo_config(tmp_path, 50), web_root=None)
    ) as gw:
        client = await Client.connect(gw.url)
        await client.start("What is 17*23+4?", task_id="c1")
        await client.until(lambda: len(client.events["c1"]) >= 3)
        await client.send(Cancel(id="x", task_id="c1"))
        await client.until_finished(["c1"])
        await client.ws.send('{"type":"launch","id":"bad"}')
        await client.reply("bad", ErrorFrame)
        _, text = await asyncio.to_thread(get, gw.http_url + "/metrics")
        assert 'ospark_tasks_finished_total{state="cancelled"} 1.0' in text
        assert "ospark_cancel_latency_seconds_count 1.0" in text
        assert 'ospark_errors_sent_total{code="unknown_type"} 1.0' in text
        await client.close()
