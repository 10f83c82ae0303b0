"""Helpers shared by the client, CLI and web demo tests: a real gateway on the demo model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.client import GatewayClient
from gateway.server import RunningGateway, Settings, serve_in_background
from gateway.testing import write_demo_config
from protocol import LlmResponse

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is 17*23+4?"


@asynccontextmanager
async def demo_gateway(
    directory: Path, pace_ms: float = 0, **kw: object
) -> AsyncIterator[RunningGateway]:
    """A gateway on an ephemeral port running the real agent stack on the demo model."""
    settings = Settings(port=0, agent_config=write_demo_config(directory, pace_ms), **kw)  # type: ignore[arg-type]
    async with serve_in_background(settings) as gw:
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
