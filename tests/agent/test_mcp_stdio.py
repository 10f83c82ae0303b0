"""Tools from a real MCP stdio server subprocess: results, errors, timeouts and cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.agent import Orchestrator, ToolEnd
from gateway.testing import Stream, fake_llm_server, openai_stream

from .helpers import Recorder, provider_config

SERVER = str(Path(__file__).with_name("mcp_server.py"))


@asynccontextmanager
async def probe() -> AsyncIterator[tuple[int, asyncio.Queue[str]]]:
    """A local socket the slow tool reports to; lines land in the queue."""
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


def stdio_config(base_url: str, port: int, timeout_s: float = 20.0):  # type: ignore[no-untyped-def]
    config = provider_config("openai", base_url)
    tool = {
        "name": "testsrv",
        "command": sys.executable,
        "args": [SERVER],
        "env": {"PROBE_PORT": str(port)},
        "timeout_s": timeout_s,
    }
    return config.with_overrides({"tools": [tool], "main_agent.tool_config": ["testsrv"]})


async def test_fast_and_failing_tools() -> None:
    calls = [
        ("c1", "testsrv__echo", json.dumps({"text": "hi"})),
        ("c2", "testsrv__fail", json.dumps({"reason": "on purpose"})),
    ]
    async with fake_llm_server() as llm, probe() as (port, _):
        llm.add(
            Stream(openai_stream(tool_calls=calls)),
            Stream(openai_stream(text="done")),
            Stream(openai_stream(text="\\boxed{hi}")),
        )
        rec = Recorder()
        config = stdio_config(llm.openai_url, port)
        _, answer = await Orchestrator(config, sink=rec).run_main_agent("echo hi")
    assert answer == "hi"
    echo, fail = rec.of(ToolEnd)
    assert (echo.server, echo.tool, echo.result, echo.error) == (
        "testsrv",
        "echo",
        "echo: hi",
        None,
    )
    assert fail.result is None and "the tool failed: on purpose" in (fail.error or "")
    tools = {t["function"]["name"] for t in llm.requests[0]["tools"]}
    assert tools == {
        "testsrv__echo",
        "testsrv__slow",
        "testsrv__fail",
        "testsrv__env",
        "testsrv__read_file",
        "agents__agent-worker",
    }
    results = [m for m in llm.requests[1]["messages"] if m["role"] == "tool"]
    assert results[0]["content"] == "echo: hi"
    assert results[1]["content"].startswith("Error: ") and "on purpose" in results[1]["content"]


async def test_tool_timeout_cancels_the_call_on_the_server() -> None:
    slow = ("c1", "testsrv__slow", json.dumps({"seconds": 60}))
    async with fake_llm_server() as llm, probe() as (port, lines):
        llm.add(
            Stream(openai_stream(tool_calls=[slow])),
            Stream(openai_stream(text="it timed out")),
            Stream(openai_stream(text="\\boxed{timeout}")),
        )
        rec = Recorder()
        config = stdio_config(llm.openai_url, port, timeout_s=0.5)
        _, answer = await Orchestrator(config, sink=rec).run_main_agent("be slow")
        assert (await asyncio.wait_for(lines.get(), 10)).startswith("started")
        # the connection stayed open, so this is the notifications/cancelled of the timeout
        assert await asyncio.wait_for(lines.get(), 10) == "cancelled"
    assert answer == "timeout"
    (end,) = rec.of(ToolEnd)
    assert end.error == "tool call timed out after 0.5s"


async def test_cancel_mid_tool_call() -> None:
    slow = ("c1", "testsrv__slow", json.dumps({"seconds": 60}))
    async with fake_llm_server() as llm, probe() as (port, lines):
        llm.add(Stream(openai_stream(tool_calls=[slow])))
        rec = Recorder()
        config = stdio_config(llm.openai_url, port)
        task = asyncio.create_task(Orchestrator(config, sink=rec).run_main_agent("be slow"))
        started = await asyncio.wait_for(lines.get(), 20)
        pid = int(started.split()[1])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.wait_for(lines.get(), 10) == "cancelled"
        leftovers = [t for t in asyncio.all_tasks() if "mcp" in repr(t.get_coro())]
        assert not leftovers  # no MCP reader/writer task outlives the run
    (end,) = rec.of(ToolEnd)
    assert end.error == "cancelled"
    with pytest.raises(ProcessLookupError):  # the server subprocess is gone and reaped
        os.kill(pid, 0)


async def test_stdio_servers_are_told_the_tasks_files(tmp_path: Path) -> None:
    """The task's files reach its tool servers: their paths, and their directory among the
    reading tool's roots (added to the roots the server already had)."""
    data = tmp_path / "data.txt"
    data.write_text("hello")
    calls = [
        ("c1", "testsrv__env", json.dumps({"name": "OSPARK_TASK_FILES"})),
        ("c2", "testsrv__env", json.dumps({"name": "OSPARK_READING_ROOTS"})),
    ]
    async with fake_llm_server() as llm, probe() as (port, _):
        llm.add(
            Stream(openai_stream(tool_calls=calls)),
            Stream(openai_stream(text="done")),
            Stream(openai_stream(text="\\boxed{ok}")),
        )
        rec = Recorder()
        config = stdio_config(llm.openai_url, port)
        tool = {**config.raw["tools"][0]}
        tool["env"] = {**tool["env"], "OSPARK_READING_ROOTS": "/srv/docs"}
        config = config.with_overrides({"tools": [tool]})
        await Orchestrator(config, sink=rec).run_main_agent("x", str(data))
    files, roots = (end.result for end in rec.of(ToolEnd))
    assert files == str(data)
    assert roots == os.pathsep.join(["/srv/docs", str(tmp_path)])
