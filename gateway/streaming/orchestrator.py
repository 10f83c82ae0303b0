"""The StreamingOrchestrator: the agent core as a runner (see :mod:`.runner`).

Composition, not inheritance: for each task :meth:`StreamingOrchestrator.run` builds a
:class:`gateway.agent.Orchestrator` whose *sink* translates each core event (:mod:`.translate`)
and hands it to ``emit`` in the core's own call, then awaits ``run_main_agent`` in the task
that awaits the runner. There is no queue and no extra asyncio task between the core and the
caller: the task manager's per-event path is the sink.

A run emits ``task_started`` first and returns its terminal event: ``task_completed``, or
``task_failed`` when the core raised (mapped by :meth:`Translator.failure`) or the options
were invalid (``invalid_config``).

Cancellation policy: the run is cancelled by cancelling the task that awaits it; the core then
closes its HTTP streams and cancels its tool calls (see :mod:`gateway.agent`) and the
:exc:`asyncio.CancelledError` propagates to the caller at once, which turns a requested cancel
into ``task_cancelled`` (:func:`.runner.outcome`). The run's stdio MCP servers finish shutting
down in the background (:func:`gateway.agent.stop_tool_servers` waits for them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from gateway.agent import (
    AgentConfig,
    AgentConfigError,
    AgentError,
    CoreEvent,
    FileSource,
    Orchestrator,
    TaskFile,
    TaskInputError,
    TraceStore,
)
from gateway.agent import default_config as _default_config
from gateway.agent import load_agents as _load_agents
from gateway.agent import load_config as _load_config
from protocol.events import Event, TaskCompleted, TaskProgress
from protocol.frames import StartOptions

from .runner import Emit, Runner, TaskSpec, TaskStream, Turn, new_spec
from .translate import DEFAULT_RESULT_PREVIEW_CHARS, Translator

__all__ = ["LoadedAgents", "StreamingOrchestrator", "agent_runner", "load_agents", "runner_factory"]

DEFAULT_AGENT = "default"

HISTORY_CHARS = 48_000
"""Characters of earlier turns a task's model receives at most (about 12k tokens); the oldest
turns are dropped first. A turn whose call still exceeds the model's context drops more."""

DEMO_APPROVAL_AGENT = "demo-approval"
"""A built-in agent: the offline demo whose calculator calls wait for an approval."""


def fit_history(history: Sequence[Turn], budget: int) -> tuple[list[tuple[str, str]], int]:
    """The newest turns whose text fits ``budget`` characters, oldest first, and how many
    older ones were dropped. A long answer is shortened to its end rather than dropped."""
    kept: list[tuple[str, str]] = []
    used = 0
    for turn in reversed(history):
        answer = turn.answer
        size = len(turn.input) + len(answer)
        if used + size > budget:
            room = budget - used - len(turn.input)
            if kept or room < 200:
                break
            answer = "…" + answer[-room:]
            size = len(turn.input) + len(answer)
        kept.append((turn.input, answer))
        used += size
    kept.reverse()
    return kept, len(history) - len(kept)


class StreamingOrchestrator:
    """Runs tasks on the agent core and streams their events.

    ``config`` is the default agent configuration (the offline demo when omitted);
    ``agents`` names other configurations a task may pick with ``StartOptions.agent``.
    Per-task ``model``, ``max_turns`` and ``chinese_context`` are applied as config overrides.
    """

    def __init__(
        self,
        config: AgentConfig | None = None,
        *,
        agents: Mapping[str, AgentConfig] | None = None,
        preview_chars: int = DEFAULT_RESULT_PREVIEW_CHARS,
        files: FileSource | None = None,
        traces: TraceStore | None = None,
    ) -> None:
        self.config = config if config is not None else _default_config()
        self.agents: dict[str, AgentConfig] = dict(agents or {})
        self.preview_chars = preview_chars
        self.history_chars = HISTORY_CHARS
        self.files = files
        """Where ``StartOptions.files`` ids are looked up (``None``: tasks take no files)."""
        self.traces = traces
        """Where every task's trace is kept for its owner (``None``: not kept)."""
        self._configs: dict[tuple[Any, ...], AgentConfig] = {}

    async def run(self, spec: TaskSpec, emit: Emit) -> Event:
        """The runner (:data:`.runner.Runner`): ``TaskManager(streaming.run)``."""
        translate = Translator(preview_chars=self.preview_chars)
        file_ids = list(spec.options.files or [])
        try:
            agent_name, config = self.resolve(spec.options)
            files = self._files(spec.owner, file_ids)
        except AgentError as exc:
            emit(translate.started(spec.input, DEFAULT_AGENT, ""))
            return translate.failure(exc)
        llm = config.main_agent.llm
        history, dropped = fit_history(spec.history, self.history_chars)
        started = translate.started(spec.input, agent_name, llm.model_name, llm.provider)
        if spec.thread_id is not None:
            started = msgspec.structs.replace(
                started, thread_id=spec.thread_id, history_turns=len(history)
            )
        emit(started)
        if dropped:
            emit(
                TaskProgress(
                    step="history_trimmed",
                    message=f"dropped the {dropped} oldest earlier turns of the conversation "
                    "to fit the model's context",
                )
            )

        def sink(core_event: CoreEvent) -> None:
            event = translate(core_event)
            if event is not None:
                emit(event)

        if spec.interaction is not None:  # the agent config's wait, unless the task set one
            spec.interaction.set_timeout(
                config.input_timeout if spec.options.input_timeout is None else None,
                config.on_input_timeout if spec.options.on_input_timeout is None else None,
            )
        orchestrator = Orchestrator(config, sink=sink)
        # Let ``task_started`` leave before the first turn: a model that streams without
        # waiting on the network (the demo, a cached reply) would otherwise hold the loop,
        # and with it the first event, until its first real wait.
        await asyncio.sleep(0)
        if self.traces is not None:
            self.traces.started(spec.owner, spec.task_id, orchestrator.trace)
        try:
            summary, final_answer = await orchestrator.run_main_agent(
                spec.input,
                task_id=spec.task_id,
                files=files,
                history=history,
                interaction=spec.interaction,
                require_approval=(spec.options.require_approval or ()),
            )
        except Exception as exc:  # CancelledError is not one: it propagates
            return translate.failure(exc)
        finally:
            if files and self.files is not None:
                self.files.release(spec.owner, file_ids)
            if self.traces is not None:
                self.traces.finished(spec.owner, spec.task_id)
        return TaskCompleted(final_answer=final_answer, summary=summary, usage=translate.usage)

    def execute_task_streaming(
        self,
        task: str,
        options: StartOptions | None = None,
        *,
        task_id: str | None = None,
        owner: str = "",
    ) -> TaskStream:
        """Run ``task`` and stream its events (see :class:`.runner.TaskStream`). Never raises:
        invalid options (or files ``owner`` has not uploaded) end the stream with
        ``task_failed``."""
        spec = new_spec(task, options, task_id)
        if owner:
            spec = TaskSpec(owner, spec.task_id, spec.input, spec.options)
        return TaskStream(self.run, spec)

    def resolve(self, options: StartOptions | None) -> tuple[str, AgentConfig]:
        """The agent name and configuration for ``options``; raises :class:`AgentConfigError`."""
        name = DEFAULT_AGENT
        model = max_turns = chinese = None
        if options is not None:
            name = options.agent or DEFAULT_AGENT
            model, max_turns, chinese = options.model, options.max_turns, options.chinese_context
        key = (name, model, max_turns, chinese)
        config = self._configs.get(key)
        if config is not None:
            return name, config
        if name == DEFAULT_AGENT:
            base = self.config
        else:
            found = self.agents.get(name)
            if found is None and name == DEMO_APPROVAL_AGENT:
                demo = self.config
                if demo.main_agent.llm.provider != "demo":
                    demo = _default_config()
                found = demo.with_overrides({"require_approval": ["calculator"]})
            if found is None:
                known = ", ".join(sorted({DEFAULT_AGENT, DEMO_APPROVAL_AGENT, *self.agents}))
                raise AgentConfigError("agent", f"unknown agent {name!r} (known: {known})")
            base = found
        if model is None and max_turns is None and chinese is None:
            config = base
        else:
            config = base.with_overrides(model=model, max_turns=max_turns, chinese_context=chinese)
        if len(self._configs) >= 256:  # many distinct overrides: keep the cache bounded
            self._configs.clear()
        self._configs[key] = config
        return name, config

    def _files(self, owner: str, file_ids: Sequence[str]) -> list[TaskFile]:
        if not file_ids:
            return []
        if self.files is None:
            raise TaskInputError("this server takes no files (no file store is configured)")
        return self.files.acquire(owner, file_ids)

    @property
    def runner(self) -> Runner:
        """The same as :meth:`run` (the name the task manager's examples use)."""
        return self.run


LoadedAgents = tuple[AgentConfig, dict[str, AgentConfig]]
"""The default agent's config and every agent selectable by name (``options.agent``)."""


def load_agents(config: AgentConfig | str | Path | None = None) -> LoadedAgents:
    """Load an agent config once: a loaded one, a YAML path, a config directory whose agents
    become selectable by name, or ``None`` for the built-in demo config. Raises
    :class:`AgentConfigError` naming the file and the key."""
    if isinstance(config, AgentConfig):
        return config, {}
    if isinstance(config, str | Path) and Path(config).is_dir():
        default, found = _load_agents(config)
        return found[default], dict(found)
    return _load_config(config), {}


def agent_runner(
    config: AgentConfig | str | Path | None = None,
    *,
    agents: Mapping[str, AgentConfig] | None = None,
    files: FileSource | None = None,
    traces: TraceStore | None = None,
    loaded: LoadedAgents | None = None,
) -> Runner:
    """The runner for an agent config (see :func:`load_agents`; ``loaded`` is one loaded
    before)."""
    default, found = loaded if loaded is not None else load_agents(config)
    return StreamingOrchestrator(
        default, agents={**found, **(agents or {})}, files=files, traces=traces
    ).run


runner_factory = agent_runner
"""The former name of :func:`agent_runner`."""
