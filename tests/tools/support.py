"""Helpers for the tool tests: a tool server as a real MCP stdio subprocess, a fake HTTP service
on 127.0.0.1, and waiting on the process table."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
import uvicorn
from mcp import Client, StdioServerParameters
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@asynccontextmanager
async def tool_client(
    name: str, env: dict[str, str] | None = None, cwd: str | Path | None = None
) -> AsyncIterator[Client]:
    """An MCP client of ``python -m gateway.tools.<name>`` running as a subprocess."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", f"gateway.tools.{name}"],
        env=env or {},
        cwd=str(cwd) if cwd is not None else None,
    )
    async with Client(params) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> tuple[str, bool]:
    """(text, is_error) of one tool call."""
    result = await client.call_tool(tool, arguments, read_timeout_seconds=120)
    text = "\n".join(b.text for b in result.content if isinstance(b, types.TextContent))
    return text, bool(result.is_error)


@dataclass
class FakeService:
    """A scripted HTTP service: ``routes`` maps a path prefix to a handler; requests are kept."""

    routes: dict[str, Callable[[Request, bytes], Response]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query
        self.requests.append((request.method, path, dict(request.headers), body))
        for prefix, handler in sorted(self.routes.items(), key=lambda kv: -len(kv[0])):
            if path.startswith(prefix):
                return handler(request, body)
        return Response("not found", status_code=404)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


@asynccontextmanager
async def fake_service() -> AsyncIterator[FakeService]:
    fake = FakeService()
    app = Starlette(
        routes=[Route("/{path:path}", fake.handle, methods=["GET", "POST"])],
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    fake.port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", lifespan="off", http="h11", ws="none")
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield fake
    finally:
        server.should_exit = True
        await task
        sock.close()


def commands_with(marker: str) -> dict[int, str]:
    """The running processes whose command line contains ``marker``: pid -> command line."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if marker in cmdline:
            found[int(entry)] = cmdline
    return found


def processes_with(marker: str) -> list[int]:
    """The pids whose command line contains ``marker``."""
    return sorted(commands_with(marker))


async def wait_exit(pid: int, timeout_s: float = 30.0) -> None:
    """Wait for a process to exit, on its pidfd (an event from the kernel, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    loop.add_reader(fd, gone.set)
    try:
        async with asyncio.timeout(timeout_s):
            await gone.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def wait_all_exit(marker: str) -> None:
    """Wait until no process with ``marker`` in its command line is left."""
    for pid in processes_with(marker):
        await wait_exit(pid)
    assert processes_with(marker) == [], marker


async def read_fifo_line(path: Path, timeout_s: float = 60.0) -> str:
    """Wait for a line written to the named pipe ``path`` (by a sandboxed program)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    data = bytearray()
    done = asyncio.Event()

    def readable() -> None:
        chunk = os.read(fd, 4096)
        data.extend(chunk)
        if not chunk or b"\n" in data:
            done.set()

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(timeout_s):
            await done.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return data.decode().strip()
