"""No stdio tool server outlives its task: a cancelled task ends at once while its server shuts
down in the background, and the processes are counted (in /proc) after many cancels and after
the gateway shuts down, in-process and as a real ``ospark serve`` stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.agent import stop_tool_servers
from gateway.server import Settings, serve_in_background
from gateway.testing import FrameClient, Reply, Stream, fake_llm_server, openai_stream
from protocol import Accepted, EventFrame
from protocol.events import TaskCancelled, ToolCallStart
from tests.server.serve_process import ospark_serve

SERVER = str(Path(__file__).with_name("mcp_server.py"))
MARKER = "OSPARK_TEST_TOOL_MARKER"


def respond(request: dict[str, Any]) -> Reply:
    """Every task calls the slow tool at once; it never gets a result (each is cancelled)."""
    slow = ("c1", "testsrv__slow", json.dumps({"seconds": 120}))
    return Stream(openai_stream(tool_calls=[slow]))


def agent_config(tmp_path: Path, base_url: str, marker: str, probe_port: int) -> str:
    path = tmp_path / "agent.yaml"
    tool = {
        "name": "testsrv",
        "command": sys.executable,
        "args": [SERVER],
        "env": {MARKER: marker, "PROBE_PORT": str(probe_port)},
        "timeout_s": 300,
    }
    llm = {
        "provider": "openai",
        "model_name": "fake-model",
        "base_url": base_url,
        "api_key": "test-key",
        "max_retries": 0,
    }
    path.write_text(
        json.dumps(
            {
                "llm": llm,
                "tools": [tool],
                "main_agent": {"tool_config": ["testsrv"], "max_turns": 2},
                "sub_agents": {},
            }
        )
    )
    return str(path)


def marked(marker: str) -> list[int]:
    """The live processes started with ``MARKER=marker`` in their environment."""
    entry = f"{MARKER}={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if entry in environ:
            found.append(int(name))
    return sorted(found)


def children(pid: int) -> dict[int, str]:
    """The child processes of ``pid``: child pid -> state (``Z`` for a zombie)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(name)] = fields[0]
    return found


def zombies(pid: int) -> list[int]:
    return sorted(child for child, state in children(pid).items() if state == "Z")


@asynccontextmanager
async def probe() -> AsyncIterator[tuple[int, asyncio.Queue[str]]]:
    """The socket the slow tool reports to (``started PID``, ``cancelled``)."""
    lines: asyncio.Queue[str] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for line in reader:
            lines.put_nowait(line.decode().strip())
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], lines
    finally:
        server.close()
        await server.wait_closed()


def tool_started(client: FrameClient, task_id: str) -> bool:
    return any(isinstance(f.event, ToolCallStart) for f in client.events[task_id])


def cancelled(client: FrameClient, task_id: str) -> bool:
    events: list[EventFrame] = client.events[task_id]
    return bool(events) and isinstance(events[-1].event, TaskCancelled)


async def started_pids(lines: asyncio.Queue[str], count: int) -> set[int]:
    """The pids of ``count`` servers whose slow tool has started."""
    pids = set()
    while len(pids) < count:
        line = await asyncio.wait_for(lines.get(), 60)
        if line.startswith("started "):
            pids.add(int(line.split()[1]))
    return pids


async def test_many_cancels_leave_no_tool_server_behind(tmp_path: Path) -> None:
    """Tasks cancelled at any point (while their server starts, at the tool call, during the
    call) end with ``task_cancelled``; every server process then exits and is reaped while the
    gateway runs on, and every call that reached its server was cancelled there."""
    marker = uuid.uuid4().hex
    me = os.getpid()
    zombies_before = zombies(me)
    async with fake_llm_server(respond=respond) as llm, probe() as (port, lines):
        config = agent_config(tmp_path, llm.openai_url, marker, port)
        settings = Settings(port=0, agent_config=config, shutdown_deadline=0.0)
        async with serve_in_background(settings) as gw, await FrameClient.connect(gw.url) as client:
            ids = [f"t{i}" for i in range(9)]
            for i, task_id in enumerate(ids):
                await client.reply(await client.start("go", task_id=task_id), Accepted)
                if i % 3 >= 1:
                    await client.until(lambda t=task_id: tool_started(client, t))
                if i % 3 == 2:  # a call reached a server (most likely this task's)
                    while not (await asyncio.wait_for(lines.get(), 60)).startswith("started"):
                        pass
                await client.cancel(task_id)
                await client.until(lambda t=task_id: cancelled(client, t))
            # Every server is shutting down or has stopped; waiting for them ends them all.
            await stop_tool_servers()
            assert marked(marker) == []
            assert zombies(me) == zombies_before
            got = [lines.get_nowait() for _ in range(lines.qsize())]
            while got.count("cancelled") < sum(line.startswith("started") for line in got):
                got.append(await asyncio.wait_for(lines.get(), 30))
            # The gateway still serves: the next task starts a server of its own.
            await client.reply(await client.start("go", task_id="last"), Accepted)
            await started_pids(lines, 1)
            assert len(marked(marker)) == 1
    # Shut down during a tool call: the server was stopped and reaped with the gateway.
    assert marked(marker) == []
    assert zombies(me) == zombies_before


async def test_no_tool_server_outlives_a_gateway_stopped_right_after_cancels(
    tmp_path: Path,
) -> None:
    """A real gateway process: tasks in a tool call each have a server process (its children);
    cancel them all and send SIGTERM at once: when the gateway exits, none is left, orphaned
    or not."""
    marker = uuid.uuid4().hex
    async with fake_llm_server(respond=respond) as llm, probe() as (port, lines):
        config = agent_config(tmp_path, llm.openai_url, marker, port)
        async with ospark_serve("--config", config, "--shutdown-deadline", "0") as gw:
            client = await FrameClient.connect(gw.url)
            async with client:
                ids = [f"t{i}" for i in range(3)]
                for task_id in ids:
                    await client.reply(await client.start("go", task_id=task_id), Accepted)
                pids = await started_pids(lines, len(ids))
                servers = {pid for pid in children(gw.proc.pid) if pid in pids}
                assert servers == pids and set(marked(marker)) == pids
                for task_id in ids:
                    await client.cancel(task_id)
                gw.proc.send_signal(signal.SIGTERM)
                await client.until(lambda: client.finished(ids))
        assert gw.returncode == 0
        assert marked(marker) == []
