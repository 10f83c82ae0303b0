"""A synthetic task: the shape of a demo agent run, replayed without the agent.

Every server of the transport benchmarks (the gateway, the peers and the raw endpoint) streams
the same events, made here, so that what differs between them is only the transport: the
agent's own cost is measured separately (the end-to-end rows run the real demo model).

A replay task is described by its input, ``replay:<events>:<pace_ms>``: ``events`` events in
all (``task_started``, progress, word-sized ``llm_response`` deltas, a tool call, the terminal
``task_completed``), one every ``pace_ms`` milliseconds (``0``: as fast as the loop runs; every
event still yields to the event loop once, as a real LLM stream does between network reads).

A paced task keeps to its schedule (event *k* is due ``k × pace_ms`` after the start) instead of
sleeping ``pace_ms`` after each event: a server that falls behind gets its events in a burst
when it catches up, as it would from a model that keeps streaming, and cannot lower the load it
is offered by being slow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from gateway.streaming.runner import Emit, TaskSpec
from protocol.events import (
    TERMINAL_STATES,
    Event,
    LlmResponse,
    TaskCompleted,
    TaskProgress,
    TaskStarted,
    ToolCallComplete,
    ToolCallStart,
    Usage,
)
from protocol.frames import EventFrame

__all__ = [
    "events",
    "frames",
    "parse_input",
    "replay_factory",
    "replay_input",
    "replay_runner",
]

_WORDS = [
    "The",
    "question",
    "contains",
    "the",
    "arithmetic",
    "expression",
    "17*23+4.",
    "Rather",
    "than",
    "working",
    "it",
    "out",
    "in",
    "my",
    "head,",
    "I",
    "will",
    "use",
    "the",
    "calculator",
    "tool",
    "and",
    "then",
    "report",
    "the",
    "result.",
    "",
]


def replay_input(n_events: int, pace_ms: float = 0.0) -> str:
    """The ``start`` input that asks a replay runner for ``n_events`` events."""
    return f"replay:{n_events}:{pace_ms:g}"


def parse_input(text: str) -> tuple[int, float]:
    """``(events, pace seconds)`` of a replay input; a non-replay input gives a short task."""
    parts = text.split(":")
    if len(parts) == 3 and parts[0] == "replay":
        return max(3, int(parts[1])), float(parts[2]) / 1000.0
    return 16, 0.0


def events(n: int) -> Iterator[Event]:
    """The ``n`` events of one replayed task (at least 3), terminal event last."""
    n = max(3, n)
    yield TaskStarted(input="replay", agent_name="main", model="replay", provider="demo")
    body = n - 2
    tool_at = body // 2 if body >= 8 else -1
    emitted = 0
    i = 0
    while emitted < body:
        if i == 0:
            yield TaskProgress(step="turn_started", turn=1)
        elif i == tool_at:
            yield ToolCallStart(
                call_id="c1", server="calculator", tool="calculate", arguments={"e": "17*23+4"}
            )
        elif i == tool_at + 1:
            yield ToolCallComplete(
                call_id="c1", server="calculator", tool="calculate", result="395", duration_ms=0.4
            )
        else:
            word = _WORDS[i % len(_WORDS)] + " "
            if i < body // 2:
                yield LlmResponse(delta=word, channel="reasoning", turn=1)
            else:
                yield LlmResponse(delta=word, channel="text", turn=1)
        emitted += 1
        i += 1
    yield TaskCompleted(
        final_answer="395",
        summary="Final answer: \\boxed{395}",
        usage=Usage(input_tokens=120, output_tokens=n),
    )


def frames(task_id: str, n: int) -> list[EventFrame]:
    """The events of one replayed task as wire frames (``ts`` of now)."""
    ts = time.time()
    return [
        EventFrame(task_id=task_id, seq=seq, ts=ts, event=ev)
        for seq, ev in enumerate(events(n), start=1)
    ]


async def replay_runner(spec: TaskSpec, emit: Emit) -> Event:
    """A runner (:data:`gateway.streaming.Runner`) replaying :func:`events` as its input
    says; cancelled between events like any runner."""
    n, pace = parse_input(spec.input)
    loop = asyncio.get_running_loop()
    due = loop.time()
    for event in events(n):
        due += pace
        # pace 0 (or behind schedule): one pass of the event loop, as a network read would
        await asyncio.sleep(max(0.0, due - loop.time()))
        if type(event) in TERMINAL_STATES:
            return event
        emit(event)
    return TaskCompleted(final_answer="395")


replay_factory = replay_runner
"""The former name of :func:`replay_runner`."""
