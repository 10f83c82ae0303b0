"""TaskManager mechanics with the scripted runner: lifecycle, idempotency, cancel in every
state, queueing, limits, owner isolation, retention and gaps, detach, shutdown, misbehaving
runners, several nodes on one backend, an unavailable backend, bounded finished tasks."""

from __future__ import annotations

import asyncio

import pytest

from gateway.streaming import Emit, TaskSpec
from gateway.tasks import (
    BackendUnavailable,
    Delivery,
    InMemoryBackend,
    Retention,
    Subscription,
    TaskError,
    TaskManager,
    TaskManagerConfig,
    TaskRecord,
)
from gateway.testing import HOLD, ScriptedRunner, Step
from protocol.errors import ErrorCode
from protocol.events import (
    Event,
    LlmResponse,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    Usage,
)
from protocol.frames import EventFrame, Gap, StartOptions
from tests.tasks.helpers import Recorder, collect, kinds, seqs, terminal_of


async def test_run_to_completion_seq_and_status(script: ScriptedRunner) -> None:
    async with TaskManager(script) as tm:
        started = await tm.start("alice", "what is 6*7?")
        assert started.state == "pending" and not started.existing
        sub = await tm.subscribe("alice", started.task_id)
        items = await collect(sub)
        assert kinds(items) == ["task_started"] + ["llm_response"] * 3 + ["task_completed"]
        assert seqs(items) == [1, 2, 3, 4, 5]
        assert all(isinstance(i, EventFrame) and i.task_id == started.task_id for i in items)
        status = await tm.status("alice", started.task_id)
        assert status.state == "completed" and status.last_seq == 5
        assert status.usage == Usage(input_tokens=1, output_tokens=2)
        assert status.created <= status.updated
        assert [s.task_id for s in await tm.list_tasks("alice")] == [started.task_id]
        assert sub.closed and sub.finished
        assert tm.active_count == 0


async def test_deliver_callback_at_start_gets_every_event(script: ScriptedRunner) -> None:
    got = Recorder()
    async with TaskManager(script) as tm:
        started = await tm.start("alice", "q", deliver=got)
        assert seqs(await got.wait()) == [1, 2, 3, 4, 5]
        assert started.subscription is not None and started.subscription.finished


async def test_status_of_a_running_task_shows_its_usage_so_far(held: ScriptedRunner) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q")
        run = await held.started(started.task_id)
        await run.holding.wait()
        status = await tm.status("alice", started.task_id)
        assert status.state == "running" and status.last_seq == 4
        assert status.usage == Usage(input_tokens=1, output_tokens=2)
        run.release()


async def test_start_is_idempotent_per_owner(held: ScriptedRunner) -> None:
    async with TaskManager(held) as tm:
        first = await tm.start("alice", "q", task_id="job-1")
        again = await tm.start("alice", "q", task_id="job-1")
        assert again.existing and again.task_id == "job-1" and tm.active_count == 1
        with pytest.raises(TaskError) as err:
            await tm.start("alice", "another question", task_id="job-1")
        assert err.value.code is ErrorCode.TASK_EXISTS
        with pytest.raises(TaskError):
            await tm.start("alice", "q", task_id="job-1", options=StartOptions(max_turns=3))
        # The same id for another owner is another task: nothing leaks either way.
        other = await tm.start("bob", "something else", task_id="job-1")
        assert not other.existing and tm.active_count == 2
        assert first.task_id == other.task_id == "job-1"


async def test_owner_isolation(held: ScriptedRunner) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "secret", task_id="t1")
        assert await tm.cancel("bob", "t1") == "unknown"
        for call in (tm.status("bob", "t1"), tm.subscribe("bob", "t1")):
            with pytest.raises(TaskError) as err:
                await call
            assert err.value.code is ErrorCode.UNKNOWN_TASK
        assert await tm.list_tasks("bob") == []
        assert (await tm.status("alice", started.task_id)).state in {"pending", "running"}


async def test_cancel_is_idempotent_and_ends_with_one_terminal(held: ScriptedRunner) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q")
        sub = await tm.subscribe("alice", started.task_id)
        run = await held.started(started.task_id)
        await run.holding.wait()
        assert await tm.cancel("alice", started.task_id) == "accepted"
        assert await tm.cancel("alice", started.task_id) == "accepted"
        items = await collect(sub)
        assert kinds(items)[-1] == "task_cancelled"
        assert kinds(items).count("task_cancelled") == 1
        assert items[-1].event.reason == "cancelled by client"  # type: ignore[union-attr]
        assert run.cancelled and run.finished.is_set()  # the work saw it and cleaned up
        assert await tm.cancel("alice", started.task_id) == "already_terminal"
        assert await tm.cancel("alice", "nope") == "unknown"
        assert (await tm.status("alice", started.task_id)).state == "cancelled"


async def test_cancel_before_the_run_begins(held: ScriptedRunner) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q")
        assert await tm.cancel("alice", started.task_id) == "accepted"
        items = await collect(await tm.subscribe("alice", started.task_id))
        assert kinds(items) == ["task_cancelled"]
        assert held.runs == {}


async def test_cancel_of_a_task_held_at_its_start(script: ScriptedRunner) -> None:
    runner = ScriptedRunner(hold_start=True)
    async with TaskManager(runner) as tm:
        started = await tm.start("alice", "q")
        run = await runner.started(started.task_id)
        await run.holding.wait()
        assert await tm.cancel("alice", started.task_id) == "accepted"
        items = await collect(await tm.subscribe("alice", started.task_id))
        assert kinds(items) == ["task_cancelled"] and run.cancelled


def a_waits(spec: TaskSpec) -> list[Step]:
    """Task ``a`` is held until released; the others run straight through."""
    return [TaskStarted(), HOLD] if spec.input == "a" else [TaskStarted()]


async def test_a_cancel_between_leaving_the_queue_and_starting_is_not_lost() -> None:
    """Issue 17: a task let out of the run queue but not started yet when its cancel arrives
    must end with ``task_cancelled`` (it used to run to ``task_completed``)."""
    runner = ScriptedRunner(script=a_waits)
    async with TaskManager(runner, config=TaskManagerConfig(max_running=1)) as tm:
        a_done = Recorder()
        a = await tm.start("alice", "a", deliver=a_done)
        b = Recorder()
        started_b = await tm.start("alice", "b", deliver=b)
        await b.seen("task_progress")  # queued behind a
        (await runner.started(a.task_id)).release()
        # a's terminal event is delivered before b's driver resumes with the freed slot.
        await a_done.wait()
        assert tm.pending_count == 0 and started_b.task_id not in runner.runs
        assert await tm.cancel("alice", started_b.task_id) == "accepted"
        assert kinds(await b.wait()) == ["task_progress", "task_cancelled"]
        assert started_b.task_id not in runner.runs  # it never started
        assert tm.running_count == 0  # the slot handed to b came back


async def test_on_detach_cancel_between_leaving_the_queue_and_starting() -> None:
    runner = ScriptedRunner(script=a_waits)
    async with TaskManager(runner, config=TaskManagerConfig(max_running=1)) as tm:
        a_done = Recorder()
        a = await tm.start("alice", "a", deliver=a_done)
        b = Recorder()
        started_b = await tm.start(
            "alice", "b", options=StartOptions(on_detach="cancel"), deliver=b
        )
        await b.seen("task_progress")
        terminal = await terminal_of(tm, "alice", started_b.task_id)
        (await runner.started(a.task_id)).release()
        await a_done.wait()
        assert started_b.subscription is not None
        started_b.subscription.close()  # the last subscriber leaves
        frame = await terminal
        assert isinstance(frame.event, TaskCancelled)
        assert frame.event.reason.startswith("detached")
        assert started_b.task_id not in runner.runs


async def test_queueing_and_queue_position(held: ScriptedRunner) -> None:
    cfg = TaskManagerConfig(max_running=1)
    async with TaskManager(held, config=cfg) as tm:
        a = await tm.start("alice", "a")
        rec_b, rec_c = Recorder(), Recorder()
        b = await tm.start("alice", "b", deliver=rec_b)
        c = await tm.start("bob", "c", deliver=rec_c)
        await rec_b.seen("task_progress")
        await rec_c.seen("task_progress")
        assert tm.running_count == 1 and tm.pending_count == 2
        status_b = await tm.status("alice", b.task_id)
        assert status_b.state == "pending" and status_b.queue_position == 1
        assert status_b.progress == "queued"
        assert (await tm.status("bob", c.task_id)).queue_position == 2
        assert [s.queue_position for s in await tm.list_tasks("bob")] == [2]
        # A pending task cancelled leaves the queue and never starts.
        assert await tm.cancel("bob", c.task_id) == "accepted"
        items_c = await rec_c.wait()
        assert kinds(items_c) == ["task_progress", "task_cancelled"]
        assert items_c[0].event.queue_position == 2  # type: ignore[union-attr]
        assert c.task_id not in held.runs
        (await held.started(a.task_id)).release()
        run_b = await held.started(b.task_id)
        await run_b.holding.wait()
        assert (await tm.status("alice", b.task_id)).state == "running"
        run_b.release()
        items_b = await rec_b.wait()
        assert kinds(items_b)[:2] == ["task_progress", "task_started"]
        assert kinds(items_b)[-1] == "task_completed"
        assert seqs(items_b) == list(range(1, len(items_b) + 1))
        assert tm.running_count == 0 and tm.pending_count == 0


async def test_limits_per_owner_and_total(held: ScriptedRunner) -> None:
    cfg = TaskManagerConfig(max_tasks_per_owner=2, max_tasks_total=3)
    async with TaskManager(held, config=cfg) as tm:
        await tm.start("alice", "1")
        second = await tm.start("alice", "2")
        with pytest.raises(TaskError) as err:
            await tm.start("alice", "3")
        assert err.value.code is ErrorCode.TOO_MANY_TASKS and "2 active tasks" in err.value.message
        await tm.start("bob", "1")
        with pytest.raises(TaskError) as err:
            await tm.start("carol", "1")
        assert err.value.code is ErrorCode.TOO_MANY_TASKS and "server" in err.value.message
        # An idempotent retry is not a new task: allowed at the limit.
        assert (await tm.start("alice", "2", task_id=second.task_id)).existing
        # Once a task ends, there is room again.
        await tm.cancel("alice", second.task_id)
        await collect(await tm.subscribe("alice", second.task_id))
        await tm.start("alice", "3")


async def test_the_owner_limit_counts_tasks_on_every_node(held: ScriptedRunner) -> None:
    backend = InMemoryBackend()
    cfg = TaskManagerConfig(max_tasks_per_owner=2)
    async with (
        TaskManager(held, config=cfg, backend=backend, node="a") as a,
        TaskManager(held, config=cfg, backend=backend, node="b") as b,
    ):
        await a.start("alice", "1")
        await b.start("alice", "2")
        for node in (a, b):
            with pytest.raises(TaskError) as err:
                await node.start("alice", "3")
            assert err.value.code is ErrorCode.TOO_MANY_TASKS
    await backend.close()


async def test_retention_by_count_and_gap() -> None:
    backend = InMemoryBackend(max_events=5)
    async with TaskManager(ScriptedRunner(deltas=20), backend=backend) as tm:
        started = await tm.start("alice", "q")
        await collect(await tm.subscribe("alice", started.task_id))
        # 22 events in all (started, 20 deltas, completed); the last 5 are retained.
        items = await collect(await tm.subscribe("alice", started.task_id, request_id="r1"))
        assert isinstance(items[0], Gap)
        assert items[0].first_available_seq == 18 and items[0].after_seq == 0
        assert items[0].id == "r1"
        assert seqs(items) == [18, 19, 20, 21, 22]
        # Asking from inside the retained window: no gap.
        items = await collect(await tm.subscribe("alice", started.task_id, after_seq=19))
        assert kinds(items) == ["llm_response", "llm_response", "task_completed"]
        assert seqs(items) == [20, 21, 22]
        # Asking from the very last one: nothing to replay, and the task is over.
        assert await collect(await tm.subscribe("alice", started.task_id, after_seq=22)) == []
        assert (await tm.status("alice", started.task_id)).last_seq == 22


async def test_retention_by_bytes_keeps_the_newest() -> None:
    backend = InMemoryBackend(max_bytes=600)
    async with TaskManager(ScriptedRunner(deltas=50), backend=backend) as tm:
        started = await tm.start("alice", "q")
        await collect(await tm.subscribe("alice", started.task_id))
        items = await collect(await tm.subscribe("alice", started.task_id))
        gap = items[0]
        assert isinstance(gap, Gap) and gap.first_available_seq > 1
        assert seqs(items) == list(range(gap.first_available_seq, 53))
        assert kinds(items)[-1] == "task_completed"


class SuspendingBackend(InMemoryBackend):
    """Makes the replay read suspend, as a networked backend's would: live events then
    arrive while the replay is in flight."""

    async def read(self, owner: str, task_id: str, after_seq: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)  # a network round trip: other tasks run meanwhile
        return await super().read(owner, task_id, after_seq)


@pytest.mark.parametrize("backend_cls", [InMemoryBackend, SuspendingBackend])
async def test_subscribers_joining_during_a_fast_stream_see_the_same_sequence(
    backend_cls: type[InMemoryBackend],
) -> None:
    n_events = 400
    runner = ScriptedRunner(deltas=n_events, yield_between=True)
    async with TaskManager(runner, backend=backend_cls()) as tm:
        started = await tm.start("alice", "q")
        tid = started.task_id
        moved = asyncio.Event()
        ended = asyncio.Event()

        def progress(item: EventFrame | Gap) -> None:
            moved.set()
            if isinstance(item, EventFrame) and isinstance(item.event, TaskCompleted):
                ended.set()

        await tm.backend.listen("alice", tid, progress)
        subs: list[tuple[int, Subscription]] = []
        callback_logs: list[list[Delivery]] = []
        while not ended.is_set():
            status = await tm.status("alice", tid)
            after = status.last_seq // 2 if len(subs) % 3 == 1 else 0
            subs.append((after, await tm.subscribe("alice", tid, after_seq=after)))
            got: list[Delivery] = []
            callback_logs.append(got)
            await tm.subscribe("alice", tid, deliver=got.append)
            moved.clear()
            await moved.wait()  # join again once the stream has moved on
        assert len(subs) > 100
        total = n_events + 2
        for after, sub in subs:
            assert seqs(await collect(sub)) == list(range(after + 1, total + 1))
        for got in callback_logs:
            assert seqs(got) == list(range(1, total + 1))


async def test_a_failing_callback_does_not_disturb_others(script: ScriptedRunner) -> None:
    def broken(item: Delivery) -> None:
        raise RuntimeError("subscriber bug")

    async with TaskManager(script) as tm:
        started = await tm.start("alice", "q", deliver=broken)
        items = await collect(await tm.subscribe("alice", started.task_id))
        assert kinds(items)[-1] == "task_completed"


async def test_detach_ttl_cancels_an_unwatched_task(held: ScriptedRunner) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q", options=StartOptions(detach_ttl=0.01))
        terminal = await (await terminal_of(tm, "alice", started.task_id))
        assert isinstance(terminal.event, TaskCancelled)
        assert terminal.event.reason.startswith("detached")


async def test_on_detach_cancel_when_last_subscriber_leaves(held: ScriptedRunner) -> None:
    async with TaskManager(held) as tm:
        opts = StartOptions(on_detach="cancel")
        first = Recorder()
        started = await tm.start("alice", "q", options=opts, deliver=first)
        second = await tm.subscribe("alice", started.task_id)
        terminal = await terminal_of(tm, "alice", started.task_id)
        await (await held.started(started.task_id)).holding.wait()
        assert started.subscription is not None
        tm.unsubscribe(started.subscription)
        assert (await tm.status("alice", started.task_id)).state == "running"
        second.close()
        frame = await terminal
        assert isinstance(frame.event, TaskCancelled)


async def test_on_detach_cancel_without_a_subscriber_cancels_at_once(
    held: ScriptedRunner,
) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q", options=StartOptions(on_detach="cancel"))
        items = await collect(await tm.subscribe("alice", started.task_id))
        assert kinds(items) == ["task_cancelled"]


async def test_finished_tasks_are_removed_after_retention(script: ScriptedRunner) -> None:
    backend = InMemoryBackend()
    cfg = TaskManagerConfig(retain_finished=0)
    async with TaskManager(script, config=cfg, backend=backend) as tm:
        started = await tm.start("alice", "q", task_id="short")
        await collect(await tm.subscribe("alice", "short"))
        assert len(backend) == 0
        with pytest.raises(TaskError) as err:
            await tm.status("alice", started.task_id)
        assert err.value.code is ErrorCode.UNKNOWN_TASK
        assert await tm.cancel("alice", "short") == "unknown"
        # The id is free again.
        assert not (await tm.start("alice", "other", task_id="short")).existing
    await backend.close()


async def test_finished_tasks_are_bounded_and_their_memory_comes_back() -> None:
    """Issue 17: finished tasks used to be kept an hour whatever their number and size."""
    retention = Retention(max_finished_per_owner=5, max_finished_bytes=500_000)
    backend = InMemoryBackend(retention)
    big = "(" * 100_000
    async with TaskManager(ScriptedRunner(), backend=backend) as tm:
        ids = []
        for i in range(20):
            done = Recorder()
            started = await tm.start("alice" if i % 2 else "bob", f"{big}{i}", deliver=done)
            await done.wait()
            ids.append(started.task_id)
        # Each finished task counts its 100,000-character input twice (the record and the
        # task_started event), about 200 kB: two fit under 500,000 bytes.
        assert len(backend) == 2
        assert backend.finished_bytes <= retention.max_finished_bytes
        kept = {s.task_id for s in await tm.list_tasks("alice")} | {
            s.task_id for s in await tm.list_tasks("bob")
        }
        assert kept == set(ids[-2:])  # the oldest went first
        with pytest.raises(TaskError) as err:
            await tm.subscribe("alice", ids[1])
        assert err.value.code is ErrorCode.UNKNOWN_TASK


async def test_shutdown_lets_tasks_finish_then_cancels_the_rest() -> None:
    runner = ScriptedRunner(hold=True)
    async with TaskManager(runner) as tm:
        quick = await tm.start("alice", "quick")
        slow = await tm.start("alice", "slow")
        sub_quick = await tm.subscribe("alice", quick.task_id)
        sub_slow = await tm.subscribe("alice", slow.task_id)
        await (await runner.started(slow.task_id)).holding.wait()
        (await runner.started(quick.task_id)).release()
        await tm.shutdown(deadline=0.05)
        assert kinds(await collect(sub_quick))[-1] == "task_completed"
        slow_items = await collect(sub_slow)
        assert kinds(slow_items)[-1] == "task_cancelled"
        assert slow_items[-1].event.reason == "server shutdown"  # type: ignore[union-attr]
        with pytest.raises(TaskError) as err:
            await tm.start("alice", "late")
        assert err.value.code is ErrorCode.INTERNAL
        assert tm.active_count == 0


@pytest.mark.parametrize(
    ("behaviour", "cancel", "terminal"),
    [
        (
            "raises",
            False,
            TaskFailed(reason="internal error: ValueError: runner bug", code="internal"),
        ),
        (
            "returns_no_terminal",
            False,
            TaskFailed(reason="the run ended without a terminal event", code="internal"),
        ),
        ("emits_terminal", False, TaskCompleted()),
        ("stubborn", True, TaskCancelled()),
        ("unstoppable", True, TaskCancelled(reason="cancelled by client (the work did not stop)")),
    ],
)
async def test_exactly_one_terminal_with_misbehaving_runners(
    behaviour: str, cancel: bool, terminal: Event
) -> None:
    release = asyncio.Event()

    async def runner(spec: TaskSpec, emit: Emit) -> Event:
        emit(TaskStarted())
        if behaviour == "raises":
            raise ValueError("runner bug")
        if behaviour == "returns_no_terminal":
            return LlmResponse(delta="not an end")
        if behaviour == "emits_terminal":
            emit(TaskCompleted())
            emit(LlmResponse(delta="late"))
            return TaskCompleted()
        cancels = 0
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancels += 1
                if behaviour == "stubborn" and cancels == 2:
                    raise  # gives in at the second cancel
        return TaskCompleted()

    cfg = TaskManagerConfig(cancel_grace=0.01)
    async with TaskManager(runner, config=cfg) as tm:
        got = Recorder()
        started = await tm.start("alice", "q", deliver=got)
        await got.seen("task_started")
        if cancel:
            assert await tm.cancel("alice", started.task_id) == "accepted"
        items = await got.wait()
        assert [i.event for i in items if isinstance(i, EventFrame)] == [TaskStarted(), terminal]
        release.set()  # let the unstoppable one end so the test leaves nothing behind


async def test_shutdown_ends_tasks_whose_work_will_not_stop() -> None:
    release = asyncio.Event()
    stopped = asyncio.Event()

    async def stuck(spec: TaskSpec, emit: Emit) -> Event:
        emit(TaskStarted())
        try:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # refuses to stop, even when cancelled again
            return TaskCompleted()
        finally:
            stopped.set()

    got = Recorder()
    tm = TaskManager(stuck, config=TaskManagerConfig(cancel_grace=0.01))
    await tm.start("alice", "q", deliver=got)
    await got.seen("task_started")
    await tm.shutdown(deadline=0)
    items = await got.wait()
    assert kinds(items) == ["task_started", "task_cancelled"]
    assert "did not stop" in items[-1].event.reason  # type: ignore[union-attr]
    assert tm.active_count == 0
    release.set()  # let the stuck run end so the test leaves nothing behind
    await stopped.wait()


async def test_a_task_run_by_another_node_is_watched_and_cancelled_through_the_backend(
    held: ScriptedRunner,
) -> None:
    backend = InMemoryBackend()
    async with (
        TaskManager(held, backend=backend, node="a") as a,
        TaskManager(held, backend=backend, node="b") as b,
    ):
        await a.start("alice", "q", task_id="job")
        run = await held.started("job")
        await run.holding.wait()
        on_b = await b.subscribe("alice", "job")
        assert (await b.status("alice", "job")).state == "running"
        assert await b.cancel("alice", "job", "from b") == "accepted"
        items = await collect(on_b)
        assert kinds(items)[-1] == "task_cancelled"
        assert items[-1].event.reason == "from b"  # type: ignore[union-attr]
        assert run.cancelled
        assert await b.cancel("alice", "job") == "already_terminal"
        assert await b.cancel("bob", "job") == "unknown"
    await backend.close()


class Unavailable(InMemoryBackend):
    async def create(self, record: TaskRecord, *, max_active: int | None = None) -> None:
        raise BackendUnavailable("connection refused", retry_after=1.0)


async def test_an_unavailable_backend_refuses_start_clearly(script: ScriptedRunner) -> None:
    async with TaskManager(script, backend=Unavailable()) as tm:
        with pytest.raises(TaskError) as err:
            await tm.start("alice", "q")
        assert err.value.code is ErrorCode.UNAVAILABLE
        assert "unavailable" in err.value.message and "retry" in err.value.message
        assert tm.active_count == 0


class DeafOnceBackend(InMemoryBackend):
    """Its first subscription fails (as a remote backend's can); later ones work."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 1

    async def listen(self, owner, task_id, listener):  # type: ignore[no-untyped-def]
        if self.refusals:
            self.refusals -= 1
            raise BackendUnavailable("subscribe failed", retry_after=1.0)
        return await super().listen(owner, task_id, listener)


async def test_a_created_task_runs_even_when_its_start_cannot_follow_it(
    script: ScriptedRunner,
) -> None:
    # The task exists once created: the start is refused (retryable), the task runs, and a
    # retry of that start with its id finds it.
    async with TaskManager(script, backend=DeafOnceBackend()) as tm:
        with pytest.raises(TaskError) as err:
            await tm.start("alice", "q", task_id="t1", deliver=Recorder())
        assert err.value.code is ErrorCode.UNAVAILABLE
        assert tm.active_count == 1
        again = await tm.start("alice", "q", task_id="t1")
        assert again.existing
        items = await collect(await tm.subscribe("alice", "t1"))
        assert kinds(items) == ["task_started"] + ["llm_response"] * 3 + ["task_completed"]


async def test_an_adopted_task_takes_messages_as_a_started_one(held: ScriptedRunner) -> None:
    # A backend hands a node a task it did not start (a lost node's queued one, or a create
    # whose start gave up): it runs with its interaction, as a started task does.
    backend = InMemoryBackend()
    async with TaskManager(held, backend=backend, node="b") as tm:
        rec = TaskRecord(
            owner="alice", task_id="t1", input="q", options=StartOptions(), created=1.0, node="b"
        )
        assert await backend.create(rec) is None
        backend._nodes["b"].task_adopted(rec)  # type: ignore[attr-defined]
        message_id = await tm.message("alice", "t1", "also this")
        assert message_id and not message_id.startswith("!")
        assert (await tm.status("alice", "t1")).state in ("pending", "running")


async def test_on_terminal_gets_cancel_latency_and_time_to_first_output() -> None:
    seen: list[tuple[str, bool, bool]] = []

    def on_terminal(record: TaskRecord, since_cancel: float | None, ttft: float | None) -> None:
        seen.append((record.state, since_cancel is not None, ttft is not None))

    runner = ScriptedRunner(hold=True)
    async with TaskManager(runner, on_terminal=on_terminal) as tm:
        done = Recorder()
        first = await tm.start("alice", "1", deliver=done)
        (await runner.started(first.task_id)).release()
        await done.wait()
        cancelled = Recorder()
        second = await tm.start("alice", "2", deliver=cancelled)
        await (await runner.started(second.task_id)).holding.wait()
        await tm.cancel("alice", second.task_id)
        await cancelled.wait()
    assert seen == [("completed", False, True), ("cancelled", True, True)]


async def test_a_failed_task_is_logged_in_one_line_with_its_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fails(spec: TaskSpec, emit: Emit) -> Event:
        emit(TaskStarted())
        return TaskFailed(reason="sk-secret in a provider message", code="provider_error")

    async with TaskManager(fails) as tm:
        got = Recorder()
        started = await tm.start("alice", "q", deliver=got)
        await got.wait()
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.tasks.manager"]
    assert lines == [f"task {started.task_id} failed with code provider_error"]
