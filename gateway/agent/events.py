"""Core events: what the Orchestrator reports to its sink as a run happens.

Every event is a frozen dataclass carrying ``agent``, the agent path: ``main`` for the main agent,
``main/agent-worker#1`` for the first call of the ``agent-worker`` sub-agent, and so on for deeper
nesting. The sink is called synchronously, in order, from the task running the agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Channel = Literal["text", "reasoning"]
Phase = Literal["turn", "summary"]


@dataclass(frozen=True, slots=True)
class StepEvent:
    """A step of the loop.

    ``step`` is one of: ``tools_listed``, ``turn_started``, ``tool_calls_skipped``,
    ``subagent_started``, ``subagent_finished``, ``max_turns_reached``, ``context_limit``
    (the loop hit the context window, or the summary dropped an exchange to retry),
    ``summarising``, ``retrying`` (backoff before repeating a failed LLM call), ``finished``.
    """

    agent: str
    step: str
    message: str
    turn: int | None = None


@dataclass(frozen=True, slots=True)
class LLMDelta:
    """A piece of model output as it streams."""

    agent: str
    text: str
    channel: Channel
    phase: Phase
    turn: int


@dataclass(frozen=True, slots=True)
class ToolStart:
    """A tool (or sub-agent: ``server="agents"``) call begins."""

    agent: str
    call_id: str
    server: str
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolEnd:
    """A tool call ended: exactly one of ``result`` and ``error`` is set."""

    agent: str
    call_id: str
    server: str
    tool: str
    result: str | None
    error: str | None
    duration_s: float


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """Token usage of one LLM call."""

    agent: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class AgentErrorEvent:
    """A non-fatal error: a tool failed, an LLM call will be retried, a sub-agent failed."""

    agent: str
    code: str
    message: str
    retryable: bool


CoreEvent = StepEvent | LLMDelta | ToolStart | ToolEnd | UsageEvent | AgentErrorEvent
