"""The code tool: run Python or a shell command in a sandbox (see :mod:`gateway.tools.sandbox`).

``python -m gateway.tools.code`` serves two tools over stdio:

- ``run_python_code(code_block)``: run a Python program in the sandbox;
- ``run_command(command)``: run a shell command there.

Both share one scratch directory (``/scratch``, the working directory) for the life of the
server, that is for one task: a file written by one call is there for the next. The result
starts with ``exit code N`` and carries stdout and stderr, each cut at
``OSPARK_CODE_MAX_OUTPUT_CHARS`` with a note. A run killed at its time limit is a tool error
carrying what it printed; a program that fails (an exception, a non-zero exit) is a normal result
the model can read. Cancelling the request kills the sandboxed process group.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from mcp.server.mcpserver import MCPServer

from ._common import ToolError
from .sandbox import RunOutput, Sandbox, make_sandbox

MAX_CODE_CHARS = 200_000


class _State:
    sandbox: Sandbox | None = None


_state = _State()


def _sandbox() -> Sandbox:
    if _state.sandbox is None:
        _state.sandbox = make_sandbox()
    return _state.sandbox


@contextlib.asynccontextmanager
async def _lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if _state.sandbox is not None:
            sandbox, _state.sandbox = _state.sandbox, None
            await sandbox.aclose()


server: MCPServer[None] = MCPServer(
    "code",
    instructions="Run Python or shell commands in a sandbox with no network access.",
    log_level="WARNING",
    lifespan=_lifespan,
)


def _result(output: RunOutput) -> str:
    if output.exit_code is None:
        raise ToolError(output.render())
    return output.render()


def _check(text: str, what: str) -> None:
    if not text.strip():
        raise ToolError(f"{what} is empty")
    if len(text) > MAX_CODE_CHARS:
        raise ToolError(f"{what} is longer than {MAX_CODE_CHARS:,} characters")


@server.tool()
async def run_python_code(code_block: str) -> str:
    """Run a Python 3 program in a sandbox with no network access and return its exit code,
    stdout and stderr. Print what you want to see. The working directory /scratch keeps files
    between calls of this task; /input (if present) holds the task's files, read-only. Limits:
    time, memory, processes and output size (long output is truncated with a note)."""
    _check(code_block, "code_block")
    return _result(await _sandbox().run_python(code_block))


@server.tool()
async def run_command(command: str) -> str:
    """Run a shell command (bash) in the same sandbox as run_python_code, in /scratch, and
    return its exit code, stdout and stderr. No network access: installing packages from the
    internet does not work."""
    _check(command, "command")
    return _result(await _sandbox().run_shell(command))


def main() -> None:
    server.run("stdio")


if __name__ == "__main__":
    main()
