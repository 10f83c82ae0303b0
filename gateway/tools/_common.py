"""What the tool servers share: settings from the environment, output caps, bounded processes.

Cancellation: :func:`run_bounded` runs its child in a new session (its own process group). On
every way out — the deadline, the MCP request being cancelled, an error — the whole group is
killed with ``SIGKILL`` and reaped before the call returns or the cancellation propagates.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import ByteReceiveStream
from mcp.server.mcpserver.exceptions import ToolError

__all__ = [
    "Finished",
    "ToolError",
    "env_float",
    "env_int",
    "env_str",
    "kill_group",
    "run_bounded",
    "truncate",
]


def env_str(name: str, default: str = "") -> str:
    """An environment setting; empty means unset (configs pass ``${oc.env:X,''}``)."""
    return os.environ.get(name, "").strip() or default


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer setting; a bad value is a clear tool error naming the variable."""
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ToolError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ToolError(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, minimum: float = 0.001) -> float:
    """A number setting; a bad value is a clear tool error naming the variable."""
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ToolError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:  # also refuses nan
        raise ToolError(f"{name} must be at least {minimum:g}, got {raw}")
    return value


def truncate(text: str, limit: int, what: str = "output", dropped: int = 0) -> str:
    """``text`` cut to ``limit`` characters, with a note saying how much was left out
    (``dropped``: what was already thrown away before, counted too)."""
    more = max(0, len(text) - limit) + dropped
    if not more:
        return text
    note = f"[{what} truncated: {more:,} more characters not shown; limit {limit:,}]"
    return f"{text[:limit]}\n{note}"


@dataclass(frozen=True, slots=True)
class Finished:
    """How a bounded child process ended. ``returncode`` is ``None`` when it was killed at
    the deadline; ``*_dropped`` count the bytes read past the cap and thrown away."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


class _Capped:
    """Keeps the first ``limit`` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self.dropped = 0

    async def drain(self, stream: ByteReceiveStream) -> None:
        # Reading on past the cap keeps the child from blocking on a full pipe.
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
            while True:
                chunk = await stream.receive(65536)
                room = self.limit - self.kept
                if room > 0:
                    self.chunks.append(chunk[:room])
                    self.kept += min(room, len(chunk))
                self.dropped += max(0, len(chunk) - max(room, 0))

    def data(self) -> bytes:
        return b"".join(self.chunks)


def kill_group(pgid: int) -> None:
    """``SIGKILL`` to a process group, if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_bounded(
    argv: Sequence[str],
    *,
    timeout_s: float,
    max_output_bytes: int,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    user: int | None = None,
    group: int | None = None,
) -> Finished:
    """Run ``argv`` with no stdin, capturing at most ``max_output_bytes`` of stdout and of
    stderr, killed with its whole process group at ``timeout_s`` or when the caller is
    cancelled. ``user``/``group`` switch identity before ``exec`` (used when running as root)."""
    process = await anyio.open_process(
        list(argv),
        stdin=None,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
        user=user,
        group=group,
        extra_groups=[] if group is not None else None,
    )
    out, err = _Capped(max_output_bytes), _Capped(max_output_bytes)
    returncode: int | None = None

    async def wait() -> None:
        nonlocal returncode
        returncode = await process.wait()
        # A child it left in the background must not hold the pipes open until the deadline.
        kill_group(process.pid)

    try:
        with anyio.move_on_after(timeout_s):
            async with anyio.create_task_group() as tg:
                assert process.stdout is not None and process.stderr is not None
                tg.start_soon(out.drain, process.stdout)
                tg.start_soon(err.drain, process.stderr)
                tg.start_soon(wait)
    finally:
        kill_group(process.pid)  # background children too, whatever happened
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()
    return Finished(returncode, out.data(), err.data(), out.dropped, err.dropped)
