"""Streaming: the runner contract, and the agent core as a runner.

:mod:`.runner` holds the contract every task's work follows — ``async (spec, emit) -> terminal
event`` — with :class:`TaskSpec`, the one place where a run's end becomes its terminal event
(:func:`outcome`) and :class:`TaskStream`, an async iterator over one run for scripts. It
imports only :mod:`protocol`, so the task manager builds on it without loading the agent.

:class:`StreamingOrchestrator` runs tasks on the core Orchestrator (``run`` is its runner;
``execute_task_streaming(task, options) -> TaskStream``); :mod:`.translate` is the only place
where core events become wire events. Those two load the agent stack, on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .runner import Emit, Interaction, Runner, TaskSpec, TaskStream, Turn, outcome

if TYPE_CHECKING:
    from .orchestrator import (
        LoadedAgents,
        StreamingOrchestrator,
        agent_runner,
        load_agents,
        runner_factory,
    )
    from .translate import DEFAULT_RESULT_PREVIEW_CHARS, Translator

__all__ = [
    "DEFAULT_RESULT_PREVIEW_CHARS",
    "Emit",
    "Interaction",
    "LoadedAgents",
    "Runner",
    "StreamingOrchestrator",
    "TaskSpec",
    "TaskStream",
    "Translator",
    "Turn",
    "agent_runner",
    "load_agents",
    "outcome",
    "runner_factory",
]

_LAZY = {
    "StreamingOrchestrator": ".orchestrator",
    "agent_runner": ".orchestrator",
    "load_agents": ".orchestrator",
    "LoadedAgents": ".orchestrator",
    "runner_factory": ".orchestrator",
    "DEFAULT_RESULT_PREVIEW_CHARS": ".translate",
    "Translator": ".translate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
