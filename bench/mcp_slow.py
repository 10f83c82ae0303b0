"""A stdio MCP server with one slow tool, for the cancel-during-a-tool-call benchmark.

Each call of ``slow`` appends ``started`` to ``$BENCH_PROBE`` and, when it is cancelled,
``cancelled``, so the harness can check the call really stopped.
"""

from __future__ import annotations

import os

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("bench", log_level="WARNING")


def _probe(line: str) -> None:
    path = os.environ.get("BENCH_PROBE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


@server.tool(description="Sleep for a while, then say done.")
async def slow(seconds: float = 60.0) -> str:
    _probe("started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _probe("cancelled")
        raise
    return "done"


if __name__ == "__main__":
    server.run("stdio")
