"""MiroThinker-style tool calling, as an option of any provider (``llm.tool_calling: mirothinker``).

MiroThinker models (and MiroFlow's prompts) do not use the API's tool calling: the tools are
described in the system prompt, and the model calls one by ending its reply with a block::

    <use_mcp_tool>
    <server_name>tool-search</server_name>
    <tool_name>search</tool_name>
    <arguments>
    {"query": "..."}
    </arguments>
    </use_mcp_tool>

:class:`PromptToolsProvider` wraps another provider and translates both ways, so the agent loop
sees the same neutral deltas as with native tool calling:

- out: the tool definitions go into the system prompt and none into the API request; earlier
  calls are written back into the assistant's text as blocks, and tool results are sent as the
  next user message (consecutive results merged into one);
- in, streamed: text before a block streams as :class:`TextDelta` as it arrives (only a tail
  that could be the start of ``<use_mcp_tool>`` is held back until the next chunk says), and a
  complete block becomes :class:`ToolCallBegin` / :class:`ToolCallArgs` / :class:`ToolCallEnd`.
  A block cut off by the end of the stream (a stop sequence at ``</use_mcp_tool>``) is still
  read when its fields are complete; otherwise its text is passed on as text.

Model-facing tool names are ``server__tool`` (:data:`TOOL_SEPARATOR`), split back into server and
tool names for the prompt.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from .base import (
    TOOL_SEPARATOR,
    Delta,
    LLMProvider,
    LLMRequest,
    Message,
    Stop,
    TextDelta,
    ToolCallArgs,
    ToolCallBegin,
    ToolCallEnd,
    ToolSpec,
)

__all__ = ["CLOSE_TAG", "OPEN_TAG", "PromptToolsProvider", "render_call", "tools_prompt"]

OPEN_TAG = "<use_mcp_tool>"
CLOSE_TAG = "</use_mcp_tool>"

_FIELDS = re.compile(
    r"<server_name>\s*(.*?)\s*</server_name>\s*<tool_name>\s*(.*?)\s*</tool_name>\s*"
    r"<arguments>\s*(.*?)\s*(?:</arguments>|$)",
    re.S,
)


def _split(name: str) -> tuple[str, str]:
    server, sep, tool = name.partition(TOOL_SEPARATOR)
    return (server, tool) if sep else ("", name)


def tools_prompt(tools: Sequence[ToolSpec]) -> str:
    """The system-prompt section that describes the tools and the call format."""
    lines = [
        "# Using tools",
        "",
        "You can call the tools listed below. To call one, end your reply with exactly one "
        f"block of this form and nothing after it:\n\n{OPEN_TAG}\n<server_name>server name"
        "</server_name>\n<tool_name>tool name</tool_name>\n<arguments>\n"
        '{"parameter": "value"}\n</arguments>\n' + CLOSE_TAG,
        "",
        "The arguments are one JSON object that follows the tool's input schema. The result "
        "comes back in the next user message. Answer without a block when you are done.",
        "",
    ]
    by_server: dict[str, list[tuple[str, ToolSpec]]] = {}
    for spec in tools:
        server, tool = _split(spec.name)
        by_server.setdefault(server, []).append((tool, spec))
    for server, entries in by_server.items():
        lines.append(f"## Server: {server}")
        for tool, spec in entries:
            lines.append(f"### Tool: {tool}")
            if spec.description:
                lines.append(spec.description)
            lines.append(f"Input schema: {json.dumps(spec.parameters, ensure_ascii=False)}")
        lines.append("")
    return "\n".join(lines).rstrip()


def render_call(name: str, arguments: str) -> str:
    """A call as the block the model would have written."""
    server, tool = _split(name)
    return (
        f"{OPEN_TAG}\n<server_name>{server}</server_name>\n<tool_name>{tool}</tool_name>\n"
        f"<arguments>\n{arguments}\n</arguments>\n{CLOSE_TAG}"
    )


def to_prompt_messages(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> list[Message]:
    """The history with tool use written as text (see the module docstring)."""
    out: list[tuple[Message, bool]] = []  # (message, made of tool results)
    names: dict[str, str] = {}
    system_done = False
    for m in messages:
        if m.role == "system" and not system_done:
            system_done = True
            text = m.content if not tools else f"{m.content}\n\n{tools_prompt(tools)}"
            out.append((Message("system", text), False))
        elif m.role == "assistant" and m.tool_calls:
            parts = [m.content.rstrip()] if m.content.strip() else []
            for c in m.tool_calls:
                names[c.id] = c.name
                parts.append(render_call(c.name, c.arguments))
            out.append((Message("assistant", "\n\n".join(parts), reasoning=m.reasoning), False))
        elif m.role == "tool":
            server, tool = _split(names.get(m.tool_call_id or "", "unknown"))
            label = "Error from" if m.is_error else "Result of"
            text = f"{label} {server}/{tool}:\n{m.content}"
            if out and out[-1][1]:
                text = f"{out.pop()[0].content}\n\n{text}"
            out.append((Message("user", text), True))
        else:
            out.append((m, False))
    if tools and not system_done:
        out.insert(0, (Message("system", tools_prompt(tools)), False))
    return [m for m, _ in out]


def _prefix_tail(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class _Parser:
    """Splits streamed text into plain text and ``<use_mcp_tool>`` calls."""

    def __init__(self) -> None:
        self.buffer = ""
        self.in_call = False
        self.calls = 0

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        self.buffer += text
        while True:
            if not self.in_call:
                pos = self.buffer.find(OPEN_TAG)
                if pos == -1:
                    keep = _prefix_tail(self.buffer, OPEN_TAG)
                    ready = self.buffer[: len(self.buffer) - keep]
                    if ready:
                        out.append(TextDelta(ready))
                    self.buffer = self.buffer[len(ready) :]
                    return out
                if pos:
                    out.append(TextDelta(self.buffer[:pos]))
                self.buffer = self.buffer[pos + len(OPEN_TAG) :]
                self.in_call = True
            else:
                pos = self.buffer.find(CLOSE_TAG)
                if pos == -1:
                    return out
                body = self.buffer[:pos]
                self.buffer = self.buffer[pos + len(CLOSE_TAG) :]
                self.in_call = False
                out.extend(self._call(body) or [TextDelta(OPEN_TAG + body + CLOSE_TAG)])

    def flush(self) -> list[Delta]:
        """The end of the stream: what is still held back."""
        rest, self.buffer = self.buffer, ""
        if not self.in_call:
            return [TextDelta(rest)] if rest else []
        self.in_call = False
        return self._call(rest) or [TextDelta(OPEN_TAG + rest)]

    def _call(self, body: str) -> list[Delta]:
        match = _FIELDS.search(body)
        if match is None:
            return []
        server, tool, arguments = match.groups()
        index = self.calls
        self.calls += 1
        call_id = f"mcp_{uuid.uuid4().hex[:16]}"
        name = f"{server}{TOOL_SEPARATOR}{tool}" if server else tool
        return [
            ToolCallBegin(index, call_id, name),
            ToolCallArgs(index, arguments.strip() or "{}"),
            ToolCallEnd(index),
        ]


class PromptToolsProvider:
    """Wraps a provider with MiroThinker-style tool calling (see the module docstring)."""

    def __init__(self, inner: LLMProvider) -> None:
        self.inner = inner
        self.name = inner.name

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        plain = LLMRequest(to_prompt_messages(request.messages, request.tools), (), request.phase)
        async with self.inner.stream(plain) as deltas:
            yield self._deltas(deltas)

    async def _deltas(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        parser = _Parser()
        stop: Stop | None = None
        async for delta in deltas:
            if isinstance(delta, TextDelta):
                for out in parser.feed(delta.text):
                    yield out
            elif isinstance(delta, Stop):
                stop = delta
            else:
                yield delta
        for out in parser.flush():
            yield out
        if parser.calls:
            yield Stop("tool_use")
        elif stop is not None:
            yield stop

    async def aclose(self) -> None:
        await self.inner.aclose()
