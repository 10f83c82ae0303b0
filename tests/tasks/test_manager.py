"""TaskManager mechanics with a scripted runner: lifecycle, idempotency, cancel, queueing,
limits, owner isolation, retention and gaps, detach, shutdown, misbehaving runners."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest

from gateway.tasks import (
    Delivery,
    InMemoryBackend,
    Subscription,
    TaskError,
    TaskManager,
    TaskManagerConfig,
    TaskSpec,
)
from protocol.errors import ErrorCode
from protocol.events import Event, LlmResponse, TaskCompleted, TaskStarted, Usage
from protocol.frames import EventFrame, Gap, StartOptions
from tests.tasks.conftest import Script, ScriptedRun


async def collect(sub: Subscription) -> list[Delivery]:
    return [item async for item in sub]


def kinds(items: list[Delivery]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, Gap):
            out.append("gap")
        else:
            out.append(type(item.event).__struct_config__.tag)  # type: ignore[union-attr]
    return out


def seqs(items: list[Delivery]) -> list[int]:
    return [item.seq for item in items if isinstance(item, EventFrame)]


async def until(predicate: object, *, rounds: int = 1000) -> None:
    """Let the loop run until ``predicate()`` holds (no wall-clock waiting)."""
    for _ in range(rounds):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def terminal_waiter(tm: TaskManager, owner: str, task_id: str) -> asyncio.Future[EventFrame]:
    """A future resolved by the terminal event, via a raw backend listener (not a subscriber,
    so it does not stop a detach clock)."""
    fut: asyncio.Future[EventFrame] = asyncio.get_running_loop().create_future()

    def listener(frame: EventFrame) -> None:
        if (
            frame.event.__struct_config__.tag
            in {
                "task_completed",
                "task_failed",
                "task_cancelled",
            }
            and not fut.done()
        ):
            fut.set_result(frame)

    tm.backend.listen(owner, task_id, listener)
    return fut


async def test_run_to_completion_seq_and_status(script: Script) -> None:
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


async def test_deliver_callback_at_start_gets_every_event(script: Script) -> None:
    got: list[Delivery] = []
    async with TaskManager(script) as tm:
        started = await tm.start("alice", "q", deliver=got.append)
        await until(lambda: started.subscription is not None and started.subscription.finished)
    assert seqs(got) == [1, 2, 3, 4, 5]


async def test_start_is_idempotent_per_owner(held: Script) -> None:
    async with TaskManager(held) as tm:
        first = await tm.start("alice", "q", task_id="job-1")
        again = await tm.start("alice", "q", task_id="job-1")
        assert again.existing and again.task_id == "job-1"
        assert len(held.runs) <= 1 and tm.active_count == 1
        with pytest.raises(TaskError) as err:
            await tm.start("alice", "another question", task_id="job-1")
        assert err.value.code is ErrorCode.TASK_EXISTS
        with pytest.raises(TaskError):
            await tm.start("alice", "q", task_id="job-1", options=StartOptions(max_turns=3))
        # The same id for another owner is another task: nothing leaks either way.
        other = await tm.start("bob", "something else", task_id="job-1")
        assert not other.existing and tm.active_count == 2
        assert first.task_id == other.task_id == "job-1"


async def test_owner_isolation(held: Script) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "secret", task_id="t1")
        assert await tm.cancel("bob", "t1") == "unknown"
        for call in (tm.status("bob", "t1"), tm.subscribe("bob", "t1")):
            with pytest.raises(TaskError) as err:
                await call
            assert err.value.code is ErrorCode.UNKNOWN_TASK
        assert await tm.list_tasks("bob") == []
        assert (await tm.status("alice", started.task_id)).state in {"pending", "running"}


async def test_cancel_is_idempotent_and_ends_with_one_terminal(held: Script) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q")
        sub = await tm.subscribe("alice", started.task_id)
        await until(lambda: started.task_id in held.runs)
        await held.runs[started.task_id].started.wait()
        assert await tm.cancel("alice", started.task_id) == "accepted"
        assert await tm.cancel("alice", started.task_id) == "accepted"
        items = await collect(sub)
        assert kinds(items)[-1] == "task_cancelled"
        assert kinds(items).count("task_cancelled") == 1
        assert items[-1].event.reason == "cancelled by client"  # type: ignore[union-attr]
        assert held.runs[started.task_id].closed
        assert await tm.cancel("alice", started.task_id) == "already_terminal"
        assert await tm.cancel("alice", "nope") == "unknown"
        assert (await tm.status("alice", started.task_id)).state == "cancelled"


async def test_cancel_before_the_run_begins(held: Script) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q")
        assert await tm.cancel("alice", started.task_id) == "accepted"
        items = await collect(await tm.subscribe("alice", started.task_id))
        assert kinds(items) == ["task_cancelled"]
        assert held.runs == {}


async def test_queueing_and_queue_position(held: Script) -> None:
    cfg = TaskManagerConfig(max_running=1)
    async with TaskManager(held, config=cfg) as tm:
        a = await tm.start("alice", "a")
        b = await tm.start("alice", "b")
        c = await tm.start("bob", "c")
        sub_b = await tm.subscribe("alice", b.task_id)
        await until(lambda: tm.pending_count == 2)
        assert tm.running_count == 1
        status_b = await tm.status("alice", b.task_id)
        assert status_b.state == "pending" and status_b.queue_position == 1
        assert status_b.progress == "queued"
        assert (await tm.status("bob", c.task_id)).queue_position == 2
        # A pending task cancelled leaves the queue and never starts.
        assert await tm.cancel("bob", c.task_id) == "accepted"
        items_c = await collect(await tm.subscribe("bob", c.task_id))
        assert kinds(items_c) == ["task_progress", "task_cancelled"]
        assert items_c[0].event.queue_position == 2  # type: ignore[union-attr]
        assert c.task_id not in held.runs
        held.runs[a.task_id].release()
        await until(lambda: b.task_id in held.runs)
        assert (await tm.status("alice", b.task_id)).state == "running"
        held.runs[b.task_id].release()
        items_b = await collect(sub_b)
        assert kinds(items_b)[:2] == ["task_progress", "task_started"]
        assert kinds(items_b)[-1] == "task_completed"
        assert seqs(items_b) == list(range(1, len(items_b) + 1))
        assert tm.running_count == 0 and tm.pending_count == 0


async def test_limits_per_owner_and_total(held: Script) -> None:
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


async def test_retention_by_count_and_gap() -> None:
    backend = InMemoryBackend(max_events=5)
    async with TaskManager(Script(n_events=20), backend=backend) as tm:
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
    async with TaskManager(Script(n_events=50), backend=backend) as tm:
        started = await tm.start("alice", "q")
        await collect(await tm.subscribe("alice", started.task_id))
        items = await collect(await tm.subscribe("alice", started.task_id))
        gap = items[0]
        assert isinstance(gap, Gap) and gap.first_available_seq > 1
        assert seqs(items) == list(range(gap.first_available_seq, 53))
        assert kinds(items)[-1] == "task_completed"
        assert 1 < len(seqs(items)) < 52


class SuspendingBackend(InMemoryBackend):
    """Makes the replay read suspend, as a networked backend's would: live events then
    arrive while the replay is in flight."""

    async def read(self, owner: str, task_id: str, after_seq: int):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        return await super().read(owner, task_id, after_seq)


@pytest.mark.parametrize("backend_cls", [InMemoryBackend, SuspendingBackend])
async def test_subscribers_joining_during_a_fast_stream_see_the_same_sequence(
    backend_cls: type[InMemoryBackend],
) -> None:
    n_events = 400

    class Pacer:
        """Yields to the loop between events so subscribers join all along the stream."""

        def __call__(self, spec: TaskSpec) -> ScriptedRun:
            run = ScriptedRun(spec, n_events, hold=False)
            inner = run._gen

            async def paced() -> AsyncIterator[Event]:
                async for event in inner:
                    await asyncio.sleep(0)
                    yield event

            run._gen = paced()
            return run

    async with TaskManager(Pacer(), backend=backend_cls()) as tm:
        started = await tm.start("alice", "q")
        tid = started.task_id
        subs: list[tuple[int, Subscription]] = []
        callback_logs: list[list[Delivery]] = []
        while True:
            status = await tm.status("alice", tid)
            if status.state == "completed":
                break
            after = status.last_seq // 2 if len(subs) % 3 == 1 else 0
            subs.append((after, await tm.subscribe("alice", tid, after_seq=after)))
            got: list[Delivery] = []
            callback_logs.append(got)
            await tm.subscribe("alice", tid, deliver=got.append)
            await asyncio.sleep(0)  # let the stream move on between joins
        assert len(subs) > 100
        total = n_events + 2
        for after, sub in subs:
            assert seqs(await collect(sub)) == list(range(after + 1, total + 1))
        for got in callback_logs:
            assert seqs(got) == list(range(1, total + 1))


async def test_a_failing_callback_does_not_disturb_others(script: Script) -> None:
    def broken(item: Delivery) -> None:
        raise RuntimeError("subscriber bug")

    async with TaskManager(script) as tm:
        started = await tm.start("alice", "q", deliver=broken)
        items = await collect(await tm.subscribe("alice", started.task_id))
        assert kinds(items)[-1] == "task_completed"


async def test_detach_ttl_cancels_an_unwatched_task(held: Script) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q", options=StartOptions(detach_ttl=0.01))
        terminal = await asyncio.wait_for(terminal_waiter(tm, "alice", started.task_id), 10)
        assert terminal.event.__struct_config__.tag == "task_cancelled"
        assert terminal.event.reason.startswith("detached")  # type: ignore[union-attr]


async def test_detach_clock_stops_while_subscribed(held: Script) -> None:
    async with TaskManager(held) as tm:
        started = await tm.start("alice", "q", options=StartOptions(detach_ttl=0.01))
        sub = await tm.subscribe("alice", started.task_id)
        await until(lambda: started.task_id in held.runs)
        # Let a detach deadline pass for sure: wait on a timer of our own, longer than it.
        await asyncio.sleep(0.05)
        assert (await tm.status("alice", started.task_id)).state == "running"
        held.runs[started.task_id].release()
        assert kinds(await collect(sub))[-1] == "task_completed"


async def test_on_detach_cancel_when_last_subscriber_leaves(held: Script) -> None:
    async with TaskManager(held) as tm:
        opts = StartOptions(on_detach="cancel")
        first: list[Delivery] = []
        started = await tm.start("alice", "q", options=opts, deliver=first.append)
        second = await tm.subscribe("alice", started.task_id)
        terminal = terminal_waiter(tm, "alice", started.task_id)
        await until(lambda: started.task_id in held.runs)
        assert started.subscription is not None
        tm.unsubscribe(started.subscription)
        assert (await tm.status("alice", started.task_id)).state == "running"
        second.close()
        frame = await asyncio.wait_for(terminal, 10)
        assert frame.event.__struct_config__.tag == "task_cancelled"


async def test_finished_tasks_are_removed_after_retention(script: Script) -> None:
    async with TaskManager(script, config=TaskManagerConfig(retain_finished=0)) as tm:
        started = await tm.start("alice", "q", task_id="short")
        sub = await tm.subscribe("alice", "short")
        await collect(sub)
        await until(lambda: len(tm.backend) == 0)  # type: ignore[arg-type]
        with pytest.raises(TaskError):
            await tm.status("alice", started.task_id)
        assert await tm.cancel("alice", "short") == "unknown"
        # The id is free again.
        assert not (await tm.start("alice", "other", task_id="short")).existing


async def test_shutdown_lets_tasks_finish_then_cancels_the_rest() -> None:
    script = Script(hold=True)
    async with TaskManager(script) as tm:
        quick = await tm.start("alice", "quick")
        slow = await tm.start("alice", "slow")
        sub_quick = await tm.subscribe("alice", quick.task_id)
        sub_slow = await tm.subscribe("alice", slow.task_id)
        await until(lambda: quick.task_id in script.runs and slow.task_id in script.runs)
        script.runs[quick.task_id].release()
        await tm.shutdown(deadline=0.05)
        assert kinds(await collect(sub_quick))[-1] == "task_completed"
        slow_items = await collect(sub_slow)
        assert kinds(slow_items)[-1] == "task_cancelled"
        assert slow_items[-1].event.reason == "server shutdown"  # type: ignore[union-attr]
        with pytest.raises(TaskError) as err:
            await tm.start("alice", "late")
        assert err.value.code is ErrorCode.INTERNAL
        assert tm.active_count == 0


class _Misbehaving:
    def __init__(self, events: list[Event], *, raise_after: bool = False, stubborn: bool = False):
        self.usage = Usage()
        self._events = events
        self._raise_after = raise_after
        self._stubborn = stubborn
        self._gen = self._run()

    async def _run(self) -> AsyncIterator[Event]:
        for event in self._events:
            yield event
        if self._raise_after:
            raise ValueError("runner bug")
        if self._stubborn:
            await asyncio.Event().wait()  # ignores cancel(); only a hard cancel stops it

    def cancel(self, reason: str = "cancelled") -> None:
        pass

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._gen

    def __anext__(self) -> Awaitable[Event]:
        return self._gen.__anext__()

    def aclose(self) -> Awaitable[None]:
        return self._gen.aclose()


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("raises", ["task_started", "task_failed"]),
        ("no_terminal", ["task_started", "task_failed"]),
        ("after_terminal", ["task_started", "task_completed"]),
        ("stubborn", ["task_started", "task_cancelled"]),
    ],
)
async def test_exactly_one_terminal_with_misbehaving_runners(
    behaviour: str, expected: list[str]
) -> None:
    def factory(spec: TaskSpec) -> _Misbehaving:
        events: list[Event] = [TaskStarted()]
        if behaviour == "after_terminal":
            events += [TaskCompleted(), LlmResponse(delta="late"), TaskCompleted()]
        return _Misbehaving(
            events, raise_after=behaviour == "raises", stubborn=behaviour == "stubborn"
        )

    cfg = TaskManagerConfig(cancel_grace=0.01)
    async with TaskManager(factory, config=cfg) as tm:
        started = await tm.start("alice", "q")
        sub = await tm.subscribe("alice", started.task_id)
        if behaviour == "stubborn":
            await until(lambda: sub.last_seq >= 1)
            assert await tm.cancel("alice", started.task_id) == "accepted"
        items = await collect(sub)
        assert kinds(items) == expected
        if behaviour in {"raises", "no_terminal"}:
            assert items[-1].event.code == "internal"  # type: ignore[union-attr]


async def test_shutdown_ends_tasks_whose_work_will_not_stop() -> None:
    release = asyncio.Event()

    class Stuck(_Misbehaving):
        async def _run(self) -> AsyncIterator[Event]:
            yield TaskStarted()
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # refuses to stop, even when its driver is cancelled

    tm = TaskManager(lambda spec: Stuck([]), config=TaskManagerConfig(cancel_grace=0.01))
    started = await tm.start("alice", "q")
    sub = await tm.subscribe("alice", started.task_id)
    await until(lambda: sub.last_seq >= 1)
    await tm.shutdown(deadline=0)
    items = await collect(sub)
    assert kinds(items) == ["task_started", "task_cancelled"]
    assert "did not stop" in items[-1].event.reason  # type: ignore[union-attr]
    assert tm.active_count == 0
    release.set()  # let the stuck run end so the test leaves nothing behind
    await until(lambda: len(asyncio.all_tasks()) == 1)
