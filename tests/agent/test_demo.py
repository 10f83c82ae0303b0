"""The offline demo model end to end: tools, sub-agents, limits, pace, cancellation, the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.agent import (
    LLMDelta,
    Orchestrator,
    StepEvent,
    ToolEnd,
    ToolStart,
    load_config,
    stop_tool_servers,
)
from gateway.agent.__main__ import main as cli_main
from gateway.agent.llm import demo
from tests.tools.documents import write_docx
from tests.tools.support import processes_with, read_fifo_line, wait_all_exit

from .helpers import Recorder

FAST = {"llm.pace_ms": 0}


async def test_arithmetic_uses_the_calculator() -> None:
    rec = Recorder()
    summary, answer = await Orchestrator(load_config(None, FAST), sink=rec).run_main_agent(
        "What is 17*23+4?", task_id="demo-1"
    )
    assert answer == "395"
    assert "\\boxed{395}" in summary and "offline demo model" in summary
    (start,) = rec.of(ToolStart)
    assert (start.agent, start.server, start.tool) == ("main", "calculator", "calculate")
    assert start.arguments == {"expression": "17*23+4"}
    reasoning = [e for e in rec.of(LLMDelta) if e.channel == "reasoning"]
    assert len(reasoning) > 10 and all(len(e.text.split()) <= 1 for e in reasoning)  # word by word
    assert "\\boxed{395}" in rec.text(phase="summary")
    assert rec.steps()[:2] == ["tools_listed", "turn_started"]


async def test_time_question_asks_the_clock() -> None:
    rec = Recorder()
    _, answer = await Orchestrator(load_config(None, FAST), sink=rec).run_main_agent(
        "What time is it?"
    )
    (end,) = rec.of(ToolEnd)
    assert (end.server, end.tool) == ("clock", "now") and end.error is None
    assert answer == (end.result or "").strip()


async def test_research_delegates_to_the_sub_agent() -> None:
    rec = Recorder()
    _, answer = await Orchestrator(load_config(None, FAST), sink=rec).run_main_agent(
        "Please research what 17*23+4 is."
    )
    assert answer == "395"
    starts = rec.of(ToolStart)
    assert [(s.agent, s.server, s.tool) for s in starts] == [
        ("main", "agents", "agent-worker"),
        ("main/agent-worker#1", "calculator", "calculate"),
    ]
    assert "subagent_started" in rec.steps("main/agent-worker#1")
    assert "subagent_finished" in rec.steps("main/agent-worker#1")
    sub_end = next(e for e in rec.of(ToolEnd) if e.server == "agents")
    assert "\\boxed{395}" in (sub_end.result or "")


async def test_nested_sub_agents_get_nested_paths() -> None:
    config = load_config(
        None,
        {
            **FAST,
            "sub_agents.agent-worker.sub_agents": ["agent-x"],
            "sub_agents.agent-x": {"tool_config": ["calculator"], "max_turns": 3},
        },
    )
    rec = Recorder()
    _, answer = await Orchestrator(config, sink=rec).run_main_agent("Delegate: 2^10 - 24")
    assert answer == "1000"
    assert [(s.agent, s.tool) for s in rec.of(ToolStart)] == [
        ("main", "agent-worker"),
        ("main/agent-worker#1", "agent-x"),
        ("main/agent-worker#1/agent-x#1", "calculate"),
    ]


async def test_max_turns_reached_still_summarises() -> None:
    rec = Recorder()
    config = load_config(None, {**FAST, "max_turns": 1})
    _, answer = await Orchestrator(config, sink=rec).run_main_agent(
        "What is 6*7, and what day is it today?"
    )
    assert answer == "42"
    assert rec.steps()[-2:] == ["max_turns_reached", "summarising"]
    assert len(rec.of(ToolStart)) == 1  # the clock call never happened


async def test_cancel_while_the_demo_streams() -> None:
    rec = Recorder(until="arithmetic")
    config = load_config(None, {"llm.pace_ms": 5})
    task = asyncio.create_task(Orchestrator(config, sink=rec).run_main_agent("What is 1+1?"))
    await asyncio.wait_for(rec.seen.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not rec.of(ToolStart)
    assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing left running


async def test_a_thousand_concurrent_demo_tasks_all_answer() -> None:
    # How long it takes is a benchmark figure (make bench), not a test assertion.
    config = load_config(None, FAST)
    results = await asyncio.gather(
        *(Orchestrator(config).run_main_agent("What is 17*23+4?") for _ in range(1000))
    )
    assert [answer for _, answer in results] == ["395"] * 1000


def test_cli_prints_the_streamed_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["What is 17*23+4?", "--set", "llm.pace_ms=0"]) == 0
    out = capsys.readouterr().out
    assert "offline demo model" in out
    assert "calculator/calculate" in out
    assert "Final answer: 395" in out


def test_cli_reports_a_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["x", "--set", "main_agent.max_turns=zero"]) == 2
    assert "main_agent.max_turns" in capsys.readouterr().out


def test_step_events_are_frozen() -> None:
    event = StepEvent("main", "turn_started", "turn 1", 1)
    with pytest.raises(AttributeError):
        event.step = "x"  # type: ignore[misc]


# --- the demo model through the shipped tool servers (gateway/configs/demo-tools.yaml) ---------

DEMO_TOOLS = Path(__file__).resolve().parents[2] / "gateway" / "configs" / "demo-tools.yaml"
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


@pytest.fixture
def venv_python_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The config says ``command: python``, as MiroFlow's do: as in an activated virtualenv
    (``make serve`` puts it on PATH), that must be this interpreter."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the sandbox user (``nobody`` when the tests run as root) can reach."""
    path = Path(tempfile.mkdtemp(prefix="ospark-test-demo-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.usefixtures("venv_python_on_path")
async def test_demo_reads_a_file_with_the_reading_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_docx(tmp_path / "memo.docx", "Quarterly plan", "Ship the tools.")
    monkeypatch.setenv("OSPARK_READING_ROOTS", str(tmp_path))
    rec = Recorder()
    config = load_config(DEMO_TOOLS, FAST)
    summary, answer = await Orchestrator(config, sink=rec).run_main_agent(
        f"Please read {tmp_path}/memo.docx."
    )
    (start,) = rec.of(ToolStart)
    assert (start.server, start.tool, start.arguments) == (
        "reading",
        "read_file",
        {"uri": f"{tmp_path}/memo.docx"},
    )
    (end,) = rec.of(ToolEnd)
    assert end.error is None and "Ship the tools." in (end.result or "")
    assert end.duration_s > 0
    assert answer == "Quarterly plan"
    assert "```text\n# Quarterly plan" in summary


@needs_bwrap
@pytest.mark.usefixtures("venv_python_on_path")
async def test_demo_runs_python_in_the_sandbox() -> None:
    rec = Recorder()
    config = load_config(DEMO_TOOLS, FAST)
    summary, answer = await Orchestrator(config, sink=rec).run_main_agent(
        "run python: import socket\nprint(sum(range(10)) * 2**2)"
    )
    (start,) = rec.of(ToolStart)  # the arithmetic in the code does not call the calculator
    assert (start.server, start.tool) == ("code", "run_python_code")
    assert start.arguments == {"code_block": "import socket\nprint(sum(range(10)) * 2**2)"}
    (end,) = rec.of(ToolEnd)
    assert end.result == "exit code 0\n--- stdout ---\n180"
    assert answer == "180"
    assert "```text\nexit code 0\n--- stdout ---\n180\n```" in summary


@pytest.mark.usefixtures("venv_python_on_path")
async def test_demo_without_bubblewrap_reports_it_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PATH keeps this Python (for the tool server) and loses bwrap.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{tmp_path}")
    rec = Recorder()
    config = load_config(DEMO_TOOLS, FAST)
    summary, answer = await Orchestrator(config, sink=rec).run_main_agent("run python: print(1)")
    (end,) = rec.of(ToolEnd)
    assert end.result is None and "needs bubblewrap" in (end.error or "")
    assert "code never runs unsandboxed" in (end.error or "")
    assert "The run_python_code tool failed" in summary
    assert answer == "no answer (offline demo model)"


@needs_bwrap
@pytest.mark.usefixtures("venv_python_on_path")
async def test_cancelling_the_task_kills_the_running_code(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandboxed program signals on a named pipe in /input when it runs; cancelling the
    task then leaves none of its processes behind."""
    fifo = shared_dir / "started"
    os.mkfifo(fifo)
    fifo.chmod(0o666)
    monkeypatch.setenv("OSPARK_CODE_INPUT_DIR", str(shared_dir))
    code = (  # signals once the sleeper's command line is in place (exec is done)
        "import subprocess\n"
        "sleeper = subprocess.Popen(['sleep', '4242.25'])\n"
        "while open(f'/proc/{sleeper.pid}/cmdline', 'rb').read() != b'sleep\\x004242.25\\x00':\n"
        "    pass\n"
        "open('/input/started', 'w').write('started\\n')\n"
        "sleeper.wait()"
    )
    rec = Recorder()
    config = load_config(DEMO_TOOLS, FAST)
    task = asyncio.create_task(Orchestrator(config, sink=rec).run_main_agent(f"run python: {code}"))
    assert await read_fifo_line(fifo) == "started"
    assert len(processes_with("sleep 4242.25")) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_all_exit("sleep 4242.25")
    await stop_tool_servers()  # a cancelled run leaves its server's exit to its host task
    (end,) = rec.of(ToolEnd)
    assert end.error == "cancelled"


# --- issue 17: the demo model's work is bounded by a constant, whatever the input --------------


class _CountingPattern:
    """Wraps a compiled pattern and counts the characters it is asked to scan."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        self.scanned += len(text)
        return self.pattern.finditer(text)

    def search(self, text: str) -> re.Match[str] | None:
        self.scanned += len(text)
        return self.pattern.search(text)


@pytest.mark.parametrize(
    "task",
    ["(" * 100_000, "1" + " " * 99_999, "1+" * 50_000, "(1)" * 33_000, "read " * 20_000],
    ids=["parens", "spaces", "sums", "groups", "reads"],
)
async def test_a_pathological_task_costs_bounded_work(
    task: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    patterns = {}
    for name in (
        "_ARITHMETIC_RUN",
        "_OPERATOR_BETWEEN_NUMBERS",
        "DELEGATE_TRIGGER",
        "TIME_TRIGGER",
    ):
        patterns[name] = _CountingPattern(getattr(demo, name))
        monkeypatch.setattr(demo, name, patterns[name])
    rec = Recorder()
    summary, _ = await Orchestrator(load_config(None, FAST), sink=rec).run_main_agent(task)
    assert "\\boxed{" in summary  # it completes with a summary (or a calculator error in it)
    for name, pattern in patterns.items():
        # every model turn scans at most MAX_SCAN_CHARS per pattern (a few turns per task)
        assert pattern.scanned <= 4 * demo.MAX_SCAN_CHARS, (name, pattern.scanned)
    assert len(summary) < demo.MAX_SCAN_CHARS  # the report quotes a cut of the task


def test_find_arithmetic_is_linear_and_still_finds_expressions() -> None:
    assert demo.find_arithmetic("What is 17*23+4?") == "17*23+4"
    assert demo.find_arithmetic("(2^10)/3 and 5") == "(2^10)/3"
    assert demo.find_arithmetic("in 2026 we had 3 cats") is None
    assert demo.find_arithmetic("x (((1+2) y 3*4 ))") == "(((1+2)"
    # 200,000 characters: a backtracking search would take minutes; each run is scanned once.
    assert demo.find_arithmetic("(" * 200_000) is None
    assert demo.find_arithmetic("(" * 100_000 + "1+1") == "(" * 100_000 + "1+1"


_BACKTRACKING = re.compile(r"[\d.(][\d.\s()+\-*/^%×÷]*[\d)]")  # the old, quadratic finder


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789.()+-*/^%×÷ ab\n", max_size=40))
def test_find_arithmetic_agrees_with_the_backtracking_search(text: str) -> None:
    """On short inputs the linear finder gives what the old backtracking regex gave."""
    found = [
        m.group().strip()
        for m in _BACKTRACKING.finditer(text)
        if demo._OPERATOR_BETWEEN_NUMBERS.search(m.group())
    ]
    assert demo.find_arithmetic(text) == (max(found, key=len) if found else None)


@pytest.mark.parametrize(
    ("expression", "outcome"),
    [
        ("(" * 499 + "1", "not an arithmetic expression"),
        ("-" * 499 + "1", "-1"),
        ("abs(" * 99 + "-1" + ")" * 99, "1"),
        ("9**9**9**9", "exponent"),
        ("1e308*10", "result too large"),
        ("(" * 100_000, "longer than 500 characters"),
    ],
)
def test_the_calculator_bounds_its_work(expression: str, outcome: str) -> None:
    """The built-in calculator reads at most 500 characters, so its parse and its recursion are
    bounded; every input ends in a result or a clear CalculatorError, never another exception."""
    from gateway.agent.tools.builtin import CalculatorError, calculate

    try:
        result = calculate(expression)
    except CalculatorError as exc:
        result = str(exc)
    assert outcome in result
