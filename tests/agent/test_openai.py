"""The OpenAI provider against a fake Chat Completions server, through the real SDK."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.agent import (
    AgentErrorEvent,
    AuthError,
    Orchestrator,
    TaskFailedError,
    ToolEnd,
    ToolStart,
    UsageEvent,
)
from gateway.testing import OPENAI_CONTEXT_ERROR, ErrorReply, Stream, fake_llm_server, openai_stream

from .helpers import Recorder, provider_config

CALC = ("call_1", "calculator__calculate", json.dumps({"expression": "17*23+4"}))
SUMMARY = "I used the calculator: 17*23+4 = 395. \\boxed{395}"


async def test_tool_call_then_answer() -> None:
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_stream(reasoning="I should calculate", tool_calls=[CALC])),
            Stream(openai_stream(text="The answer is 395.")),
            Stream(openai_stream(text=SUMMARY, usage=(300, 30))),
        )
        rec = Recorder()
        config = provider_config("openai", server.openai_url)
        summary, answer = await Orchestrator(config, sink=rec).run_main_agent(
            "What is 17*23+4?", task_id="t-openai"
        )
    assert answer == "395"
    assert summary.strip() == SUMMARY
    assert rec.of(ToolStart)[0].arguments == {"expression": "17*23+4"}
    end = rec.of(ToolEnd)[0]
    assert (end.server, end.tool, end.result, end.error) == ("calculator", "calculate", "395", None)
    assert rec.text(channel="reasoning").strip() == "I should calculate"
    assert rec.text(phase="summary").strip() == SUMMARY
    assert UsageEvent("main", 300, 30) in rec.events
    # what the SDK sent: streaming with usage, tool definitions, the tool result in the history
    first, second, third = server.requests
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert {t["function"]["name"] for t in first["tools"]} >= {
        "calculator__calculate",
        "clock__now",
    }
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "395"}
    assert second["messages"][-2]["tool_calls"][0]["function"]["arguments"] == CALC[2]
    assert "tools" not in third  # the summary is asked without tools
    assert server.headers[0]["authorization"] == "Bearer test-key"


async def test_context_limit_goes_to_summary_and_drops_an_exchange() -> None:
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_stream(tool_calls=[CALC])),
            OPENAI_CONTEXT_ERROR,  # turn 2 does not fit: go to the summary
            OPENAI_CONTEXT_ERROR,  # the summary does not fit either: drop the last exchange
            Stream(openai_stream(text="Partial report. \\boxed{unknown}")),
        )
        rec = Recorder()
        orchestrator = Orchestrator(provider_config("openai", server.openai_url), sink=rec)
        with pytest.raises(TaskFailedError) as info:
            await orchestrator.run_main_agent("What is 17*23+4?")
    assert info.value.summary.strip() == "Partial report. \\boxed{unknown}"
    assert "dropped" in info.value.reason and info.value.failure_code == "context_limit"
    assert orchestrator.failed_reason == info.value.reason
    steps = rec.steps()
    assert steps.count("context_limit") == 2 and steps.count("summarising") == 2
    # the retried summary request no longer holds the assistant tool call nor its result
    roles = [m["role"] for m in server.requests[-1]["messages"]]
    assert roles == ["system", "user", "user"]


async def test_context_limit_with_nothing_left_to_drop() -> None:
    async with fake_llm_server() as server:
        server.add(OPENAI_CONTEXT_ERROR, OPENAI_CONTEXT_ERROR)
        with pytest.raises(TaskFailedError) as info:
            await Orchestrator(provider_config("openai", server.openai_url)).run_main_agent("x")
    assert "even with only the task left" in info.value.reason
    assert "maximum context length is 128000 tokens" in info.value.summary


async def test_mid_stream_disconnect_is_retried() -> None:
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_stream(text="this stream will break"), disconnect_after=3),
            Stream(openai_stream(text="Fine. \\boxed{ok}")),
            Stream(openai_stream(text="Report \\boxed{ok}")),
        )
        rec = Recorder()
        config = provider_config("openai", server.openai_url)
        _, answer = await Orchestrator(config, sink=rec).run_main_agent("hello")
    assert answer == "ok"
    errors = rec.of(AgentErrorEvent)
    assert errors[0].code == "network" and errors[0].retryable
    assert "retrying" in rec.steps()
    assert len(server.requests) == 3


async def test_auth_error_keeps_the_provider_message() -> None:
    body = {
        "error": {
            "message": "Incorrect API key provided: test-key.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    async with fake_llm_server() as server:
        server.add(ErrorReply(401, body))
        with pytest.raises(AuthError, match="Incorrect API key provided"):
            await Orchestrator(provider_config("openai", server.openai_url)).run_main_agent("x")


async def test_cancel_mid_stream_closes_the_http_stream() -> None:
    async with fake_llm_server() as server:
        server.add(Stream(openai_stream(text="thinking out loud")[:3], hang=True))
        rec = Recorder(until="out")
        config = provider_config("openai", server.openai_url)
        task = asyncio.create_task(Orchestrator(config, sink=rec).run_main_agent("x"))
        await asyncio.wait_for(rec.seen.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), 10)  # the server saw the client leave
    assert rec.text().strip() == "thinking out"


async def test_a_network_error_names_the_url_tried() -> None:
    import socket

    from gateway.agent import NetworkError

    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
        config = provider_config("openai", url).with_overrides({"main_agent.llm.max_retries": 0})
        with pytest.raises(NetworkError) as info:
            await Orchestrator(config).run_main_agent("x")
    assert f"{url}/chat/completions" in str(info.value)


async def test_starting_a_task_builds_no_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """Providers (one per task) share the process's TLS context: building one parses the CA
    bundle, tens of milliseconds of CPU that held up every other task on the event loop."""
    import httpcore2

    from gateway.agent.llm import make_provider
    from gateway.agent.llm.base import shared_ssl_context

    shared = shared_ssl_context()
    built: list[object] = []
    original = httpcore2.default_ssl_context

    def counting(**kwargs: bool) -> object:
        built.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(httpcore2, "default_ssl_context", counting)
    providers = [
        make_provider(provider_config(name, "https://llm.example/v1").main_agent.llm)
        for name in ("openai", "anthropic", "openai")
    ]
    try:
        assert built == []
        assert shared_ssl_context() is shared
    finally:
        for provider in providers:
            await provider.aclose()
