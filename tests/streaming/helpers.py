"""Helpers for the streaming tests: demo configs, draining, normalising merged deltas."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.agent import AgentConfig, load_config
from protocol.events import TERMINAL_KINDS, Event, LlmResponse

RESEARCH = "Please research what 17*23+4 is"
W = "main/agent-worker#1"

EXPECTED_RESEARCH_SHAPE = [
    ("task_started", "main"),
    ("task_progress", "main", "tools_listed"),
    ("task_progress", "main", "turn_started"),
    ("llm_response", "main", "reasoning", "turn", 1),
    ("llm_response", "main", "text", "turn", 1),
    ("tool_call_start", "main", "agents", "agent-worker"),
    ("task_progress", W, "subagent_started"),
    ("task_progress", W, "tools_listed"),
    ("task_progress", W, "turn_started"),
    ("llm_response", W, "reasoning", "turn", 1),
    ("llm_response", W, "text", "turn", 1),
    ("tool_call_start", W, "calculator", "calculate"),
    ("tool_call_complete", W, "calculator", "calculate"),
    ("task_progress", W, "turn_started"),
    ("llm_response", W, "reasoning", "turn", 2),
    ("llm_response", W, "text", "turn", 2),
    ("task_progress", W, "summarising"),
    ("llm_response", W, "reasoning", "summary", 0),
    ("llm_response", W, "text", "summary", 0),
    ("task_progress", W, "subagent_finished"),
    ("tool_call_complete", "main", "agents", "agent-worker"),
    ("task_progress", "main", "turn_started"),
    ("llm_response", "main", "reasoning", "turn", 2),
    ("llm_response", "main", "text", "turn", 2),
    ("task_progress", "main", "summarising"),
    ("llm_response", "main", "reasoning", "summary", 0),
    ("llm_response", "main", "text", "summary", 0),
    ("task_completed", "main"),
]


def demo_config(pace_ms: float = 0.0, **overrides: Any) -> AgentConfig:
    """The built-in demo config; ``pace_ms=0`` never sleeps."""
    return load_config(None, {"llm.pace_ms": pace_ms, **overrides})


def kind(event: Event) -> str:
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def terminals(events: list[Event]) -> list[Event]:
    return [e for e in events if kind(e) in TERMINAL_KINDS]


async def drain(stream: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in stream]


def shape(events: list[Event]) -> list[tuple[Any, ...]]:
    """A comparable outline of a run: consecutive deltas of one agent/channel/phase/turn are one
    entry (they may be merged or not, depending on timing), text is left out."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        k = kind(e)
        if isinstance(e, LlmResponse):
            key: tuple[Any, ...] = (k, e.agent, e.channel, e.phase, e.turn)
            if out and out[-1] == key:
                continue
            out.append(key)
        elif k == "task_progress":
            out.append((k, e.agent, e.step))  # type: ignore[union-attr]
        elif k in {"tool_call_start", "tool_call_complete"}:
            out.append((k, e.agent, e.server, e.tool))  # type: ignore[union-attr]
        else:
            out.append((k, e.agent))
    return out


def text_of(events: list[Event], agent: str = "main", channel: str = "text") -> str:
    return "".join(
        e.delta
        for e in events
        if isinstance(e, LlmResponse) and e.agent == agent and e.channel == channel
    )
