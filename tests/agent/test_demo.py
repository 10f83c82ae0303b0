"""The offline demo model end to end: tools, sub-agents, limits, pace, cancellation, the CLI."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.agent import LLMDelta, Orchestrator, StepEvent, ToolEnd, ToolStart, load_config
from gateway.agent.__main__ import main as cli_main

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


async def test_a_thousand_concurrent_demo_tasks_are_cheap() -> None:
    config = load_config(None, FAST)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(Orchestrator(config).run_main_agent("What is 17*23+4?") for _ in range(1000))
    )
    elapsed = time.perf_counter() - started
    assert {answer for _, answer in results} == {"395"}
    assert elapsed < 15, elapsed  # ~1.5 s on a laptop; generous for slow CI machines


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
