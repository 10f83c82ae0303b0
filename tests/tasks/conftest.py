"""A scripted runner for the manager's mechanics (queueing, detach, retention, races).

The end-to-end tests drive the manager with the real StreamingOrchestrator on the demo model;
these ones need exact control over when a run produces its events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from gateway.tasks import TaskSpec
from protocol.events import Event, LlmResponse, TaskCancelled, TaskCompleted, TaskStarted, Usage


class ScriptedRun:
    """Yields ``task_started``, ``n_events`` deltas, then (once released, when ``hold``)
    ``task_completed``; ``cancel`` ends it with ``task_cancelled``."""

    def __init__(self, spec: TaskSpec, n_events: int, hold: bool) -> None:
        self.spec = spec
        self.n_events = n_events
        self.hold = hold
        self.usage = Usage(input_tokens=1, output_tokens=2)
        self.cancel_reason: str | None = None
        self.cancel_calls = 0
        self.started = asyncio.Event()
        self.closed = False
        self._wake = asyncio.Event()
        self._gen = self._run()

    async def _run(self) -> AsyncIterator[Event]:
        try:
            self.started.set()
            yield TaskStarted(input=self.spec.input, model="scripted")
            for i in range(self.n_events):
                if self.cancel_reason is not None:
                    break
                yield LlmResponse(delta=f"w{i} ", turn=1)
            if self.hold and self.cancel_reason is None:
                await self._wake.wait()
            if self.cancel_reason is not None:
                yield TaskCancelled(reason=self.cancel_reason)
            else:
                yield TaskCompleted(final_answer="42", summary="done")
        finally:
            self.closed = True

    def release(self) -> None:
        self._wake.set()

    def cancel(self, reason: str = "cancelled") -> None:
        self.cancel_calls += 1
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._gen

    def __anext__(self) -> Awaitable[Event]:
        return self._gen.__anext__()

    def aclose(self) -> Awaitable[None]:
        return self._gen.aclose()


class Script:
    """Runner factory recording its runs by task id."""

    def __init__(self, n_events: int = 3, hold: bool = False) -> None:
        self.n_events = n_events
        self.hold = hold
        self.runs: dict[str, ScriptedRun] = {}

    def __call__(self, spec: TaskSpec) -> ScriptedRun:
        run = ScriptedRun(spec, self.n_events, self.hold)
        self.runs[spec.task_id] = run
        return run


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def held() -> Script:
    return Script(hold=True)
