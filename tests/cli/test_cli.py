"""``ospark run/status/cancel`` as a user runs them: subprocesses against a real gateway
(in-process, ephemeral port, the demo model held at named points by
:class:`gateway.testing.held.Held` wherever a race would otherwise decide); the live view
through a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import re
import signal
import socket
import struct
import sys
import termios
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from gateway.client import GatewayClient
from gateway.server import RunningGateway, Settings, serve_in_background
from gateway.testing.held import Held
from gateway.tui import TaskView
from protocol import TaskCompleted

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is 17*23+4?"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
CLI = [sys.executable, "-m", "gateway.cli"]


@pytest.fixture
def held() -> Held:
    return Held()


@pytest.fixture
async def gw(held: Held) -> AsyncIterator[RunningGateway]:
    async with serve_in_background(Settings(port=0), runner_factory=held.runner()) as gw:
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
    assert kinds[0] == "task_started" and kinds.count("tool_call_start") == 1
    assert kinds[-1] == "task_completed" and kinds.count("task_completed") == 1
    assert frames[-1]["event"]["final_answer"] == "395"
    assert len({f["task_id"] for f in frames}) == 1


async def test_sigint_cancels_and_waits_for_the_terminal_event(
    gw: RunningGateway, held: Held
) -> None:
    held.hold("turn 1 text")
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", QUESTION, "--json", "--url", gw.url, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    first = json.loads(await proc.stdout.readline())  # the command is printing events now
    assert first["event"]["kind"] == "task_started"
    await held.reached("turn 1 text")
    proc.send_signal(signal.SIGINT)
    rest, err = await proc.communicate()
    frames = [json.loads(line) for line in rest.splitlines()]
    assert frames[-1]["event"]["kind"] == "task_cancelled", rest
    assert not any(f["event"]["kind"] == "tool_call_start" for f in frames)
    assert proc.returncode == 130
    assert "cancelling" in err.decode() and "Traceback" not in err.decode()
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


@pytest.mark.parametrize("command", ["run", "status", "cancel"])
async def test_unreachable_gateway(command: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"  # nobody listens there
    args = {"run": [QUESTION], "status": [], "cancel": ["t-1"]}[command]
    code, out, err = await ospark(command, *args, "--url", url)
    assert (code, out) == (2, "")
    assert err.startswith(f"ospark {command}: cannot connect to {url}: ")
    assert "Traceback" not in err and len(err.splitlines()) == 1


async def closed_pipe_run(*args: str) -> tuple[int, str]:
    """Run ``ospark`` with its stdout a pipe whose reader is already gone (as with ``| head``
    once head has exited)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            *CLI, *args, cwd=ROOT, stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(write_end)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize(
    "args",
    [["status", "--json"], ["status"], ["run", QUESTION, "--json"], ["run", QUESTION]],
    ids=["status-json", "status", "run-json", "run"],
)
async def test_output_closed_early_ends_quietly(gw: RunningGateway, args: list[str]) -> None:
    async with GatewayClient(gw.url) as client:
        assert isinstance(await (await client.start(QUESTION)).wait(), TaskCompleted)
    code, err = await closed_pipe_run(*args, "--url", gw.url)
    assert (code, err) == (0, "")


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


def final_frame(text: str, outcome: str) -> str:
    """The live view's last drawing (from its last status line on)."""
    return text[text.rindex(f"■ {outcome} · ") :]


async def test_live_view_in_a_terminal(gw: RunningGateway, held: Held) -> None:
    held.break_stream("summary end")  # the summary is streamed, broken, and made again
    term = Terminal()
    await term.spawn("run", QUESTION, "--url", gw.url)
    assert await term.wait() == 0
    assert SPINNER & set(term.raw), "no spinner frame was drawn"
    view = final_frame(term.text, "completed")
    assert re.match(r"■ completed · t-\w+ · ospark-demo \(offline demo model\) · \d+\.\ds", view)
    tool = '✓ calculator.calculate({"expression": "17*23+4"}) → 395'
    order = [
        "reasoning: The question contains the arithmetic expression 17*23+4.",
        "Calling the calculator.",
        tool,
        "reasoning: The calculator returned 395.",
        "↻ model call made again (network: retry 1 of 3",
        "reasoning: I will now write the report",
        "Summary (offline demo model)",
        "Final answer: \\boxed{395}",
        "╭─ final answer ─╮",
        "│ 395",
    ]
    positions = [view.find(part) for part in order]
    assert -1 not in positions and positions == sorted(positions), list(
        zip(order, positions, strict=True)
    )
    assert view.count("Summary (offline demo model)") == 1  # the superseded copy is gone
    assert view.count(tool) == 1


async def test_live_view_orders_and_labels_a_sub_agents_work(gw: RunningGateway) -> None:
    question = "Please research what 17*23+4 is."
    async with GatewayClient(gw.url) as client:
        task = await client.start(question)
        view = TaskView(task.task_id, question)
        async for frame in task.frames():
            view.apply(frame)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(view)
    lines = console.export_text().splitlines()
    sub = "[main/agent-worker#1]"

    def at(text: str) -> int:
        [index] = [i for i, line in enumerate(lines) if text in line]
        return index

    order = [
        at("reasoning: The task asks for research"),
        at("✓ sub-agent agent-worker("),
        at(f"{sub} reasoning: The question contains the arithmetic"),
        at(f'✓ {sub} calculator.calculate({{"expression": "17*23+4"}}) → 395'),
        at(f"{sub} reasoning: The calculator returned 395."),
        at("reasoning: The sub-agent agent-worker reported the answer 395."),
        at("- The sub-agent agent-worker reported the answer 395."),
    ]
    assert order == sorted(order), order
    # The main agent's reasoning is not labelled as a sub-agent's, and a sub-agent's sits under
    # the main agent's call to it.
    assert lines[order[0]].startswith("reasoning: ")
    assert lines[order[2]].startswith(f"  {sub} reasoning: ")


async def test_ctrl_c_in_the_live_view(gw: RunningGateway, held: Held) -> None:
    held.hold("turn 1 text")
    term = Terminal()
    await term.spawn("run", QUESTION, "--url", gw.url)
    await term.expect("turn_started 1")  # the live view is up (and so is its Ctrl-C handler)
    await held.reached("turn 1 text")
    term.type(b"\x03")
    assert await term.wait() == 130
    view = final_frame(term.text, "cancelled")
    assert "cancelled: cancelled by client" in view
    assert "final answer" not in view and "calculator.calculate" not in view
