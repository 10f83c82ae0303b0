"""The offline demo model, held at named points until the test releases it.

Races between a client and a running task (cancel while the model streams, a dropped socket
while events are produced, a model stream that breaks and is retried) become deterministic:
the task waits where the test says, the test acts, then releases it. No sleeps, no timing.

```python
held = Held("summary")                        # every model call waits before its summary
async with serve_in_background(Settings(port=0), runner_factory=held.runner()) as gw:
    task = await client.start("What is 17*23+4?")
    await held.reached("summary")             # the task is now waiting there
    await task.cancel()                       # ... certain to cancel a running task
```

Points. Every call of the demo model (the main agent's and sub-agents' alike) passes three
points, where ``L`` is ``turn N`` (the N-th call of one agent's loop) or ``summary``:

- ``L``: before the call streams anything;
- ``L text``: after its reasoning, before its answer text;
- ``L end``: after its text, before its tool call and stop.

A point can be held for every task or only for the task with a given input (``task=``).
:meth:`Held.break_stream` makes the model's stream fail at a point instead (a retryable network
error, as when a provider's stream drops), so the agent retries the call.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gateway.agent.errors import NetworkError
from gateway.agent.llm.base import Delta, LLMRequest, ReasoningDelta, TextDelta
from gateway.agent.llm.demo import DELTA_HOOK
from gateway.agent.prompts import GUIDANCE_MARKER
from gateway.streaming.runner import Emit, Runner, TaskSpec
from protocol.events import Event

if TYPE_CHECKING:
    from gateway.agent import AgentConfig

__all__ = ["Held", "held_config"]

_STAGES = ("", " text", " end")

_Key = tuple[str, str | None]


def held_config() -> AgentConfig:
    """The built-in demo config streaming with no pacing and retrying a broken call at once."""
    from gateway.agent import default_config

    return default_config().with_overrides({"llm.pace_ms": 0, "llm.retry_backoff_s": 0})


def _task_of(request: LLMRequest) -> str:
    for m in request.messages:
        if m.role == "user":
            return m.content.split(GUIDANCE_MARKER, 1)[0].strip()
    return ""


class Held:
    """Gates on the demo model's named points (see the module docstring).

    Create it inside the event loop that serves the gateway (``serve_in_background``)."""

    def __init__(self, *points: str) -> None:
        self._gates: dict[_Key, asyncio.Event] = {}
        self._arrivals: Counter[_Key] = Counter()
        self._breaks: Counter[_Key] = Counter()
        self._waiters: list[tuple[_Key, int, asyncio.Future[None]]] = []
        for point in points:
            self.hold(point)

    # -- what a test calls

    def hold(self, point: str, *, task: str | None = None) -> None:
        """Make model calls wait at ``point`` (only the task whose input is ``task``, if
        given) until :meth:`release`."""
        self._gates.setdefault((point, task), asyncio.Event())

    def release(self, point: str | None = None, *, task: str | None = None) -> None:
        """Let the calls waiting at ``point`` go on, and stop holding there (``None``: every
        point)."""
        keys = [k for k in self._gates if point is None or k == (point, task)]
        for key in keys:
            self._gates.pop(key).set()

    def break_stream(self, point: str, *, task: str | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls that reach ``point`` fail there with a retryable
        network error, after streaming what comes before it."""
        self._breaks[point, task] += times

    def arrivals(self, point: str, *, task: str | None = None) -> int:
        """How many model calls have reached ``point`` so far (held or not)."""
        return self._arrivals[point, task]

    async def reached(self, point: str, count: int = 1, *, task: str | None = None) -> None:
        """Wait until ``count`` model calls in all have reached ``point``."""
        key = (point, task)
        if self._arrivals[key] >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((key, count, future))
        await future

    def runner(self, config: AgentConfig | None = None) -> Runner:
        """The agent stack on ``config`` (default: :func:`held_config`) as a runner (the
        task manager's contract), every demo model call of its tasks going through these
        gates. Pass it to ``serve_in_background(..., runner_factory=...)`` or ``create_app``."""
        from gateway.streaming import agent_runner

        inner = agent_runner(config or held_config())
        hook = self._deltas

        async def run(spec: TaskSpec, emit: Emit) -> Event:
            token = DELTA_HOOK.set(hook)  # seen by this run's model calls, and only by them
            try:
                return await inner(spec, emit)
            finally:
                DELTA_HOOK.reset(token)

        return run

    # -- the hook

    async def _at(self, point: str, task: str) -> None:
        keys: tuple[_Key, _Key] = ((point, None), (point, task))
        for key in keys:
            self._arrivals[key] += 1
        if self._waiters:
            still: list[tuple[_Key, int, asyncio.Future[None]]] = []
            for key, count, future in self._waiters:
                if self._arrivals[key] >= count:
                    if not future.done():
                        future.set_result(None)
                else:
                    still.append((key, count, future))
            self._waiters = still
        for key in keys:
            if self._breaks[key] > 0:
                self._breaks[key] -= 1
                raise NetworkError(f"the stream broke at {point!r} (held by the test)")
        for key in keys:
            gate = self._gates.get(key)
            if gate is not None:
                await gate.wait()

    async def _deltas(
        self, request: LLMRequest, deltas: AsyncIterator[Delta]
    ) -> AsyncIterator[Delta]:
        task = _task_of(request)
        if request.phase == "summary":
            label = "summary"
        else:
            label = f"turn {sum(1 for m in request.messages if m.role == 'assistant') + 1}"
        stage = 0
        await self._at(label, task)
        try:
            async for delta in deltas:
                kind = 0 if isinstance(delta, ReasoningDelta) else 1
                if kind and not isinstance(delta, TextDelta):
                    kind = 2
                while stage < kind:
                    stage += 1
                    await self._at(label + _STAGES[stage], task)
                yield delta
        finally:
            close = getattr(deltas, "aclose", None)
            if close is not None:
                await close()
        while stage < 2:
            stage += 1
            await self._at(label + _STAGES[stage], task)
