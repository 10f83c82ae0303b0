"""Task traces: what happened in one run, like MiroFlow's task log.

Every :class:`~gateway.agent.Orchestrator` keeps a :class:`TraceRecorder` (``orchestrator.trace``)
fed by the same hooks as its sink: every event except the streamed text deltas (whose text is in
the messages), plus a reference to each agent's message history. Recording is an append per
event; the JSON-ready form is built only when asked for (:meth:`TraceRecorder.to_dict`), so
nothing costly runs while the task streams.

A trace (``to_dict()``)::

    {"task_id", "status": running|completed|failed|cancelled, "input", "files": [...],
     "started_at", "ended_at", "duration_s",                      # wall-clock seconds (epoch)
     "final_answer", "summary", "error",
     "usage": {"input_tokens", "output_tokens"},
     "agents": {"main": {"name", "task", "started_at", "ended_at", "usage",
                         "messages": [{"role", "content", "tool_calls", "tool_call_id", ...}]},
                "main/agent-worker#1": {...}},
     "tool_calls": [{"agent", "call_id", "server", "tool", "arguments", "result", "error",
                     "started_at", "duration_s"}],
     "steps": [{"agent", "step", "message", "turn", "at"}],
     "errors": [{"agent", "code", "message", "retryable", "at"}]}

:class:`TraceStore` keeps the traces of a process's tasks for their owners, bounded in count and
kept as long as a finished task is (``retain_s``), and writes each finished trace to a directory
when one is configured.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .events import AgentErrorEvent, CoreEvent, StepEvent, ToolEnd, ToolStart, UsageEvent
from .files import TaskFile
from .llm import Message

__all__ = ["TraceRecorder", "TraceStore", "write_trace"]

log = logging.getLogger("gateway.agent.trace")


@dataclass(slots=True)
class _Agent:
    name: str
    task: str
    messages: list[Message]
    started_at: float
    ended_at: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class TraceRecorder:
    """Collects one run's trace (see the module docstring)."""

    task_id: str = ""
    input: str = ""
    files: Sequence[TaskFile] = ()
    status: str = "running"
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    final_answer: str = ""
    summary: str = ""
    error: str = ""
    _agents: dict[str, _Agent] = field(default_factory=dict)
    _tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    _tool_order: list[dict[str, Any]] = field(default_factory=list)
    _steps: list[dict[str, Any]] = field(default_factory=list)
    _errors: list[dict[str, Any]] = field(default_factory=list)

    # -- fed by the Orchestrator

    def begin(self, task_id: str, task: str, files: Sequence[TaskFile]) -> None:
        self.task_id, self.input, self.files = task_id, task, files
        self.started_at = time.time()

    def agent_started(self, path: str, name: str, task: str, messages: list[Message]) -> None:
        """``messages`` is the agent's live history: it is read when the trace is built."""
        self._agents[path] = _Agent(name, task, messages, time.time())

    def agent_finished(self, path: str) -> None:
        agent = self._agents.get(path)
        if agent is not None:
            agent.ended_at = time.time()

    def __call__(self, event: CoreEvent) -> None:
        """The sink side: every event except text deltas."""
        now = time.time()
        if isinstance(event, ToolStart):
            call = {
                "agent": event.agent,
                "call_id": event.call_id,
                "server": event.server,
                "tool": event.tool,
                "arguments": event.arguments,
                "result": None,
                "error": None,
                "started_at": now,
                "duration_s": None,
            }
            self._tools[event.call_id] = call
            self._tool_order.append(call)
        elif isinstance(event, ToolEnd):
            found = self._tools.pop(event.call_id, None)
            if found is not None:
                found.update(result=event.result, error=event.error, duration_s=event.duration_s)
        elif isinstance(event, UsageEvent):
            agent = self._agents.get(event.agent)
            if agent is not None:
                agent.input_tokens += event.input_tokens
                agent.output_tokens += event.output_tokens
        elif isinstance(event, StepEvent):
            self._steps.append(
                {
                    "agent": event.agent,
                    "step": event.step,
                    "message": event.message,
                    "turn": event.turn,
                    "at": now,
                }
            )
        elif isinstance(event, AgentErrorEvent):
            self._errors.append(
                {
                    "agent": event.agent,
                    "code": event.code,
                    "message": event.message,
                    "retryable": event.retryable,
                    "at": now,
                }
            )

    def finish(
        self, status: str, *, summary: str = "", final_answer: str = "", error: str = ""
    ) -> None:
        """The run ended (``completed``, ``failed`` or ``cancelled``)."""
        self.status, self.summary, self.final_answer, self.error = (
            status,
            summary,
            final_answer,
            error,
        )
        self.ended_at = time.time()

    # -- read

    def to_dict(self) -> dict[str, Any]:
        """The trace as JSON-ready data (a snapshot while the run goes on)."""
        agents = {path: _agent_dict(agent) for path, agent in list(self._agents.items())}
        input_tokens = sum(a.input_tokens for a in self._agents.values())
        output_tokens = sum(a.output_tokens for a in self._agents.values())
        ended = self.ended_at
        return {
            "task_id": self.task_id,
            "status": self.status,
            "input": self.input,
            "files": [
                {
                    "file_id": f.file_id,
                    "name": f.name,
                    "path": str(f.path),
                    "content_type": f.content_type,
                    "size": f.size,
                }
                for f in self.files
            ],
            "started_at": self.started_at,
            "ended_at": ended,
            "duration_s": None if ended is None else round(ended - self.started_at, 6),
            "final_answer": self.final_answer,
            "summary": self.summary,
            "error": self.error,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            "agents": agents,
            "tool_calls": [dict(c) for c in self._tool_order],
            "steps": list(self._steps),
            "errors": list(self._errors),
        }


def _agent_dict(agent: _Agent) -> dict[str, Any]:
    return {
        "name": agent.name,
        "task": agent.task,
        "started_at": agent.started_at,
        "ended_at": agent.ended_at,
        "usage": {"input_tokens": agent.input_tokens, "output_tokens": agent.output_tokens},
        "messages": [_message_dict(m) for m in list(agent.messages)],
    }


def _message_dict(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.is_error:
        out["is_error"] = True
    if m.reasoning:
        out["reasoning"] = m.reasoning
    return out


def write_trace(directory: Path, trace: dict[str, Any]) -> Path:
    """Write ``trace`` as ``<directory>/<task_id>.json`` (blocking: run it in a thread)."""
    directory.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in trace["task_id"]) or "task"
    path = directory / f"task_{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(trace, ensure_ascii=False, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


class TraceStore:
    """The traces of this process's tasks, by ``(owner, task_id)``.

    A trace is visible from its task's start; after the task ends it is kept ``retain_s``
    seconds (the task manager's retention of finished tasks), and at most ``max_traces``
    finished ones are kept, the oldest dropped first. Each call costs O(1) plus the traces it
    drops."""

    def __init__(self, *, retain_s: float = 3600.0, max_traces: int = 1000) -> None:
        self.retain_s = retain_s
        self.max_traces = max_traces
        self._running: dict[tuple[str, str], TraceRecorder] = {}
        # Finished traces in the order they finished, with when (monotonic).
        self._finished: OrderedDict[tuple[str, str], tuple[TraceRecorder, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._running) + len(self._finished)

    def started(self, owner: str, task_id: str, recorder: TraceRecorder) -> None:
        key = (owner, task_id)
        self._finished.pop(key, None)
        self._running[key] = recorder
        self._prune()

    def finished(self, owner: str, task_id: str) -> None:
        key = (owner, task_id)
        recorder = self._running.pop(key, None)
        if recorder is not None:
            self._finished[key] = (recorder, time.monotonic())
        self._prune()

    def get(self, owner: str, task_id: str) -> TraceRecorder | None:
        """The trace of ``owner``'s task, or ``None`` (also for another owner's task)."""
        self._prune()
        key = (owner, task_id)
        running = self._running.get(key)
        if running is not None:
            return running
        finished = self._finished.get(key)
        return None if finished is None else finished[0]

    def _prune(self) -> None:
        finished = self._finished
        limit = time.monotonic() - self.retain_s
        while finished:
            key, (_, at) = next(iter(finished.items()))
            if at > limit and len(finished) <= self.max_traces:
                break
            del finished[key]
