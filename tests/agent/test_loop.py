"""Loop limits with a scripted model: tool calls per turn, keep_tool_result, bad tool calls."""

from __future__ import annotations

import json

from gateway.agent import Orchestrator, ToolEnd
from gateway.agent.orchestrator import OMITTED_RESULT
from gateway.testing import Stream, fake_llm_server, openai_stream

from .helpers import Recorder, provider_config


def calc(call_id: str, expression: str) -> tuple[str, str, str]:
    return (call_id, "calculator__calculate", json.dumps({"expression": expression}))


async def test_too_many_tool_calls_in_one_turn() -> None:
    calls = [calc("a", "1+1"), calc("b", "2+2"), calc("c", "3+3")]
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_stream(tool_calls=calls)),
            Stream(openai_stream(text="ok")),
            Stream(openai_stream(text="\\boxed{4}")),
        )
        rec = Recorder()
        config = provider_config("openai", server.openai_url, max_tool_calls_per_turn=2)
        await Orchestrator(config, sink=rec).run_main_agent("add")
    assert [e.result for e in rec.of(ToolEnd)] == ["2", "4"]
    assert "tool_calls_skipped" in rec.steps()
    results = [m for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == ["a", "b", "c"]  # every call is answered
    assert results[2]["content"].startswith("Not run: at most 2 tool calls")


async def test_keep_tool_result_hides_older_results() -> None:
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_stream(tool_calls=[calc("a", "1+1")])),
            Stream(openai_stream(tool_calls=[calc("b", "2+2")])),
            Stream(openai_stream(text="done")),
            Stream(openai_stream(text="\\boxed{4}")),
        )
        config = provider_config("openai", server.openai_url, keep_tool_result=1)
        await Orchestrator(config).run_main_agent("add twice")
    contents = [m["content"] for m in server.requests[2]["messages"] if m["role"] == "tool"]
    assert contents == [OMITTED_RESULT, "4"]


async def test_unknown_tool_and_bad_arguments_are_reported_to_the_model() -> None:
    calls = [
        ("a", "nope__missing", "{}"),
        ("b", "calculator__calculate", "{not json"),
        calc("c", "__import__('os')"),
    ]
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_stream(tool_calls=calls)),
            Stream(openai_stream(text="ok")),
            Stream(openai_stream(text="\\boxed{none}")),
        )
        rec = Recorder()
        config = provider_config("openai", server.openai_url)
        _, answer = await Orchestrator(config, sink=rec).run_main_agent("x")
    assert answer == "none"
    errors = [e.error or "" for e in rec.of(ToolEnd)]
    assert "unknown tool" in errors[0]
    assert "invalid JSON" in errors[1]
    assert "unsupported syntax" in errors[2]
