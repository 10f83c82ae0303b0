"""``ospark run`` answering questions and approvals, and ``ospark chat``, through a real
pseudo-terminal against a real gateway (the demo model asks deterministically)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.client import GatewayClient
from gateway.server import RunningGateway, Settings, serve_in_background
from tests.conv.terminal import ROOT, Terminal
from tests.server.helpers import demo_config


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    settings = Settings(port=0, agent_config=demo_config(tmp_path, 0), web_root=None)
    async with serve_in_background(settings) as gw:
        yield gw


async def test_run_answers_a_question_in_the_terminal(gw: RunningGateway) -> None:
    term = Terminal()
    await term.spawn("run", "Please ask me for a number to double", "--url", gw.url)
    await term.expect("? Which number should I use?")
    await term.expect("your answer:")
    term.type("21")
    assert await term.wait() == 0
    text = term.text
    assert '✓ calculator.calculate({"expression": "21*2"}) → 42' in text
    assert "│ 42" in text[text.rindex("■ completed") :]


async def test_run_denies_an_approval_in_the_terminal(gw: RunningGateway) -> None:
    term = Terminal()
    await term.spawn("run", "What is 17*23+4?", "--agent", "demo-approval", "--url", gw.url)
    await term.expect('? Allow calculator/calculate with {"expression": "17*23+4"}?')
    await term.expect("approve?")
    term.type("n: not now")
    assert await term.wait() == 0
    final = term.text[term.text.rindex("■ completed") :]
    assert "denied by the user: not now" in final
    assert "↳ denied (not now)" in final


async def test_run_without_a_terminal_does_not_prompt(gw: RunningGateway) -> None:
    """Piped (no tty), `run --json` prints the question as an event and waits for an answer
    from elsewhere; here it is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "run", "Please ask me", "--json", "--url", gw.url,
        "--task-id", "piped-1", cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    while b'"input_required"' not in await proc.stdout.readline():
        pass
    async with GatewayClient(gw.url) as client:
        assert await client.cancel("piped-1") == "accepted"
    await proc.communicate()
    assert proc.returncode == 130


async def test_chat_follows_up_in_one_thread(gw: RunningGateway) -> None:
    term = Terminal()
    await term.spawn("chat", "--url", gw.url, "--thread", "cli-chat")
    at = await term.expect("you> ")
    term.type("What is 17*23+4?")
    at = await term.expect("│ 395", at)
    at = await term.expect("you> ", at)
    term.type("Add 5 to that")
    at = await term.expect('calculator.calculate({"expression": "395+5"}) → 400', at)
    at = await term.expect("│ 400", at)
    await term.expect("you> ", at)
    term.type("")
    assert await term.wait() == 0
    async with GatewayClient(gw.url) as client:
        turns = await client.thread_tasks("cli-chat")
    assert [(t.input, t.final_answer) for t in turns] == [
        ("What is 17*23+4?", "395"),
        ("Add 5 to that", "400"),
    ]
