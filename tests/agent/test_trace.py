"""Every run leaves a trace: messages of each agent, tool calls, steps, usage, timings, outcome;
written to ``output_dir`` when configured. And files come with a task, as in MiroFlow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.agent import (
    Orchestrator,
    TaskFile,
    TaskInputError,
    TraceRecorder,
    TraceStore,
    load_config,
)
from gateway.testing import Stream, fake_llm_server, openai_stream

from .helpers import Recorder, provider_config

FAST = {"llm.pace_ms": 0}
CALC = ("call_1", "calculator__calculate", json.dumps({"expression": "17*23+4"}))
SUB = ("call_2", "agents__agent-worker", json.dumps({"task": "check 17*23+4"}))


async def test_the_trace_of_a_run_with_a_sub_agent() -> None:
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_stream(text="Delegating.", tool_calls=[SUB], usage=(10, 1))),
            # the sub-agent: a tool call, an answer, its summary
            Stream(openai_stream(tool_calls=[CALC], usage=(20, 2))),
            Stream(openai_stream(text="395", usage=(30, 3))),
            Stream(openai_stream(text="Worker report \\boxed{395}", usage=(40, 4))),
            # the main agent again, then its summary
            Stream(openai_stream(text="Done.", usage=(50, 5))),
            Stream(openai_stream(text="Report \\boxed{395}", usage=(60, 6))),
        )
        orchestrator = Orchestrator(provider_config("openai", server.openai_url))
        await orchestrator.run_main_agent("What is 17*23+4?", task_id="trace-1")
    trace = orchestrator.trace.to_dict()
    json.dumps(trace)  # JSON-ready
    assert (trace["task_id"], trace["status"], trace["final_answer"]) == (
        "trace-1",
        "completed",
        "395",
    )
    assert trace["summary"] == "Report \\boxed{395} "
    assert trace["usage"] == {"input_tokens": 210, "output_tokens": 21}
    assert trace["ended_at"] >= trace["started_at"] and trace["duration_s"] >= 0
    main, worker = trace["agents"]["main"], trace["agents"]["main/agent-worker#1"]
    assert worker["name"] == "agent-worker" and worker["task"] == "check 17*23+4"
    assert worker["usage"] == {"input_tokens": 90, "output_tokens": 9}
    roles = [m["role"] for m in main["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert main["messages"][2]["tool_calls"][0]["name"] == "agents__agent-worker"
    assert main["messages"][3] == {
        "role": "tool",
        "content": "Worker report \\boxed{395} ",
        "tool_call_id": "call_2",
    }
    assert main["messages"][-1] == {"role": "assistant", "content": "Report \\boxed{395} "}
    assert worker["messages"][3]["content"] == "395"  # the calculator's result
    sub, calc = trace["tool_calls"]  # in start order
    assert (sub["server"], sub["tool"], sub["agent"]) == ("agents", "agent-worker", "main")
    assert calc["arguments"] == {"expression": "17*23+4"} and calc["result"] == "395"
    assert calc["agent"] == "main/agent-worker#1" and calc["duration_s"] >= 0
    steps = [(s["agent"], s["step"]) for s in trace["steps"]]
    assert ("main/agent-worker#1", "subagent_started") in steps
    assert ("main", "summarising") in steps


async def test_failed_and_cancelled_runs_leave_a_trace() -> None:
    async with fake_llm_server() as server:
        server.add(Stream(openai_stream(text="thinking")[:3], hang=True))
        rec = Recorder(until="thinking")
        orchestrator = Orchestrator(provider_config("openai", server.openai_url), sink=rec)
        task = asyncio.create_task(orchestrator.run_main_agent("x", task_id="c-1"))
        await asyncio.wait_for(rec.seen.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert orchestrator.trace.to_dict()["status"] == "cancelled"


async def test_the_trace_is_written_to_output_dir(tmp_path: Path) -> None:
    config = load_config(None, {**FAST, "output_dir": str(tmp_path / "logs")})
    await Orchestrator(config).run_main_agent("What is 2+3?", task_id="job/1")
    (written,) = (tmp_path / "logs").iterdir()
    assert written.name == "task_job_1.json"
    trace = json.loads(written.read_text())
    assert (trace["task_id"], trace["final_answer"], trace["status"]) == ("job/1", "5", "completed")


async def test_a_task_file_is_described_to_the_agent(tmp_path: Path) -> None:
    report = tmp_path / "report.txt"
    report.write_text("The answer is 42.")
    upload = TaskFile(tmp_path / "u", "data.csv", "text/csv", 12, file_id="file_abc")
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_stream(text="ok")),
            Stream(openai_stream(text="\\boxed{42}")),
        )
        orchestrator = Orchestrator(provider_config("openai", server.openai_url))
        await orchestrator.run_main_agent("Read it.", str(report), "f-1", files=[upload])
    task = server.requests[0]["messages"][1]["content"]
    assert f"- {report} (report.txt, text/plain, 17 bytes)" in task
    assert f"- {tmp_path / 'u'} (data.csv, text/csv, 12 bytes)" in task
    files = orchestrator.trace.to_dict()["files"]
    assert [f["name"] for f in files] == ["data.csv", "report.txt"]
    with pytest.raises(TaskInputError, match="task file not found"):
        await Orchestrator(load_config(None, FAST)).run_main_agent("x", tmp_path / "missing")


def test_the_store_keeps_traces_per_owner_and_bounded() -> None:
    store = TraceStore(retain_s=3600, max_traces=1)
    recorders = [TraceRecorder() for _ in range(3)]
    for i, recorder in enumerate(recorders):
        store.started("alice", f"t{i}", recorder)
    assert store.get("alice", "t0") is recorders[0]  # running traces are never dropped
    assert store.get("bob", "t0") is None  # another owner's task looks missing
    store.finished("alice", "t0")
    store.finished("alice", "t1")
    assert store.get("alice", "t0") is None  # the oldest finished one went first
    assert store.get("alice", "t1") is recorders[1] and store.get("alice", "t2") is recorders[2]
    assert len(store) == 2
    expired = TraceStore(retain_s=0)
    expired.started("alice", "t", recorders[0])
    expired.finished("alice", "t")
    assert expired.get("alice", "t") is None


def test_the_command_line_takes_a_file_and_prints_the_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.agent.__main__ import main

    data = tmp_path / "data.csv"
    data.write_text("x,1\n")
    argv = ["--quiet", "--set", "llm.pace_ms=0", "--file", str(data), "--trace", "What is 2+2?"]
    assert main(argv) == 0
    answer, _, trace = capsys.readouterr().out.partition("\n")
    assert answer == "4"
    files = json.loads(trace)["files"]
    assert files == [
        {
            "file_id": None,
            "name": "data.csv",
            "path": str(data),
            "content_type": "text/csv",
            "size": 4,
        }
    ]
