"""A scripted runner: the runner contract with events you choose, for testing what sits on top.

:class:`ScriptedRunner` implements exactly the contract the task manager drives in production
(:data:`gateway.streaming.Runner`, ``async (spec, emit) -> terminal event``): it emits the events
of a script, can be held at chosen points and released by the test, honours cancellation like
the agent core (cleans up, lets ``CancelledError`` propagate) and returns the terminal event. ::

    runner = ScriptedRunner(hold=True)           # started, 3 deltas, then waits
    async with TaskManager(runner) as tasks:
        started = await tasks.start("alice", "q")
        run = await runner.started(started.task_id)
        run.release()                             # → task_completed

A script is a sequence of events, usage reports (:class:`protocol.events.Usage`) and :data:`HOLD`
marks; a terminal event at its end is what the run returns (``task_completed`` otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from gateway.streaming.runner import Emit, TaskSpec
from protocol.events import (
    TERMINAL_STATES,
    Event,
    LlmResponse,
    TaskCompleted,
    TaskStarted,
    Usage,
)

__all__ = ["HOLD", "Hold", "ScriptedRun", "ScriptedRunner", "Step"]


class Hold:
    """A script mark: the run waits here until it is released."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HOLD"


HOLD = Hold()
"""Wait for one :meth:`ScriptedRun.release` (or one release of the runner's shared gate)."""

Step = Event | Usage | Hold
Script = Sequence[Step] | Callable[[TaskSpec], Sequence[Step]]


class ScriptedRun:
    """One call of a :class:`ScriptedRunner`: what the test sees of it and holds it with."""

    def __init__(self, spec: TaskSpec, gate: asyncio.Semaphore | None) -> None:
        self.spec = spec
        self.emitted: list[Event | Usage] = []
        """What it emitted so far."""
        self.cancelled = False
        """True once the run saw its cancellation."""
        self.finished = asyncio.Event()
        """Set when the run has exited, however it ended (its clean-up done)."""
        self.holding = asyncio.Event()
        """Set while the run waits at a :data:`HOLD`."""
        self._gate = gate if gate is not None else asyncio.Semaphore(0)

    def release(self, times: int = 1) -> None:
        """Let the run pass ``times`` more :data:`HOLD` marks."""
        for _ in range(times):
            self._gate.release()

    async def _hold(self) -> None:
        self.holding.set()
        try:
            await self._gate.acquire()
        finally:
            self.holding.clear()


class ScriptedRunner:
    """A runner (:data:`gateway.streaming.Runner`) playing scripts; records its runs by task id.

    ``script`` is a fixed sequence or a function of the spec; by default ``task_started``, a
    usage report, ``deltas`` ``llm_response`` events, a :data:`HOLD` when ``hold``, then
    ``task_completed`` with ``final_answer="42"`` and the usage. ``hold_start`` adds a
    :data:`HOLD` before anything is emitted. ``gate`` is a semaphore shared by every run
    (released by the test) instead of one per run. ``yield_between`` makes each event a step
    of the event loop (other tasks run between events)."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        deltas: int = 3,
        hold: bool = False,
        hold_start: bool = False,
        usage: Usage | None = None,
        gate: asyncio.Semaphore | None = None,
        yield_between: bool = False,
    ) -> None:
        self.script = script
        self.deltas = deltas
        self.hold = hold
        self.hold_start = hold_start
        self.usage = usage if usage is not None else Usage(input_tokens=1, output_tokens=2)
        self.gate = gate
        self.yield_between = yield_between
        self.runs: dict[str, ScriptedRun] = {}
        """Every run so far, by task id."""
        self._started: dict[str, asyncio.Event] = {}

    def _script(self, spec: TaskSpec) -> Sequence[Step]:
        if self.script is not None:
            return self.script(spec) if callable(self.script) else self.script
        steps: list[Step] = [TaskStarted(input=spec.input, model="scripted"), self.usage]
        steps += [LlmResponse(delta=f"w{i} ", turn=1) for i in range(self.deltas)]
        if self.hold:
            steps.append(HOLD)
        return steps

    async def __call__(self, spec: TaskSpec, emit: Emit) -> Event:
        run = ScriptedRun(spec, self.gate)
        self.runs[spec.task_id] = run
        self._started_event(spec.task_id).set()
        try:
            if self.hold_start:
                await run._hold()
            steps = list(self._script(spec))
            terminal: Event = TaskCompleted(final_answer="42", summary="done", usage=self.usage)
            if steps and type(steps[-1]) in TERMINAL_STATES:
                terminal = steps.pop()  # type: ignore[assignment]
            for step in steps:
                if isinstance(step, Hold):
                    await run._hold()
                    continue
                if self.yield_between:
                    await asyncio.sleep(0)
                run.emitted.append(step)
                emit(step)
            return terminal
        except asyncio.CancelledError:
            run.cancelled = True
            raise
        finally:
            run.finished.set()

    def _started_event(self, task_id: str) -> asyncio.Event:
        event = self._started.get(task_id)
        if event is None:
            event = self._started[task_id] = asyncio.Event()
        return event

    async def started(self, task_id: str) -> ScriptedRun:
        """Wait until the run of ``task_id`` has begun; return it."""
        await self._started_event(task_id).wait()
        return self.runs[task_id]
