"""A real ``ospark serve`` process on an ephemeral port, its stderr collected (tests, soak)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    port: int
    banner: str
    stderr: list[str] = field(default_factory=list)
    returncode: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def log_lines(self) -> list[dict[str, Any]]:
        """Every stderr line, each parsed as the JSON object it must be."""
        return [json.loads(line) for line in self.stderr if line.strip()]


@contextlib.asynccontextmanager
async def ospark_serve(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[ServeProcess]:
    """Run ``ospark serve --port 0 *args``; on exit send SIGTERM and wait for the exit code."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []

    async def collect(stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    collector = asyncio.create_task(collect(proc.stderr))
    banner = (await proc.stdout.readline()).decode()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
    if found is None:
        await proc.wait()
        await collector
        raise AssertionError(f"no banner (exit {proc.returncode}): {banner!r} {lines}")
    server = ServeProcess(proc, int(found.group(1)), banner, lines)
    try:
        yield server
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        server.returncode = await proc.wait()
        await collector
