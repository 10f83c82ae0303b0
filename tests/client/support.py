"""Helpers of the client tests: a real gateway on the demo model (held or paced), a TCP proxy
that cuts and restores the client's connection. (``demo_gateway`` and friends are also used by
the web demo's tests.)"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from gateway.client import GatewayClient
from gateway.server import RunningGateway, Settings, serve_in_background
from gateway.testing.held import Held
from protocol import LlmResponse

ROOT = Path(__file__).resolve().parents[2]
DEMO_YAML = ROOT / "gateway" / "configs" / "demo.yaml"
QUESTION = "What is 17*23+4?"


def demo_config(directory: Path, pace_ms: float) -> str:
    """The built-in demo config (tools and a sub-agent) streaming at ``pace_ms`` per word."""
    text = re.sub(r"(?m)^(\s*pace_ms:).*$", rf"\g<1> {pace_ms}", DEMO_YAML.read_text())
    path = directory / f"demo-{pace_ms}.yaml"
    path.write_text(text)
    return str(path)


@asynccontextmanager
async def demo_gateway(
    directory: Path, pace_ms: float = 0, **kw: object
) -> AsyncIterator[RunningGateway]:
    """A gateway on an ephemeral port running the real agent stack on the demo model."""
    settings = Settings(port=0, agent_config=demo_config(directory, pace_ms), **kw)  # type: ignore[arg-type]
    async with serve_in_background(settings) as gw:
        yield gw


@asynccontextmanager
async def held_gateway(held: Held, **kw: Any) -> AsyncIterator[RunningGateway]:
    """A gateway on an ephemeral port running the real agent stack on the demo model (no
    pacing), every model call going through ``held``'s gates."""
    async with serve_in_background(Settings(port=0, **kw), runner_factory=held.runner()) as gw:
        yield gw


def drop_connections(gw: RunningGateway, code: int = 4000) -> int:
    """Close every client socket from the server side (a retryable close, like a slow
    consumer's); returns how many were closed."""
    connections = list(gw.gateway.connections)
    for conn in connections:
        conn.request_close(code, "closed by the test")
    return len(connections)


async def transcript(url: str, question: str = QUESTION) -> str:
    """Every streamed delta of an uninterrupted run of ``question``, in order."""
    async with GatewayClient(url) as client:
        task = await client.start(question)
        return "".join([e.delta async for e in task.events() if isinstance(e, LlmResponse)])


class Proxy:
    """A TCP proxy in front of a gateway. :meth:`cut` drops every connection through it and
    makes new ones wait (accepted, not forwarded) until :meth:`restore`: a client that is away
    for exactly as long as the test wants."""

    def __init__(self, gw: RunningGateway) -> None:
        self.upstream = (gw.host, gw.port)
        """Where new connections are forwarded (a test may point it elsewhere)."""
        self._open = asyncio.Event()
        self._open.set()
        self._links: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.accepted = 0
        self._counted = asyncio.Condition()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        self._open.clear()
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def restore(self) -> None:
        self._open.set()

    async def connections(self, count: int) -> None:
        """Wait until ``count`` connections in all were accepted."""
        async with self._counted:
            await self._counted.wait_for(lambda: self.accepted >= count)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._counted:
            self.accepted += 1
            self._counted.notify_all()
        self._links.add(writer)
        await self._open.wait()
        if writer not in self._links:  # cut while it waited
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._links.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(src, dst))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.transport.abort()
            self._links.discard(dst)
