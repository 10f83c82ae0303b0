"""The runner contract (:mod:`gateway.streaming.runner`): ``outcome`` maps every end of a run
to one terminal event, and ``TaskStream`` iterates one run — both with the scripted runner the
task tests use."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.streaming import Emit, TaskSpec, TaskStream, outcome
from gateway.streaming.runner import new_spec
from gateway.testing import HOLD, ScriptedRunner
from protocol.events import (
    Event,
    LlmResponse,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    Usage,
)


def no_cancel() -> str | None:
    return None


async def test_outcome_is_the_returned_terminal_event() -> None:
    async def run() -> Event:
        return TaskCompleted(final_answer="1")

    assert await outcome(run, no_cancel) == TaskCompleted(final_answer="1")


async def test_outcome_of_a_raising_or_non_terminal_run_is_an_internal_failure() -> None:
    async def raises() -> Event:
        raise KeyError("bug")

    async def not_terminal() -> Event:
        return LlmResponse(delta="x")

    failed = await outcome(raises, no_cancel)
    assert isinstance(failed, TaskFailed) and failed.code == "internal"
    assert "KeyError" in failed.reason
    failed = await outcome(not_terminal, no_cancel)
    assert isinstance(failed, TaskFailed) and failed.code == "internal"


async def test_a_requested_cancel_always_ends_with_task_cancelled() -> None:
    entered = asyncio.Event()

    async def swallows() -> Event:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return TaskCompleted()  # finished anyway: the accepted cancel still wins

    reason: list[str] = []
    task = asyncio.create_task(outcome(swallows, lambda: reason[0] if reason else None))
    await entered.wait()
    reason.append("stop")
    task.cancel()
    assert await task == TaskCancelled(reason="stop")
    assert not task.cancelled() and task.cancelling() == 0


async def test_a_cancellation_nobody_requested_propagates() -> None:
    entered = asyncio.Event()

    async def waits() -> Event:
        entered.set()
        await asyncio.Event().wait()
        return TaskCompleted()

    task = asyncio.create_task(outcome(waits, no_cancel))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stream_yields_the_run_then_its_terminal_event() -> None:
    stream = TaskStream(ScriptedRunner(deltas=2), new_spec("q", task_id="t"))
    events = [e async for e in stream]
    assert [type(e) for e in events] == [TaskStarted, LlmResponse, LlmResponse, TaskCompleted]
    assert stream.usage == Usage(input_tokens=1, output_tokens=2) and stream.done


async def test_cancel_of_a_held_stream() -> None:
    runner = ScriptedRunner(script=[TaskStarted(), HOLD])
    stream = TaskStream(runner, new_spec("q", task_id="t"))
    events: list[Event] = []
    async for event in stream:
        events.append(event)
        if isinstance(event, TaskStarted):
            await (await runner.started("t")).holding.wait()
            stream.cancel("enough")
            stream.cancel("again")  # idempotent
    assert events == [TaskStarted(), TaskCancelled(reason="enough")]
    assert runner.runs["t"].cancelled and runner.runs["t"].finished.is_set()


async def test_closing_a_stream_early_stops_the_run() -> None:
    runner = ScriptedRunner(script=[TaskStarted(), HOLD])
    stream = TaskStream(runner, new_spec("q", task_id="t"))
    async for _ in stream:
        break
    await stream.aclose()
    assert stream.done and runner.runs["t"].finished.is_set()
    assert [e async for e in stream] == []


async def test_a_runner_is_any_coroutine_function() -> None:
    async def echo(spec: TaskSpec, emit: Emit) -> Event:
        emit(TaskStarted(input=spec.input))
        return TaskCompleted(final_answer=spec.input)

    events = [e async for e in TaskStream(echo, new_spec("hi"))]
    assert events == [TaskStarted(input="hi"), TaskCompleted(final_answer="hi")]
