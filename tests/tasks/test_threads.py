"""Threads in the backend contract (run against every backend), and the manager's thread rules
with scripted runs."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from gateway.streaming import Turn
from gateway.tasks import (
    InMemoryBackend,
    Retention,
    TaskError,
    TaskManager,
    TaskSpec,
    ThreadTurn,
)
from gateway.testing import HOLD, ScriptedRunner
from protocol import (
    Input,
    InputReceived,
    InputRequired,
    TaskCompleted,
    TaskProgress,
    UserMessage,
)
from tests.tasks.helpers import BackendFactory

NOW = time.time()


def turn(task_id: str, state: str = "completed", at: float = 1.0) -> ThreadTurn:
    """A turn ``at`` seconds after the test module was loaded."""
    when = NOW + at
    return ThreadTurn(
        task_id=task_id,
        input=f"q {task_id}",
        state=state,  # type: ignore[arg-type]
        created=when,
        updated=when,
    )


async def test_threads_are_per_owner_and_listed_newest_first(
    make_backend: BackendFactory,
) -> None:
    backend = make_backend()
    await backend.thread_add("alice", "a", turn("t1", at=1.0))
    await backend.thread_add("alice", "b", turn("t2", at=2.0))
    await backend.thread_add("alice", "a", turn("t3", state="running", at=3.0))
    await backend.thread_add("bob", "a", turn("t9"))
    assert [t.thread_id for t in await backend.list_threads("alice", 10)] == ["a", "b"]
    listed = (await backend.list_threads("alice", 1))[0]
    assert (listed.task_count, listed.last_task_id, listed.last_state) == (2, "t3", "running")
    assert listed.title == "q t1"
    assert [t.task_id for t in await backend.thread_turns("alice", "a") or []] == ["t1", "t3"]
    assert [t.task_id for t in await backend.thread_turns("bob", "a") or []] == ["t9"]
    assert await backend.thread_turns("bob", "b") is None
    backend.thread_update("alice", "a", turn("t3", state="completed", at=4.0))
    await backend.flush()
    states = [t.state for t in await backend.thread_turns("alice", "a") or []]
    assert states == ["completed", "completed"]
    backend.thread_update("carol", "a", turn("t3"))  # unknown thread: nothing happens


async def test_thread_retention_bounds(make_backend: BackendFactory) -> None:
    backend = make_backend(Retention(max_turns_per_thread=2, max_threads_per_owner=2))
    for i in range(3):
        await backend.thread_add("alice", "a", turn(f"t{i}", at=float(i)))
    assert [t.task_id for t in await backend.thread_turns("alice", "a") or []] == ["t1", "t2"]
    await backend.thread_add("alice", "b", turn("u", at=3.0))
    await backend.thread_add("alice", "c", turn("v", at=4.0))  # drops the least recent: a
    assert await backend.thread_turns("alice", "a") is None
    assert {t.thread_id for t in await backend.list_threads("alice", 10)} == {"b", "c"}


async def test_thread_ttl(make_backend: BackendFactory) -> None:
    backend = make_backend(Retention(thread_ttl=1.0))
    await backend.thread_add("alice", "old", turn("t1", at=-10.0))  # updated 10 s ago
    assert await backend.thread_turns("alice", "old") is None
    assert await backend.list_threads("alice", 10) == []


async def test_the_runner_gets_the_earlier_turns() -> None:
    seen: list[TaskSpec] = []

    def script(spec: TaskSpec) -> list[object]:
        seen.append(spec)
        return [TaskCompleted(final_answer=f"a{len(seen)}", summary=f"report {len(seen)}")]

    async with TaskManager(ScriptedRunner(script)) as tasks:  # type: ignore[arg-type]
        for text in ("one", "two", "three"):
            started = await tasks.start("alice", text, thread_id="th", if_busy="enqueue")
            sub = await tasks.subscribe("alice", started.task_id)
            async for _ in sub:
                pass
    assert [s.history for s in seen] == [
        (),
        (Turn("one", "report 1"),),
        (Turn("one", "report 1"), Turn("two", "report 2")),
    ]
    assert all(s.thread_id == "th" and s.interaction is not None for s in seen)


async def test_enqueue_limit_and_interrupt_with_held_runs() -> None:
    runner = ScriptedRunner([HOLD])
    async with TaskManager(runner) as tasks:
        first = await tasks.start("alice", "one", thread_id="th")
        await runner.started(first.task_id)
        with pytest.raises(TaskError) as refused:
            await tasks.start("alice", "two", thread_id="th")
        assert refused.value.code == "thread_busy"
        # Another owner's thread of the same id is not busy.
        other = await tasks.start("bob", "x", thread_id="th")
        assert other.after_task_id is None
        queued = await tasks.start("alice", "two", thread_id="th", if_busy="enqueue")
        assert queued.after_task_id == first.task_id
        status = await tasks.status("alice", queued.task_id)
        assert status.state == "pending" and status.thread_id == "th"
        new = await tasks.start("alice", "three", thread_id="th", if_busy="interrupt")
        sub = await tasks.subscribe("alice", new.task_id)
        run = await runner.started(new.task_id)
        assert [
            (await tasks.status("alice", t)).state for t in (first.task_id, queued.task_id)
        ] == [
            "cancelled",
            "cancelled",
        ]
        run.release()
        async for _ in sub:
            pass
        steps = [
            e.event.step
            for e in (await tasks.backend.read("alice", new.task_id, 0)).frames  # type: ignore[union-attr]
            if isinstance(e.event, TaskProgress)
        ]
        assert "waiting_for_thread" in steps


async def test_answers_reach_the_run_through_the_manager() -> None:
    answers: list[object] = []

    async def runner(spec: TaskSpec, emit: object) -> TaskCompleted:
        assert spec.interaction is not None
        got = await spec.interaction.ask("choice", "pick", options=["x", "y"])
        answers.append(got)
        return TaskCompleted(final_answer=got.choice or "")

    async with TaskManager(runner) as tasks:
        started = await tasks.start("alice", "q")
        sub = await tasks.subscribe("alice", started.task_id)
        async for frame in sub:
            if isinstance(frame.event, InputRequired):  # type: ignore[union-attr]
                break
        pending = (await tasks.status("alice", started.task_id)).pending_input
        assert pending is not None and pending.options == ["x", "y"]
        rid = pending.request_id
        with pytest.raises(TaskError) as bad:
            await tasks.answer(
                "alice", Input(id=1, task_id=started.task_id, request_id=rid, choice="z")
            )
        assert bad.value.code == "invalid_answer"
        with pytest.raises(TaskError) as hidden:
            await tasks.answer(
                "bob", Input(id=1, task_id=started.task_id, request_id=rid, choice="x")
            )
        assert hidden.value.code == "unknown_task"
        await tasks.answer(
            "alice", Input(id=1, task_id=started.task_id, request_id=rid, choice="y")
        )
        frames = [f async for f in sub]
    assert [f.event for f in frames] == [  # type: ignore[union-attr]
        InputReceived(request_id=rid, choice="y"),
        TaskCompleted(final_answer="y"),
    ]


async def asking(spec: TaskSpec, emit: object) -> TaskCompleted:
    """A run that asks for a choice, then takes the messages sent meanwhile."""
    assert spec.interaction is not None
    got = await spec.interaction.ask("choice", "pick", options=["x", "y"])
    said = spec.interaction.take_messages(2)
    return TaskCompleted(final_answer=f"{got.choice} {' '.join(said)}".strip())


async def test_answers_and_messages_through_another_manager_and_resent_answers() -> None:
    backend = InMemoryBackend()
    async with (
        TaskManager(asking, backend=backend) as runs,
        TaskManager(asking, backend=backend) as other,
    ):
        started = await runs.start("alice", "q", task_id="t1")
        sub = await runs.subscribe("alice", "t1")
        async for frame in sub:
            if isinstance(frame.event, InputRequired):  # type: ignore[union-attr]
                break
        rid = "choice-1"

        def pick(choice: str) -> Input:
            return Input(id=1, task_id=started.task_id, request_id=rid, choice=choice)

        assert await other.message("alice", "t1", "hi") == "msg-1"
        assert await other.answer("alice", pick("y")) is False
        # Resent after a dropped connection: acknowledged as such, through either manager.
        assert await other.answer("alice", pick("y")) is True
        assert await runs.answer("alice", pick("y")) is True
        for manager in (runs, other):
            with pytest.raises(TaskError) as late:
                await manager.answer("alice", pick("x"))
            assert late.value.code == "already_answered"
        frames = [f async for f in sub]
        assert [f.event for f in frames] == [  # type: ignore[union-attr]
            InputReceived(request_id=rid, choice="y"),
            UserMessage(text="hi", message_id="msg-1", turn=2),
            TaskCompleted(final_answer="y hi"),
        ]
        # Once the task has ended, its log still tells a resend from another answer.
        for manager in (runs, other):
            assert await manager.answer("alice", pick("y")) is True
            with pytest.raises(TaskError) as ended:
                await manager.answer("alice", pick("x"))
            assert ended.value.code == "already_answered"
            with pytest.raises(TaskError) as never:
                await manager.answer(
                    "alice", Input(id=1, task_id="t1", request_id="choice-9", choice="x")
                )
            assert never.value.code == "task_finished"
            with pytest.raises(TaskError) as hidden:
                await manager.answer("bob", pick("y"))
            assert hidden.value.code == "unknown_task"


async def test_concurrent_starts_through_two_managers_on_one_thread() -> None:
    backend = InMemoryBackend()
    runner = ScriptedRunner([HOLD])
    async with (
        TaskManager(runner, backend=backend) as one,
        TaskManager(runner, backend=backend) as two,
    ):
        outcomes = await asyncio.gather(
            one.start("alice", "a", thread_id="th"),
            two.start("alice", "b", thread_id="th"),
            return_exceptions=True,
        )
        won = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, TaskError)]
        assert len(won) == 1 and len(refused) == 1
        assert refused[0].code == "thread_busy" and refused[0].task_id == won[0].task_id
        queued = await asyncio.gather(
            two.start("alice", "c", thread_id="th", if_busy="enqueue"),
            one.start("alice", "d", thread_id="th", if_busy="enqueue"),
        )
        assert queued[0].after_task_id == won[0].task_id
        assert queued[1].after_task_id == queued[0].task_id
        # They run one after the other, in that order, whichever manager runs each.
        order = [won[0].task_id, queued[0].task_id, queued[1].task_id]
        for before, later in itertools.pairwise(order):
            (await runner.started(before)).release()
            await runner.started(later)
            assert runner.runs[before].finished.is_set()
        runner.runs[order[-1]].release()
