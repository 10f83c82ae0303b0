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

from gateway.agent import Orchestrator, ToolEnd, stop_tool_servers
from gateway.agent.tools import ToolManager
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
        # The server's shutdown went on in the background; waiting for it ends it.
        await stop_tool_servers()
        leftovers = [t for t in asyncio.all_tasks() if "mcp" in repr(t.get_coro())]
        assert not leftovers  # no MCP reader/writer task outlives the shutdown
    (end,) = rec.of(ToolEnd)
    assert end.error == "cancelled"
    with pytest.raises(ProcessLookupError):  # the server subprocess is gone and reaped
        os.kill(pid, 0)


async def test_the_server_is_told_to_cancel_while_it_still_runs() -> None:
    """``notifications/cancelled`` itself stops the call: the tool reports its cancellation
    while the manager (and so the server's stdin) is still open."""
    async with probe() as (port, lines):
        config = stdio_config("http://127.0.0.1:9/v1", port).tools
        tools = ToolManager(config)
        try:
            call = asyncio.create_task(tools.call_tool("testsrv", "slow", {"seconds": 60}))
            assert (await asyncio.wait_for(lines.get(), 20)).startswith("started")
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await asyncio.wait_for(lines.get(), 10) == "cancelled"
            assert await tools.call_tool("testsrv", "echo", {"text": "still here"}) == (
                "echo: still here"
            )
        finally:
            await tools.aclose()


async def test_a_cancelled_run_does_not_wait_for_its_server_to_exit() -> None:
    """The run ends once the call is cancelled; its server, which will not exit before the test
    lets it (stdin closed, SIGTERM ignored), is still alive then, and is stopped and reaped by
    ``stop_tool_servers``."""
    slow = ("c1", "testsrv__slow", json.dumps({"seconds": 60}))
    lines: asyncio.Queue[str] = asyncio.Queue()
    lingering: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for raw in reader:
            line = raw.decode().strip()
            if line == "lingering":
                lingering.append(writer)
            lines.put_nowait(line)
        writer.close()

    probe_server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = probe_server.sockets[0].getsockname()[1]
    try:
        async with fake_llm_server() as llm:
            llm.add(Stream(openai_stream(tool_calls=[slow])))
            config = stdio_config(llm.openai_url, port)
            tool = {**config.raw["tools"][0]}
            tool["env"] = {**tool["env"], "LINGER": "1"}
            config = config.with_overrides({"tools": [tool]})
            task = asyncio.create_task(Orchestrator(config).run_main_agent("be slow"))
            pid = int((await asyncio.wait_for(lines.get(), 20)).split()[1])
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            os.kill(pid, 0)  # alive: the run did not wait for it
            seen = {await asyncio.wait_for(lines.get(), 10) for _ in range(2)}
            assert seen == {"cancelled", "lingering"}  # told to cancel; its stdin is closed
            lingering[0].write(b"go\n")
            assert await stop_tool_servers() == 1
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        for writer in lingering:
            writer.close()
        probe_server.close()
        await probe_server.wait_closed()


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
