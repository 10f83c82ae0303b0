"""SIGTERM: every client gets `closing`, then a terminal event for each of its tasks, then
close code 4003; the process exits cleanly."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import websockets

from protocol import Accepted, Closing, TaskCancelled
from tests.server.helpers import Client, demo_config

ROOT = Path(__file__).resolve().parents[2]


async def start_server(tmp_path: Path, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--port",
        "0",
        "--config",
        demo_config(tmp_path, 200),
        *extra,
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    while True:
        line = await proc.stderr.readline()
        assert line, "the server exited before listening"
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "listening":
            return proc, record["url"]


async def test_sigterm_drains_every_client(tmp_path: Path) -> None:
    proc, url = await start_server(tmp_path, "--shutdown-deadline", "0.2")
    try:
        clients = [await Client.connect(url) for _ in range(2)]
        task_ids: dict[Client, list[str]] = {}
        for c in clients:
            rids = [await c.start(f"Research the number {i} please") for i in range(2)]
            task_ids[c] = [(await c.reply(r, Accepted)).task_id for r in rids]
        for c in clients:  # every task is under way
            await c.until(lambda c=c: all(c.events[t] for t in task_ids[c]))
        proc.send_signal(signal.SIGTERM)
        for c in clients:
            try:
                while True:
                    await c.recv()
            except websockets.ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 4003
            closing = [f for f in c.others if isinstance(f, Closing)]
            assert len(closing) == 1 and closing[0].code == 4003
            for t in task_ids[c]:
                final = c.events[t][-1].event
                assert isinstance(final, TaskCancelled), final
                assert final.reason == "server shutdown"
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
