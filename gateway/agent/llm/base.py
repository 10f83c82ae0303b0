"""The provider interface: neutral messages in, neutral deltas out.

A provider has one method, :meth:`LLMProvider.stream`, an async context manager::

    async with provider.stream(request) as deltas:
        async for delta in deltas:
            ...

Leaving the ``async with`` block — normally, by ``break``, by an exception or by cancellation —
closes the HTTP stream. Errors are raised as the :mod:`gateway.agent.errors` ``LLMError`` tree,
whether they happen when the request is sent or in the middle of the stream.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx2

Role = Literal["system", "user", "assistant", "tool"]

TOOL_SEPARATOR = "__"
"""Model-facing tool names are ``server__tool``."""
StopReason = Literal["end_turn", "tool_use", "max_tokens", "context_limit", "other"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call made by the model. ``arguments`` is the raw JSON text the model produced."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """A provider-neutral chat message."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # for role="tool": the call answered
    is_error: bool = False  # for role="tool": the tool failed
    # Anthropic extended thinking must be sent back, signed, with the tool_use it led to.
    reasoning: str = ""
    reasoning_signature: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool definition as shown to the model."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LLMRequest:
    messages: Sequence[Message]
    tools: Sequence[ToolSpec] = ()
    phase: Literal["turn", "summary"] = "turn"


# --- neutral deltas ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningSignature:
    """The provider's signature over the reasoning just streamed (Anthropic thinking)."""

    signature: str


@dataclass(frozen=True, slots=True)
class ToolCallBegin:
    """The model began a tool call (named ``Begin`` so that it is never confused with the
    protocol's ``tool_call_start`` event, which is the agent starting to run the tool)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgs:
    index: int
    fragment: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of one model call (the protocol's ``Usage`` is a task's total)."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Stop:
    reason: StopReason


Delta = (
    TextDelta
    | ReasoningDelta
    | ReasoningSignature
    | ToolCallBegin
    | ToolCallArgs
    | ToolCallEnd
    | TokenUsage
    | Stop
)


class LLMProvider(Protocol):
    """One language-model backend."""

    name: str

    def stream(self, request: LLMRequest) -> AbstractAsyncContextManager[AsyncIterator[Delta]]:
        """Start one streaming call; the context manager owns the HTTP stream."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP client."""
        ...


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """The TLS context of every provider's HTTP client in this process (the SDKs' default one,
    made once).

    Left to themselves the SDKs make one per client, and a provider (so a client) is made per
    task: parsing the CA bundle costs tens of milliseconds of CPU on the event loop, which held
    up every other task's events, and cancels, whenever a task started (the cancel benchmark's
    p99). An ``SSLContext`` is meant to be shared; it is only read once configured."""
    return httpx2.create_ssl_context()


def with_url(message: str, exc: Exception, url: str) -> str:
    """``message`` naming the URL tried, without its query string (which may hold secrets)."""
    request = getattr(exc, "request", None)
    try:
        tried = str(request.url.copy_with(query=None)) if request is not None else url
    except Exception:  # a request without a usable URL: fall back to the configured endpoint
        tried = url
    return f"{message} (POST {tried})" if tried else message


@dataclass(slots=True)
class _PendingCall:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ToolCallAssembler:
    """Builds complete :class:`ToolCall` objects from start / fragment / end deltas."""

    _calls: dict[int, _PendingCall] = field(default_factory=dict)

    def feed(self, delta: Delta) -> None:
        if isinstance(delta, ToolCallBegin):
            self._calls[delta.index] = _PendingCall(delta.id, delta.name)
        elif isinstance(delta, ToolCallArgs) and delta.index in self._calls:
            self._calls[delta.index].arguments.append(delta.fragment)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(c.id, c.name, "".join(c.arguments) or "{}")
            for _, c in sorted(self._calls.items())
        )
