"""The agent core: MiroFlow's agent loop with streaming LLM providers, MCP tools and sub-agents.

It runs without any server::

    from gateway.agent import Orchestrator, load_config

    config = load_config(None, {"max_turns": 5})        # None: the built-in demo config
    orchestrator = Orchestrator(config, sink=print)     # sink: every core event, synchronously
    summary, answer = await orchestrator.run_main_agent("What is 17*23+4?", task_id="t1")

Per-task options
    The gateway passes a task's options as config overrides:
    ``config.with_overrides(model=..., max_turns=..., chinese_context=...)`` (``None`` values are
    ignored; ``model`` changes the main agent's ``llm.model_name``, which sub-agents without their
    own inherit), or any dotted key: ``config.with_overrides({"main_agent.keep_tool_result": 3})``.
    :func:`load_config` takes the same overrides as its second argument.

Events
    ``sink(event)`` receives, in order, the frozen dataclasses of :mod:`gateway.agent.events`:
    :class:`StepEvent`, :class:`LLMDelta`, :class:`ToolStart`, :class:`ToolEnd`,
    :class:`UsageEvent`, :class:`AgentErrorEvent`; each carries the agent path (``main``,
    ``main/agent-worker#1``, ...). A sub-agent call is a ToolStart/ToolEnd with
    ``server="agents"`` on the parent's path, and the nested agent's events on its own path.

Files and traces
    ``run_main_agent(task, task_file_name=None, task_id=None, files=())`` takes files like
    MiroFlow's (a local path, or :class:`TaskFile` values): the agent is told their paths and
    opens them with its tools. ``orchestrator.trace`` records the run (messages of every agent,
    tool calls with arguments and results, steps, usage, timings, outcome;
    :mod:`gateway.agent.trace`), written to ``config.output_dir`` when set.

Outcome
    ``run_main_agent`` returns ``(summary, final_answer)``, or raises:
    :class:`TaskFailedError` (``reason``, ``summary``) when the summary needed history to be
    dropped for the context window, or could not be written at all — the task is to be reported
    as failed; an :class:`LLMError` subclass when the model cannot be used (after retries).
    Everything it raises, except cancellation, is an :class:`AgentError`.

Cancellation policy
    Cancelling the asyncio task that runs ``run_main_agent`` stops it at its current await:
    the provider's HTTP stream is closed (the SDK stream is used as ``async with``), a running MCP
    tool call is cancelled (a stdio server receives ``notifications/cancelled``), a running
    sub-agent is cancelled with it, and the HTTP clients the run opened are closed before
    ``CancelledError`` propagates. The run's stdio server subprocesses are then shutting down in
    the background (each owned by a task of its own, bounded by the SDK's grace periods):
    ``await stop_tool_servers()`` waits for them, and a program that cancels runs awaits it
    before its event loop closes (the gateway does at shutdown). A run that ends otherwise has
    stopped its servers before it returns. ``CancelledError`` is never swallowed
    or turned into another error. A tool call that was running gets a ``ToolEnd`` with
    ``error="cancelled"``. Per-call tool timeouts are deadlines: they cancel the call (with the
    same notification) and are reported to the model as a tool error.

Errors (see :mod:`gateway.agent.errors`)::

    AgentError
    ├── AgentConfigError          (key)
    ├── LLMError             (provider, status_code; the provider's message kept)
    │   ├── ContextLimitError, RateLimitError, AuthError, NetworkError, BadRequestError
    ├── TaskInputError       a task file that does not exist, an unknown upload
    ├── ToolError            (server, tool) — reported to the model, never raised to the caller
    └── TaskFailedError      (reason, summary)
"""

from __future__ import annotations

from .config import (
    AgentConfig,
    AgentSpec,
    LLMConfig,
    ToolServerConfig,
    default_config,
    load_agents,
    load_config,
)
from .errors import (
    AgentConfigError,
    AgentError,
    AuthError,
    BadRequestError,
    ContextLimitError,
    LLMError,
    NetworkError,
    RateLimitError,
    TaskFailedError,
    TaskInputError,
    ToolError,
)
from .events import (
    AgentErrorEvent,
    CoreEvent,
    LLMDelta,
    StepEvent,
    ToolEnd,
    ToolStart,
    UsageEvent,
)
from .files import FileSource, TaskFile
from .orchestrator import Orchestrator, Sink
from .prompts import extract_boxed
from .tools import stop_tool_servers
from .trace import TraceRecorder, TraceStore

__all__ = [
    "AgentConfig",
    "AgentConfigError",
    "AgentError",
    "AgentErrorEvent",
    "AgentSpec",
    "AuthError",
    "BadRequestError",
    "ContextLimitError",
    "CoreEvent",
    "FileSource",
    "LLMConfig",
    "LLMDelta",
    "LLMError",
    "NetworkError",
    "Orchestrator",
    "RateLimitError",
    "Sink",
    "StepEvent",
    "TaskFailedError",
    "TaskFile",
    "TaskInputError",
    "ToolEnd",
    "ToolError",
    "ToolServerConfig",
    "ToolStart",
    "TraceRecorder",
    "TraceStore",
    "UsageEvent",
    "default_config",
    "extract_boxed",
    "load_agents",
    "load_config",
    "stop_tool_servers",
]
