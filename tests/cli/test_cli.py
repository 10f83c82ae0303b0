"""``ospark run/status/cancel`` as a user runs them: subprocesses against a real gateway
(in-process, ephemeral port, demo model); the live view through a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.server import RunningGateway
from tests.client.support import QUESTION, ROOT, demo_gateway

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
CLI = [sys.executable, "-m", "gateway.cli"]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with demo_gateway(tmp_path, pace_ms=25) as gw:
        yield gw


async def ospark(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_run_json(gw: RunningGateway) -> None:
    code, out, err = await ospark("run", QUESTION, "--json", "--url", gw.url)
    assert code == 0, err
    frames = [json.loads(line) for line in out.splitlines()]
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    kinds = [f["event"]["kind"] for f in frames]
    assert kinds[0] == "task_started" and "tool_call_start" in kinds
    assert frames[-1]["event"] == {**frames[-1]["event"], "kind": "task_completed"}
    assert frames[-1]["event"]["final_answer"] == "395"
    assert len({f["task_id"] for f in frames}) == 1


async def test_sigint_cancels_and_waits_for_the_terminal_event(gw: RunningGateway) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", QUESTION, "--json", "--url", gw.url, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    first = json.loads(await proc.stdout.readline())
    assert first["event"]["kind"] == "task_started"
    proc.send_signal(signal.SIGINT)
    rest, err = await proc.communicate()
    last = json.loads(rest.splitlines()[-1])
    assert last["event"]["kind"] == "task_cancelled", rest
    assert proc.returncode == 130
    assert "cancelling" in err.decode()
    code, out, _ = await ospark("status", first["task_id"], "--json", "--url", gw.url)
    assert code == 0 and json.loads(out)["state"] == "cancelled"


async def test_status_and_cancel(gw: RunningGateway) -> None:
    code, out, _ = await ospark("run", QUESTION, "--json", "--task-id", "cli-1", "--url", gw.url)
    assert code == 0
    code, out, _ = await ospark("status", "--url", gw.url)
    assert code == 0 and "cli-1" in out and "completed" in out
    code, out, _ = await ospark("cancel", "cli-1", "--url", gw.url)
    assert (code, out.strip()) == (0, "cli-1: already terminal")
    code, out, _ = await ospark("cancel", "nope", "--url", gw.url)
    assert (code, out.strip()) == (1, "nope: unknown")


async def test_unreachable_gateway() -> None:
    code, out, err = await ospark("run", QUESTION, "--url", "ws://127.0.0.1:9/ws")
    assert code == 2 and "ws://127.0.0.1:9/ws" in err and not out


class Terminal:
    """A child process on a real pseudo-terminal (120x40) that it has as controlling tty,
    so a Ctrl-C typed into the terminal becomes its SIGINT."""

    def __init__(self) -> None:
        self.raw = ""
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self.proc: Any = None
        self.master = -1

    async def spawn(self, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        become_tty_owner = (
            "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
            "os.execv(sys.executable, [sys.executable, '-m', 'gateway.cli', *sys.argv[1:]])"
        )
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", become_tty_owner, *args,
            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:  # the child closed the terminal
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.closed.set()
        self.raw += data.decode(errors="replace")
        self._changed.set()

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw)

    async def expect(self, needle: str) -> None:
        while needle not in self.text:
            assert not self.closed.is_set(), f"{needle!r} never appeared in:\n{self.text}"
            self._changed.clear()
            await self._changed.wait()

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    async def wait(self) -> int:
        await self.closed.wait()
        code: int = await self.proc.wait()
        return code


async def test_live_view_in_a_terminal(gw: RunningGateway) -> None:
    term = Terminal()
    await term.spawn("run", QUESTION, "--url", gw.url)
    assert await term.wait() == 0
    text = term.text
    assert SPINNER & set(term.raw), "no spinner frame was drawn"
    assert "offline demo model" in text
    assert '✓ calculator.calculate({"expression": "17*23+4"}) → 395' in text
    assert "final answer" in text and "│ 395" in text
    assert "■ completed" in text
    assert re.search(r"\d+\.\ds", text)  # elapsed time


async def test_ctrl_c_in_the_live_view(gw: RunningGateway) -> None:
    term = Terminal()
    await term.spawn("run", QUESTION, "--url", gw.url)
    await term.expect("tools_listed")
    term.type(b"\x03")
    assert await term.wait() == 130
    assert "cancelled: cancelled by client" in term.text
    assert "final answer" not in term.text
