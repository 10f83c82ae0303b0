"""The StreamingOrchestrator (:mod:`gateway.streaming.orchestrator`) on the real core: the
demo model, the fake OpenAI server and a real MCP stdio server. Every case ends with exactly one
terminal event (or, when the consumer stops early, with the work stopped and nothing after)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from gateway.agent import AgentConfig, stop_tool_servers
from gateway.streaming import StreamingOrchestrator, TaskStream
from gateway.testing import OPENAI_CONTEXT_ERROR, ErrorReply, Stream, fake_llm_server
from gateway.testing import openai_stream as oai
from protocol.events import (
    ErrorEvent,
    Event,
    LlmResponse,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    ToolCallComplete,
    ToolCallStart,
)
from protocol.frames import StartOptions
from tests.agent.helpers import provider_config
from tests.streaming.helpers import (
    EXPECTED_RESEARCH_SHAPE,
    RESEARCH,
    W,
    demo_config,
    drain,
    kind,
    shape,
    terminals,
    text_of,
)


@pytest.mark.parametrize("pace_ms", [0.0, 0.2])
async def test_demo_run_with_tools_and_a_subagent(pace_ms: float) -> None:
    so = StreamingOrchestrator(demo_config(pace_ms))
    events = await drain(so.execute_task_streaming(RESEARCH, task_id="t-research"))
    assert shape(events) == EXPECTED_RESEARCH_SHAPE
    started = events[0]
    assert isinstance(started, TaskStarted)
    assert (started.input, started.model, started.agent_name) == (
        RESEARCH,
        "ospark-demo",
        "default",
    )
    done = events[-1]
    assert isinstance(done, TaskCompleted) and done.final_answer == "395"
    assert "\\boxed{395}" in done.summary
    assert done.usage is not None and done.usage.input_tokens > 0 and done.usage.output_tokens > 0
    # Tool calls pair up by call id within an agent; results and durations are reported.
    calc_start = next(e for e in events if isinstance(e, ToolCallStart) and e.agent == W)
    calc_end = next(e for e in events if isinstance(e, ToolCallComplete) and e.agent == W)
    assert calc_start.arguments == {"expression": "17*23+4"}
    assert calc_end.call_id == calc_start.call_id
    assert (calc_end.result, calc_end.error) == ("395", None) and calc_end.duration_ms >= 0
    sub_end = next(e for e in events if isinstance(e, ToolCallComplete) and e.agent == "main")
    assert sub_end.server == "agents" and "\\boxed{395}" in (sub_end.result or "")
    assert text_of(events, "main").endswith("\\boxed{395}")
    # The summary phase is streamed, with turn 0 as the protocol says.
    assert any(isinstance(e, LlmResponse) and e.phase == "summary" and e.turn == 0 for e in events)


async def test_a_failing_tool_is_an_error_event_not_the_end() -> None:
    events = await drain(StreamingOrchestrator(demo_config()).execute_task_streaming("1/0?"))
    [error] = [e for e in events if isinstance(e, ErrorEvent)]
    assert error.code == "tool_error" and "division by zero" in error.message
    [end] = [e for e in events if isinstance(e, ToolCallComplete)]
    assert end.result is None and end.error == "division by zero"
    assert [kind(e) for e in terminals(events)] == ["task_completed"]


async def test_long_tool_results_are_cut_to_a_preview() -> None:
    so = StreamingOrchestrator(demo_config(), preview_chars=10)
    events = await drain(so.execute_task_streaming(RESEARCH))
    sub_end = next(e for e in events if isinstance(e, ToolCallComplete) and e.agent == "main")
    assert sub_end.result is not None and sub_end.result.startswith("Summary (o")
    assert "more characters]" in sub_end.result


async def test_options_override_the_config() -> None:
    so = StreamingOrchestrator(demo_config())
    events = await drain(so.execute_task_streaming(RESEARCH, StartOptions(max_turns=1)))
    assert ("task_progress", "main", "max_turns_reached") in shape(events)
    assert kind(events[-1]) == "task_completed"
    events = await drain(so.execute_task_streaming("hi", StartOptions(agent="nope")))
    assert [kind(e) for e in events] == ["task_started", "task_failed"]
    assert isinstance(events[-1], TaskFailed) and events[-1].code == "invalid_config"


async def test_provider_error_ends_with_task_failed() -> None:
    body = {"error": {"message": "Incorrect API key provided", "type": "x", "code": "invalid"}}
    async with fake_llm_server() as server:
        server.add(ErrorReply(401, body))
        so = StreamingOrchestrator(provider_config("openai", server.openai_url))
        events = await drain(so.execute_task_streaming("hello"))
    assert [kind(e) for e in terminals(events)] == ["task_failed"]
    failed = events[-1]
    assert isinstance(failed, TaskFailed) and failed.code == "provider_error"
    assert "Incorrect API key provided" in failed.reason


async def test_context_limit_retry_is_visible_and_fails_the_task() -> None:
    calc = ("call_1", "calculator__calculate", json.dumps({"expression": "17*23+4"}))
    async with fake_llm_server() as server:
        server.add(
            Stream(oai(tool_calls=[calc])),
            OPENAI_CONTEXT_ERROR,  # turn 2: over the context window, go to the summary
            OPENAI_CONTEXT_ERROR,  # the summary too: drop the latest exchange and retry
            Stream(oai(text="Partial report. \\boxed{unknown}")),
        )
        so = StreamingOrchestrator(provider_config("openai", server.openai_url))
        events = await drain(so.execute_task_streaming("What is 17*23+4?"))
    steps = [e.step for e in events if isinstance(e, TaskProgress) and e.agent == "main"]
    assert steps.count("context_limit") == 2 and steps.count("summarising") == 2
    assert [kind(e) for e in terminals(events)] == ["task_failed"]
    failed = events[-1]
    assert isinstance(failed, TaskFailed) and failed.code == "context_limit"
    assert "Partial report" in failed.summary
    assert "Partial report" in text_of(events, "main")


MCP_SERVER = str(Path(__file__).parents[1] / "agent" / "mcp_server.py")


def stdio_config(base_url: str, probe_port: int, *, crashing: bool = False) -> AgentConfig:
    tool = {
        "name": "testsrv",
        "command": sys.executable,
        "args": [MCP_SERVER],
        "env": {"PROBE_PORT": str(probe_port)},
        "timeout_s": 30,
    }
    if crashing:  # a server process that dies at once
        tool = {"name": "testsrv", "command": sys.executable, "args": ["-c", "raise SystemExit(3)"]}
    return provider_config("openai", base_url).with_overrides(
        {"tools": [tool], "main_agent.tool_config": ["testsrv"]}
    )


class Probe:
    """The MCP test server's probe socket: lines it reports land in a queue."""

    async def __aenter__(self) -> Probe:
        self.lines: asyncio.Queue[str] = asyncio.Queue()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async for line in reader:
                self.lines.put_nowait(line.decode().strip())
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_a_failing_mcp_tool_does_not_end_the_task() -> None:
    calls = [("c1", "testsrv__fail", json.dumps({"reason": "on purpose"}))]
    async with fake_llm_server() as server, Probe() as probe:
        server.add(
            Stream(oai(tool_calls=calls)),
            Stream(oai(text="it failed")),
            Stream(oai(text="Report \\boxed{none}")),
        )
        so = StreamingOrchestrator(stdio_config(server.openai_url, probe.port))
        events = await drain(so.execute_task_streaming("try the tool"))
    assert [e.code for e in events if isinstance(e, ErrorEvent)] == ["tool_error"]
    [end] = [e for e in events if isinstance(e, ToolCallComplete)]
    assert end.error is not None and "on purpose" in end.error
    assert [kind(e) for e in terminals(events)] == ["task_completed"]
    assert events[-1].final_answer == "none"  # type: ignore[union-attr]


async def test_a_crashed_tool_server_still_gives_exactly_one_terminal() -> None:
    async with fake_llm_server() as server, Probe() as probe:
        server.add(Stream(oai(text="no tools")), Stream(oai(text="Report \\boxed{x}")))
        so = StreamingOrchestrator(stdio_config(server.openai_url, probe.port, crashing=True))
        events = await drain(so.execute_task_streaming("try the tool"))
    assert kind(events[0]) == "task_started"
    assert len(terminals(events)) == 1 and events[-1] is terminals(events)[0]
    # The broken server is reported as a non-fatal error; the agent goes on without its tools.
    assert [e.code for e in events if isinstance(e, ErrorEvent)] == ["tool_server_failed"]
    assert kind(events[-1]) == "task_completed"


async def test_cancel_during_a_tool_call_stops_the_tool() -> None:
    calls = [("c1", "testsrv__slow", json.dumps({"seconds": 60}))]
    async with fake_llm_server() as server, Probe() as probe:
        server.add(Stream(oai(tool_calls=calls)))
        so = StreamingOrchestrator(stdio_config(server.openai_url, probe.port))
        stream = so.execute_task_streaming("be slow")
        events: list[Event] = []
        async for event in stream:
            events.append(event)
            if isinstance(event, ToolCallStart):
                assert (await probe.lines.get()).startswith("started")
                stream.cancel("stop it")
        assert await probe.lines.get() == "cancelled"
        # The stream ended before its server's shutdown; waiting for that ends it.
        await stop_tool_servers()
    assert [kind(e) for e in terminals(events)] == ["task_cancelled"]
    assert events[-1] == TaskCancelled(reason="stop it")
    end = next(e for e in events if isinstance(e, ToolCallComplete))
    assert end.error == "cancelled"


async def cancel_when(so: StreamingOrchestrator, task: str, predicate: object) -> list[Event]:
    stream = so.execute_task_streaming(task)
    events: list[Event] = []
    async for event in stream:
        events.append(event)
        if predicate(event):  # type: ignore[operator]
            stream.cancel()
            stream.cancel()  # idempotent
    return events


async def test_cancel_during_llm_streaming() -> None:
    so = StreamingOrchestrator(demo_config(pace_ms=1))
    events = await cancel_when(
        so, RESEARCH, lambda e: isinstance(e, LlmResponse) and e.phase == "turn"
    )
    assert [kind(e) for e in terminals(events)] == ["task_cancelled"]
    assert kind(events[-1]) == "task_cancelled"
    assert not any(isinstance(e, ToolCallStart) for e in events)


async def test_cancel_during_a_subagent_call() -> None:
    so = StreamingOrchestrator(demo_config(pace_ms=1))
    events = await cancel_when(so, RESEARCH, lambda e: isinstance(e, ToolCallStart))
    assert kind(events[-1]) == "task_cancelled"
    assert len(terminals(events)) == 1
    end = next(e for e in events if isinstance(e, ToolCallComplete) and e.agent == "main")
    assert end.server == "agents" and end.error == "cancelled"


async def test_cancel_during_the_summary() -> None:
    so = StreamingOrchestrator(demo_config(pace_ms=1))
    events = await cancel_when(
        so,
        "What is 2+2?",
        lambda e: isinstance(e, LlmResponse) and e.phase == "summary" and e.agent == "main",
    )
    assert kind(events[-1]) == "task_cancelled" and len(terminals(events)) == 1
    assert ("task_progress", "main", "summarising") in shape(events)


async def test_cancel_before_the_first_event() -> None:
    stream = StreamingOrchestrator(demo_config()).execute_task_streaming("2+2")
    stream.cancel("never mind")
    assert await drain(stream) == [TaskCancelled(reason="never mind")]


async def test_cancel_after_the_end_changes_nothing() -> None:
    stream = StreamingOrchestrator(demo_config()).execute_task_streaming("2+2")
    events = await drain(stream)
    stream.cancel()
    assert await drain(stream) == []
    assert kind(events[-1]) == "task_completed"


async def test_consumer_closing_early_stops_the_work() -> None:
    stream = StreamingOrchestrator(demo_config(pace_ms=1)).execute_task_streaming(RESEARCH)
    events: list[Event] = []
    async for event in stream:
        events.append(event)
        if isinstance(event, ToolCallStart):
            break
    assert not stream.done
    await stream.aclose()
    assert stream.done  # the work stopped before aclose() returned
    assert terminals(events) == []
    assert await drain(stream) == []  # nothing after, ever


async def test_external_cancellation_of_the_consumer_propagates() -> None:
    stream = StreamingOrchestrator(demo_config(pace_ms=1)).execute_task_streaming(RESEARCH)
    seen = asyncio.Event()

    async def consume() -> None:
        async for event in stream:
            if isinstance(event, ToolCallStart):
                seen.set()

    consumer = asyncio.create_task(consume())
    await seen.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert stream.done


async def test_streams_are_independent() -> None:
    so = StreamingOrchestrator(demo_config())
    streams: list[TaskStream] = [so.execute_task_streaming(f"What is {i}*3?") for i in range(20)]
    results = await asyncio.gather(*(drain(s) for s in streams))
    for i, events in enumerate(results):
        assert isinstance(events[-1], TaskCompleted) and events[-1].final_answer == str(i * 3)
