"""A real MCP stdio server for the tests: a fast tool, a slow tool, a failing tool, one that
reads its own environment and one that reads a file.

The slow tool reports to a probe socket (``PROBE_PORT``) when it starts (with this process's
pid) and when it is cancelled, so tests can wait on what the server saw. With ``LINGER`` set,
the server does not exit when its stdin closes: it says ``lingering`` on the probe socket and
waits there until the test answers (or closes the socket), ignoring SIGTERM meanwhile.
"""

from __future__ import annotations

import os
import signal
import socket

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("testsrv", log_level="WARNING")


def _probe(message: str) -> None:
    port = os.environ.get("PROBE_PORT")
    if port:
        with socket.create_connection(("127.0.0.1", int(port))) as conn:
            conn.sendall(f"{message}\n".encode())


@server.tool(description="Echo the text back.")
def echo(text: str) -> str:
    return f"echo: {text}"


@server.tool(description="Sleep for a while, then say done.")
async def slow(seconds: float = 30.0) -> str:
    _probe(f"started {os.getpid()}")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _probe("cancelled")
        raise
    return "done"


@server.tool(description="The value of one of this process's environment variables.")
def env(name: str) -> str:
    return os.environ.get(name, "<unset>")


@server.tool(description="The text of a local file.")
def read_file(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


@server.tool(description="Always fails.")
def fail(reason: str = "boom") -> str:
    raise ToolError(f"the tool failed: {reason}")


def _linger() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.create_connection(("127.0.0.1", int(os.environ["PROBE_PORT"]))) as conn:
        conn.sendall(b"lingering\n")
        conn.recv(16)


if __name__ == "__main__":
    server.run("stdio")
    if os.environ.get("LINGER"):
        _linger()
