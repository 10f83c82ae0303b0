"""The TaskManager driving the real StreamingOrchestrator on the demo model (no mocks).

Figures (how long 1,000 tasks take, cancel latency) are measured by the benchmarks; these tests
check what happens, not how fast."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.streaming import StreamingOrchestrator
from gateway.tasks import Delivery, TaskManager, TaskManagerConfig
from protocol.events import (
    TERMINAL_KINDS,
    TaskCancelled,
    TaskCompleted,
    TaskProgress,
    ToolCallStart,
)
from protocol.frames import EventFrame
from tests.streaming.helpers import EXPECTED_RESEARCH_SHAPE, RESEARCH, demo_config, kind, shape
from tests.tasks.helpers import collect


def check_sequence(frames: list[EventFrame], task_id: str, *, queued: bool = False) -> None:
    """seq 1, 2, 3… without gaps; ``task_started`` first (after ``queued`` progress, when the
    task had to wait); exactly one terminal event, the last."""
    assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
    assert all(f.task_id == task_id for f in frames)
    first = frames[0].event
    if queued and isinstance(first, TaskProgress) and first.step == "queued":
        assert first.queue_position is not None and first.queue_position >= 1
        first = frames[1].event
    assert kind(first) == "task_started"
    ends = [f for f in frames if kind(f.event) in TERMINAL_KINDS]
    assert ends == [frames[-1]]


async def test_demo_run_through_the_manager() -> None:
    so = StreamingOrchestrator(demo_config(pace_ms=0.2))
    async with TaskManager(so.runner) as tm:
        started = await tm.start("alice", RESEARCH, task_id="r1")
        items = await collect(await tm.subscribe("alice", "r1"))
        frames = [i for i in items if isinstance(i, EventFrame)]
        check_sequence(frames, "r1")
        assert shape([f.event for f in frames]) == EXPECTED_RESEARCH_SHAPE
        status = await tm.status("alice", started.task_id)
        assert status.state == "completed" and status.last_seq == len(frames)
        assert status.turn == 2 and status.progress == "summarising"
        assert status.usage is not None and status.usage.output_tokens > 0
        # A late subscriber replays exactly the same frames.
        again = [i for i in await collect(await tm.subscribe("alice", "r1"))]
        assert again == frames


async def test_cancel_through_the_manager_during_a_subagent_call() -> None:
    so = StreamingOrchestrator(demo_config(pace_ms=1))
    async with TaskManager(so.runner) as tm:
        got: list[Delivery] = []
        in_tool = asyncio.Event()
        done = asyncio.Event()

        def deliver(item: Delivery) -> None:
            got.append(item)
            if isinstance(item, EventFrame):
                if isinstance(item.event, ToolCallStart):
                    in_tool.set()
                if kind(item.event) in TERMINAL_KINDS:
                    done.set()

        started = await tm.start("alice", RESEARCH, deliver=deliver)
        await in_tool.wait()
        assert await tm.cancel("alice", started.task_id) == "accepted"
        await done.wait()
        frames = [i for i in got if isinstance(i, EventFrame)]
        check_sequence(frames, started.task_id)
        assert kind(frames[-1].event) == "task_cancelled"
        assert (await tm.status("alice", started.task_id)).state == "cancelled"


async def test_shutdown_cancels_real_runs_and_delivers_their_terminal_events() -> None:
    so = StreamingOrchestrator(demo_config(pace_ms=1))
    async with TaskManager(so.runner) as tm:
        subs = []
        for i in range(20):
            started = await tm.start("alice", f"{RESEARCH} ({i})")
            subs.append((started.task_id, await tm.subscribe("alice", started.task_id)))
        await tm.shutdown(deadline=0)
        for task_id, sub in subs:
            frames = [i for i in await collect(sub) if isinstance(i, EventFrame)]
            # Cancelled at once: whether its run had begun or not, one terminal, the last.
            assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
            assert all(f.task_id == task_id for f in frames)
            assert [kind(f.event) for f in frames if kind(f.event) in TERMINAL_KINDS] == [
                "task_cancelled"
            ]
            assert frames[-1].event == TaskCancelled(reason="server shutdown")
        assert tm.active_count == 0
        assert asyncio.all_tasks() == {asyncio.current_task()}


async def _run_many(n: int, max_running: int) -> tuple[int, int]:
    """Run ``n`` demo tasks; returns (events, tasks that had to queue)."""
    so = StreamingOrchestrator(demo_config(pace_ms=0))
    config = TaskManagerConfig(max_running=max_running, max_tasks_per_owner=n, max_tasks_total=n)
    all_done = asyncio.Event()
    finished = 0

    def recorder(got: list[Delivery]) -> Callable[[Delivery], None]:
        def deliver(item: Delivery) -> None:
            nonlocal finished
            got.append(item)
            if isinstance(item, EventFrame) and kind(item.event) in TERMINAL_KINDS:
                finished += 1
                if finished == n:
                    all_done.set()

        return deliver

    async with TaskManager(so.runner, config=config) as tm:
        logs: dict[str, list[Delivery]] = {}
        expected: dict[str, str] = {}
        for i in range(n):
            got: list[Delivery] = []
            started = await tm.start(f"owner-{i % 10}", f"What is {i}*7?", deliver=recorder(got))
            logs[started.task_id] = got
            expected[started.task_id] = str(i * 7)
        await all_done.wait()
    events = queued = 0
    for task_id, got in logs.items():
        frames = [i for i in got if isinstance(i, EventFrame)]
        check_sequence(frames, task_id, queued=max_running < n)
        last = frames[-1].event
        assert isinstance(last, TaskCompleted) and last.final_answer == expected[task_id]
        events += len(frames)
        queued += kind(frames[0].event) == "task_progress"
    return events, queued


async def test_one_thousand_concurrent_demo_tasks() -> None:
    events, queued = await _run_many(1000, max_running=1000)
    assert queued == 0 and events > 1000 * 50


async def test_one_thousand_tasks_through_a_small_run_queue() -> None:
    _, queued = await _run_many(1000, max_running=50)
    # Started in one burst, before any run could end: all but the first 50 had to queue.
    assert queued == 950
