"""The Anthropic provider against a fake Messages server, through the real SDK."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.agent import Orchestrator, RateLimitError, TaskFailedError, ToolEnd, UsageEvent
from gateway.testing import (
    ANTHROPIC_CONTEXT_ERROR,
    ErrorReply,
    Stream,
    anthropic_stream,
    fake_llm_server,
)

from .helpers import Recorder, provider_config

CALC = ("toolu_01", "calculator__calculate", json.dumps({"expression": "17*23+4"}))


async def test_thinking_tool_use_then_answer() -> None:
    async with fake_llm_server() as server:
        server.add(
            Stream(anthropic_stream(thinking="Arithmetic needs a calculator", tool_calls=[CALC])),
            Stream(anthropic_stream(text="It is 395.")),
            Stream(anthropic_stream(text="Report: \\boxed{395}", usage=(400, 12))),
        )
        rec = Recorder()
        config = provider_config("anthropic", server.anthropic_url)
        summary, answer = await Orchestrator(config, sink=rec).run_main_agent("What is 17*23+4?")
    assert answer == "395" and summary.strip() == "Report: \\boxed{395}"
    assert rec.text(channel="reasoning").strip() == "Arithmetic needs a calculator"
    (end,) = rec.of(ToolEnd)
    assert end.result == "395"
    assert UsageEvent("main", 400, 12) in rec.events
    first, second, third = server.requests
    assert first["stream"] is True and "temperature" not in first
    assert first["system"].startswith("You are a careful research agent")
    assert {t["name"] for t in first["tools"]} >= {"calculator__calculate", "clock__now"}
    assistant, results = second["messages"][-2:]
    # the signed thinking block goes back with the tool_use it led to
    assert [b["type"] for b in assistant["content"]] == ["thinking", "tool_use"]
    assert assistant["content"][0]["signature"] == "c2lnbmF0dXJl"
    assert assistant["content"][1]["input"] == {"expression": "17*23+4"}
    assert results["role"] == "user"
    assert results["content"][0]["type"] == "tool_result"
    assert results["content"][0]["content"] == "395"
    # the summary request: tool results and the summary prompt merged in one user turn
    assert [m["role"] for m in third["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    sent = server.headers[0]
    assert "test-key" in (sent.get("x-api-key", "") + sent.get("authorization", ""))


async def test_prompt_too_long_goes_to_summary_and_fails_the_task() -> None:
    async with fake_llm_server() as server:
        server.add(
            Stream(anthropic_stream(tool_calls=[CALC])),
            ANTHROPIC_CONTEXT_ERROR,
            ANTHROPIC_CONTEXT_ERROR,
            Stream(anthropic_stream(text="What I have: \\boxed{395?}")),
        )
        rec = Recorder()
        config = provider_config("anthropic", server.anthropic_url)
        with pytest.raises(TaskFailedError) as info:
            await Orchestrator(config, sink=rec).run_main_agent("What is 17*23+4?")
    assert info.value.summary.strip() == "What I have: \\boxed{395?}"
    assert rec.steps().count("context_limit") == 2
    context_events = [e for e in rec.events if getattr(e, "step", "") == "context_limit"]
    assert "prompt is too long: 208310 tokens" in context_events[0].message


async def test_overloaded_is_retried_then_raised() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    async with fake_llm_server() as server:
        server.add(ErrorReply(529, body), ErrorReply(529, body), ErrorReply(529, body))
        with pytest.raises(RateLimitError, match="Overloaded"):
            config = provider_config("anthropic", server.anthropic_url)
            await Orchestrator(config).run_main_agent("x")
    assert len(server.requests) == 3  # the first try and max_retries=2 retries


async def test_cancel_mid_stream_closes_the_http_stream() -> None:
    async with fake_llm_server() as server:
        server.add(Stream(anthropic_stream(text="a long answer")[:5], hang=True))
        rec = Recorder(until="long")
        config = provider_config("anthropic", server.anthropic_url)
        task = asyncio.create_task(Orchestrator(config, sink=rec).run_main_agent("x"))
        await asyncio.wait_for(rec.seen.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), 10)
    assert rec.text().strip() == "a long"
