"""The StreamingOrchestrator: one core Orchestrator per task, its hooks turned into a stream.

Composition, not inheritance: for each task it builds a :class:`gateway.agent.Orchestrator`
with a *sink*, runs ``run_main_agent`` in a child asyncio task, and yields the translated
events (:mod:`.translate`) from an async generator, :class:`TaskStream`.

Every stream yields ``task_started`` first and then, unless its consumer stops early, exactly
one terminal event last: ``task_completed``, ``task_failed`` (the core raised, or the options
were invalid) or ``task_cancelled`` (after :meth:`TaskStream.cancel`, once the core has really
stopped).

Cancellation policy:

- :meth:`TaskStream.cancel` is the user's cancel: idempotent, never waits; the child task is
  cancelled, and when it has finished (HTTP streams closed, tool calls cancelled, MCP servers
  stopped — see :mod:`gateway.agent`) the stream yields ``task_cancelled`` and ends.
- A consumer that stops early (``aclose()``, ``break`` then close, garbage collection) stops the
  work: the child is cancelled and awaited before ``aclose()`` returns. No event follows.
- An external ``CancelledError`` in the consumer (its own task is cancelled) cancels and awaits
  the child the same way, then propagates; it is never turned into an event here.

The path from the core to the consumer is cheap and bounded in cost: the sink translates the
event and appends it to a deque (O(1)), waking the consumer only if it is waiting. While the
consumer lags, consecutive ``llm_response`` deltas of the same agent, channel, phase and turn are
merged into the queued one (as the protocol allows), so a burst of tokens costs one queue entry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from protocol.events import Event, LlmResponse, TaskCancelled, Usage
from protocol.frames import StartOptions

from .translate import DEFAULT_RESULT_PREVIEW_CHARS, Translator

if TYPE_CHECKING:
    from gateway.tasks import TaskSpec

__all__ = ["MERGE_LIMIT", "StreamingOrchestrator", "TaskStream", "runner_factory"]

MERGE_LIMIT = 4096
"""Largest delta (characters) a lagging consumer's queued ``llm_response`` grows to by merging."""

DEFAULT_AGENT = "default"


class TaskStream(AsyncGenerator[Event, None]):
    """The events of one task as an async generator, with an idempotent :meth:`cancel`.

    Made by :meth:`StreamingOrchestrator.execute_task_streaming`; nothing runs until the first
    ``__anext__``."""

    def __init__(
        self,
        task: str,
        resolve: Callable[[], tuple[str, AgentConfig]],
        *,
        task_id: str | None = None,
        preview_chars: int = DEFAULT_RESULT_PREVIEW_CHARS,
        owner: str = "",
        file_ids: Sequence[str] = (),
        file_source: FileSource | None = None,
        traces: TraceStore | None = None,
    ) -> None:
        self.task = task
        self.task_id = task_id
        self.owner = owner
        self._file_ids = list(file_ids)
        self._file_source = file_source
        self._traces = traces
        self._resolve = resolve
        self._translate = Translator(preview_chars=preview_chars)
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._child: asyncio.Task[tuple[str, str]] | None = None
        self._cancel_reason: str | None = None
        self._push: Callable[[Event], None] | None = None
        self._gen = self._run()

    # -- the AsyncGenerator interface, delegated to the inner generator

    def __aiter__(self) -> TaskStream:
        return self

    def __anext__(self) -> Coroutine[Any, Any, Event]:
        return self._gen.__anext__()

    def asend(self, value: None) -> Coroutine[Any, Any, Event]:
        return self._gen.asend(value)

    def athrow(self, *args: Any) -> Coroutine[Any, Any, Event]:
        return self._gen.athrow(*args)

    def aclose(self) -> Coroutine[Any, Any, None]:
        return self._gen.aclose()

    # -- control

    @property
    def usage(self) -> Usage:
        """Token usage of the run so far."""
        return self._translate.usage

    def cancel(self, reason: str = "cancelled by client") -> None:
        """Stop the task; the stream then ends with ``task_cancelled`` (or with the terminal
        event of an outcome that was reached first). Idempotent; does not wait."""
        if self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        child = self._child
        if child is not None and not child.done():
            child.cancel()
        self._wake()

    def push_to(self, deliver: Callable[[Event], None]) -> None:
        """Hand the core's events to ``deliver`` synchronously as they happen, instead of
        queueing them for iteration, which then yields only ``task_started`` and the terminal
        event. Call it before iterating; ``deliver`` must not block (the task manager's
        per-event path uses this: one task switch less per event)."""
        self._push = deliver

    # -- internals

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _sink(self, core_event: CoreEvent) -> None:
        event = self._translate(core_event)
        if event is None:
            return
        items = self._items
        if items and type(event) is LlmResponse:
            last = items[-1]
            if (
                type(last) is LlmResponse
                and last.same_stream(event)
                and len(last.delta) < MERGE_LIMIT
            ):
                # Not yet seen by anyone: growing it in place is safe.
                last.delta += event.delta
                return
        items.append(event)
        self._wake()

    def _sink_push(self, core_event: CoreEvent) -> None:
        """The sink when a push target is set (see :meth:`push_to`)."""
        event = self._translate(core_event)
        if event is not None:
            self._push(event)  # type: ignore[misc]

    def _files(self) -> list[TaskFile]:
        if not self._file_ids:
            return []
        if self._file_source is None:
            raise TaskInputError("this server takes no files (no file store is configured)")
        return self._file_source.acquire(self.owner, self._file_ids)

    async def _run(self) -> AsyncGenerator[Event, None]:
        child: asyncio.Task[tuple[str, str]] | None = None
        files: list[TaskFile] = []
        try:
            try:
                agent_name, config = self._resolve()
                files = self._files()
            except AgentError as exc:
                yield self._translate.started(self.task, DEFAULT_AGENT, "")
                yield self._translate.failure(exc)
                return
            llm = config.main_agent.llm
            yield self._translate.started(self.task, agent_name, llm.model_name, llm.provider)
            if self._cancel_reason is not None:
                yield TaskCancelled(reason=self._cancel_reason)
                return
            orchestrator = Orchestrator(
                config, sink=self._sink if self._push is None else self._sink_push
            )
            if self._traces is not None and self.task_id is not None:
                self._traces.started(self.owner, self.task_id, orchestrator.trace)
            child = asyncio.get_running_loop().create_task(
                orchestrator.run_main_agent(self.task, task_id=self.task_id, files=files),
                name=f"agent:{self.task_id or '?'}",
            )
            self._child = child
            child.add_done_callback(self._wake)
            items = self._items
            while True:
                if items:
                    yield items.popleft()
                elif child.done():
                    break
                else:
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
            yield self._translate.terminal(child, self._cancel_reason)
        finally:
            if child is not None:
                if not child.done():
                    child.cancel()
                    # Wait for the core's own cleanup; never raises the child's outcome.
                    await asyncio.wait([child])
                if not child.cancelled():
                    child.exception()  # retrieved: no "exception was never retrieved" warning
            if files and self._file_source is not None:
                self._file_source.release(self.owner, self._file_ids)
            if self._traces is not None and self.task_id is not None:
                self._traces.finished(self.owner, self.task_id)


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
        self.files = files
        """Where ``StartOptions.files`` ids are looked up (``None``: tasks take no files)."""
        self.traces = traces
        """Where every task's trace is kept for its owner (``None``: not kept)."""
        self._configs: dict[tuple[Any, ...], AgentConfig] = {}

    def execute_task_streaming(
        self,
        task: str,
        options: StartOptions | None = None,
        *,
        task_id: str | None = None,
        owner: str = "",
    ) -> TaskStream:
        """Run ``task`` and stream its events (see :class:`TaskStream`). Never raises: invalid
        options (or files ``owner`` has not uploaded) end the stream with ``task_failed``."""
        return TaskStream(
            task,
            lambda: self.resolve(options),
            task_id=task_id,
            preview_chars=self.preview_chars,
            owner=owner,
            file_ids=(options.files or []) if options is not None else (),
            file_source=self.files,
            traces=self.traces,
        )

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
            if found is None:
                known = ", ".join(sorted({DEFAULT_AGENT, *self.agents}))
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

    def runner(self, spec: TaskSpec) -> TaskStream:
        """A :data:`gateway.tasks.RunnerFactory`: ``TaskManager(streaming.runner)``."""
        return self.execute_task_streaming(
            spec.input, spec.options, task_id=spec.task_id, owner=spec.owner
        )


def runner_factory(
    config: AgentConfig | str | Path | None = None,
    *,
    agents: Mapping[str, AgentConfig] | None = None,
    files: FileSource | None = None,
    traces: TraceStore | None = None,
) -> Callable[[TaskSpec], TaskStream]:
    """The task manager's runner factory for an agent config (a loaded one, a YAML path, a
    config directory whose agents become selectable by name, or ``None`` for the built-in demo
    config)."""
    if isinstance(config, str | Path) and Path(config).is_dir():
        default, found = _load_agents(config)
        config, agents = found[default], {**found, **(agents or {})}
    elif not isinstance(config, AgentConfig):
        config = _load_config(config)
    return StreamingOrchestrator(config, agents=agents, files=files, traces=traces).runner
