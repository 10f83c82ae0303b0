"""MiroThinker-style tool calling (``llm.tool_calling: mirothinker``) through the real openai
SDK against the fake server: tools in the system prompt, calls as ``<use_mcp_tool>`` blocks."""

from __future__ import annotations

import json

from gateway.agent import LLMDelta, Orchestrator, ToolEnd, ToolStart
from gateway.agent.llm.mirothinker import _Parser
from gateway.testing import Stream, fake_llm_server, openai_stream, openai_text_pieces

from .helpers import Recorder, provider_config

CALL = (
    "<use_mcp_tool>\n<server_name>calculator</server_name>\n<tool_name>calculate</tool_name>\n"
    '<arguments>\n{"expression": "17*23+4"}\n</arguments>\n</use_mcp_tool>'
)


async def test_text_streams_then_the_block_becomes_a_tool_call() -> None:
    # The opening tag is cut across chunks, as a model's tokens would cut it.
    cut = len("<use_mcp_tool>\n<server_name>calc")
    pieces = ["Let me ", "compute it.\n\n<use_", "mcp_tool>\n<server_name>calc", CALL[cut:]]
    assert "".join(pieces[1:]) == "compute it.\n\n" + CALL
    async with fake_llm_server() as server:
        server.add(
            Stream(openai_text_pieces(pieces)),
            Stream(openai_stream(text="It is 395.")),
            Stream(openai_stream(text="Report: \\boxed{395}")),
        )
        rec = Recorder()
        config = provider_config("openai", server.openai_url, **{"llm.tool_calling": "mirothinker"})
        _, answer = await Orchestrator(config, sink=rec).run_main_agent("What is 17*23+4?")
    assert answer == "395"
    # Text before the call streamed as deltas, the tag never shown; then the call.
    turn1 = [e for e in rec.events if isinstance(e, LLMDelta) and e.turn == 1]
    assert "".join(e.text for e in turn1) == "Let me compute it.\n\n"
    assert turn1[0].text == "Let me "  # streamed as it came, not at the end
    first_tool = next(i for i, e in enumerate(rec.events) if isinstance(e, ToolStart))
    last_text = max(i for i, e in enumerate(rec.events) if e in turn1)
    assert last_text < first_tool
    (start,) = rec.of(ToolStart)
    assert (start.server, start.tool, start.arguments) == (
        "calculator",
        "calculate",
        {"expression": "17*23+4"},
    )
    assert rec.of(ToolEnd)[0].result == "395"
    # What the SDK sent: no `tools` parameter, the tools in the system prompt; then the call
    # written back as a block and its result as the next user message.
    first, second, _ = server.requests
    assert "tools" not in first
    system = first["messages"][0]["content"]
    assert "<use_mcp_tool>" in system and "## Server: calculator" in system
    assert "### Tool: calculate" in system
    assert second["messages"][-2]["role"] == "assistant"
    assert second["messages"][-2]["content"].endswith("</use_mcp_tool>")
    assert second["messages"][-1] == {
        "role": "user",
        "content": "Result of calculator/calculate:\n395",
    }


def test_parser_holds_back_only_a_possible_tag() -> None:
    parser = _Parser()
    out = parser.feed("a < b and <use")
    assert [d.text for d in out] == ["a < b and "]  # type: ignore[union-attr]
    out = parser.feed("ful text")
    assert [d.text for d in out] == ["<useful text"]  # type: ignore[union-attr]
    assert parser.flush() == []


def test_a_block_cut_by_a_stop_sequence_is_still_a_call() -> None:
    parser = _Parser()
    parser.feed("ok " + CALL.removesuffix("</use_mcp_tool>"))
    deltas = parser.flush()
    assert [type(d).__name__ for d in deltas] == ["ToolCallBegin", "ToolCallArgs", "ToolCallEnd"]
    assert json.loads(deltas[1].fragment) == {"expression": "17*23+4"}  # type: ignore[union-attr]


def test_a_malformed_block_is_passed_on_as_text() -> None:
    parser = _Parser()
    out = parser.feed("x <use_mcp_tool>nonsense</use_mcp_tool> y")
    text = "".join(d.text for d in out)  # type: ignore[union-attr]
    assert text == "x <use_mcp_tool>nonsense</use_mcp_tool> y"
    assert parser.flush() == []


async def test_on_the_wire_text_streams_as_llm_response_then_tool_call_start() -> None:
    from gateway.streaming import StreamingOrchestrator
    from protocol.events import LlmResponse, TaskCompleted, ToolCallStart

    async with fake_llm_server() as server:
        server.add(
            Stream(openai_text_pieces(["Let me ", "compute it. ", CALL])),
            Stream(openai_stream(text="It is 395.")),
            Stream(openai_stream(text="Report: \\boxed{395}")),
        )
        config = provider_config("openai", server.openai_url, **{"llm.tool_calling": "mirothinker"})
        stream = StreamingOrchestrator(config).execute_task_streaming("What is 17*23+4?")
        events = [event async for event in stream]
    kinds = [type(e).__name__ for e in events]
    first_tool = kinds.index("ToolCallStart")
    before = [e for e in events[:first_tool] if isinstance(e, LlmResponse) and e.channel == "text"]
    assert "".join(e.delta for e in before) == "Let me compute it. "
    call = events[first_tool]
    assert isinstance(call, ToolCallStart)
    assert (call.server, call.tool, call.arguments) == (
        "calculator",
        "calculate",
        {"expression": "17*23+4"},
    )
    assert isinstance(events[-1], TaskCompleted) and events[-1].final_answer == "395"
