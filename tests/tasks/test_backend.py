"""The backend contract (:mod:`gateway.tasks.backend`), run against every backend.

Written against the :class:`TaskBackend` protocol only: each test runs once per backend of the
``backend``/``make_backend`` fixtures. Writes are queued by contract, so a test that reads what
it wrote calls ``flush()`` first, and waits for listeners on events, never on time."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.tasks import (
    ActiveLimitReached,
    InMemoryBackend,
    Retention,
    TaskBackend,
    TaskRecord,
    ThreadTurn,
)
from gateway.tasks.backend import ANSWER_RESENT, ThreadBusy
from protocol.events import Event, LlmResponse, TaskCompleted, TaskStarted, Usage
from protocol.frames import EventFrame, Gap, Input, StartOptions
from tests.tasks.helpers import BackendFactory


def record(owner: str = "alice", task_id: str = "t1", **fields: object) -> TaskRecord:
    return TaskRecord(
        owner=owner,
        task_id=task_id,
        input=str(fields.pop("input", "q")),
        options=StartOptions(),
        created=float(fields.pop("created", 1000.0)),
        node=str(fields.pop("node", "n1")),
        **fields,  # type: ignore[arg-type]
    )


def frame(seq: int, event: Event | None = None, task_id: str = "t1") -> EventFrame:
    return EventFrame(
        task_id=task_id,
        seq=seq,
        ts=1000.0 + seq,
        event=event if event is not None else LlmResponse(delta=f"d{seq}"),
    )


def run_to_end(backend: TaskBackend, rec: TaskRecord, n_events: int) -> TaskRecord:
    """Append ``task_started``, ``n_events - 2`` deltas and ``task_completed``; returns the
    final record."""
    backend.append(rec, frame(1, TaskStarted(), rec.task_id))
    for seq in range(2, n_events):
        backend.append(rec, frame(seq, task_id=rec.task_id))
    final = TaskRecord(**{**_fields(rec), "state": "completed"})
    backend.append(final, frame(n_events, TaskCompleted(), rec.task_id))
    return final


def _fields(rec: TaskRecord) -> dict[str, object]:
    return {f: getattr(rec, f) for f in rec.__struct_fields__}


class Handler:
    """A node handler recording what the backend told it."""

    def __init__(self) -> None:
        self.cancels: list[tuple[str, str, str]] = []
        self.lost: list[tuple[str, str, str]] = []
        self.answers: list[tuple[str, str, Input]] = []
        self.messages: list[tuple[str, str, str]] = []
        self.told = asyncio.Event()

    def cancel_requested(self, owner: str, task_id: str, reason: str) -> None:
        self.cancels.append((owner, task_id, reason))
        self.told.set()

    def task_lost(self, owner: str, task_id: str, reason: str) -> None:
        self.lost.append((owner, task_id, reason))
        self.told.set()

    def input_given(self, owner: str, task_id: str, answer: Input) -> str | None:
        # A node's verdicts, as a manager gives them: by the answer's text here.
        self.answers.append((owner, task_id, answer))
        return {"ok": None, "again": ANSWER_RESENT}.get(answer.text or "", "invalid_answer: no")

    def message_given(self, owner: str, task_id: str, text: str) -> str:
        self.messages.append((owner, task_id, text))
        return f"msg-{len(self.messages)}" if text != "full" else "!too_many_messages: full"


# -- registry


async def test_create_is_idempotent_and_returns_the_stored_record(backend: TaskBackend) -> None:
    rec = record()
    assert await backend.create(rec) is None
    assert await backend.get("alice", "t1") == rec
    again = record(input="something else")
    assert await backend.create(again) == rec  # the stored one, unchanged
    assert await backend.get("alice", "t1") == rec


async def test_owners_do_not_see_each_other(backend: TaskBackend) -> None:
    await backend.create(record("alice", "t1"))
    assert await backend.get("bob", "t1") is None
    assert await backend.list_tasks("bob") == []
    assert await backend.read("bob", "t1", 0) is None
    assert await backend.request_cancel("bob", "t1", "x") == "unknown"
    # The same id for another owner is another task.
    assert await backend.create(record("bob", "t1", input="other")) is None
    got = await backend.get("bob", "t1")
    assert got is not None and got.input == "other"


async def test_list_tasks_oldest_first(backend: TaskBackend) -> None:
    for i, created in enumerate([1.0, 2.0, 3.0]):
        await backend.create(record(task_id=f"t{i}", created=created))
    assert [r.task_id for r in await backend.list_tasks("alice")] == ["t0", "t1", "t2"]


async def test_active_limit_counts_active_tasks_only(backend: TaskBackend) -> None:
    await backend.create(record(task_id="a"), max_active=2)
    b = record(task_id="b")
    await backend.create(b, max_active=2)
    assert await backend.active_count("alice") == 2
    with pytest.raises(ActiveLimitReached) as err:
        await backend.create(record(task_id="c"), max_active=2)
    assert err.value.limit == 2
    # An existing id is returned even at the limit (an idempotent retry is no new task).
    assert await backend.create(record(task_id="b"), max_active=2) == b
    assert await backend.active_count("bob") == 0
    run_to_end(backend, b, 3)
    await backend.flush()
    assert await backend.active_count("alice") == 1
    assert await backend.create(record(task_id="c"), max_active=2) is None


async def test_update_changes_fields_but_not_last_seq(backend: TaskBackend) -> None:
    rec = record()
    await backend.create(rec)
    backend.append(rec, frame(1, TaskStarted()))
    running = TaskRecord(**{**_fields(rec), "state": "running", "usage": Usage(input_tokens=5)})
    backend.update(running)
    await backend.flush()
    got = await backend.get("alice", "t1")
    assert got is not None
    assert (got.state, got.usage, got.last_seq) == ("running", Usage(input_tokens=5), 1)


# -- event log


async def test_append_then_read_after_any_seq(backend: TaskBackend) -> None:
    rec = record()
    await backend.create(rec)
    final = run_to_end(backend, rec, 6)
    await backend.flush()
    got = await backend.get("alice", "t1")
    assert got is not None
    assert (got.state, got.last_seq, got.updated) == ("completed", 6, 1006.0)
    assert got.final and final.final
    for after in range(0, 8):
        found = await backend.read("alice", "t1", after)
        assert found is not None
        assert found.first_available_seq == 1
        assert [f.seq for f in found.frames] == list(range(after + 1, 7))
    assert await backend.read("alice", "nope", 0) is None


async def test_log_retention_by_count(make_backend: BackendFactory) -> None:
    backend = make_backend(Retention(max_events=5))
    rec = record()
    await backend.create(rec)
    run_to_end(backend, rec, 22)
    await backend.flush()
    found = await backend.read("alice", "t1", 0)
    assert found is not None
    assert found.first_available_seq == 18
    assert [f.seq for f in found.frames] == [18, 19, 20, 21, 22]
    found = await backend.read("alice", "t1", 20)
    assert found is not None and [f.seq for f in found.frames] == [21, 22]


async def test_log_retention_by_bytes_keeps_the_newest(make_backend: BackendFactory) -> None:
    backend = make_backend(Retention(max_bytes=600))
    rec = record()
    await backend.create(rec)
    backend.append(rec, frame(1, TaskStarted()))
    for seq in range(2, 52):
        backend.append(rec, frame(seq))
    big = LlmResponse(delta="x" * 5000)  # alone over the bound: still kept, alone
    backend.append(rec, frame(52, big))
    await backend.flush()
    found = await backend.read("alice", "t1", 0)
    assert found is not None
    assert found.first_available_seq == 52 and [f.seq for f in found.frames] == [52]


async def test_listeners_get_stored_events_in_order_until_undone(backend: TaskBackend) -> None:
    rec = record()
    first: list[EventFrame | Gap] = []
    second: list[EventFrame | Gap] = []
    three = asyncio.Event()

    def on_second(item: EventFrame | Gap) -> None:
        second.append(item)
        if len(second) == 3:
            three.set()

    # Listening before the task exists is allowed.
    undo_first = await backend.listen("alice", "t1", first.append)
    await backend.listen("alice", "t1", on_second)
    await backend.create(rec)
    for seq in (1, 2):
        backend.append(rec, frame(seq))
    await backend.flush()
    undo_first()
    undo_first()  # idempotent
    backend.append(rec, frame(3))
    await three.wait()
    assert [f.seq for f in second if isinstance(f, EventFrame)] == [1, 2, 3]
    assert [f.seq for f in first if isinstance(f, EventFrame)] == [1, 2]


async def test_a_failing_listener_does_not_disturb_the_others(backend: TaskBackend) -> None:
    rec = record()
    got: list[EventFrame | Gap] = []
    done = asyncio.Event()

    def broken(item: EventFrame | Gap) -> None:
        raise RuntimeError("listener bug")

    def ok(item: EventFrame | Gap) -> None:
        got.append(item)
        done.set()

    await backend.listen("alice", "t1", broken)
    await backend.listen("alice", "t1", ok)
    await backend.create(rec)
    backend.append(rec, frame(1))
    await done.wait()
    assert [f.seq for f in got if isinstance(f, EventFrame)] == [1]


async def test_appending_to_a_removed_task_stores_nothing(backend: TaskBackend) -> None:
    rec = record()
    await backend.create(rec)
    backend.expire("alice", "t1", 0)
    backend.append(rec, frame(1))
    await backend.flush()
    assert await backend.get("alice", "t1") is None
    assert await backend.read("alice", "t1", 0) is None


# -- control


async def test_cancel_requests_reach_the_node_running_the_task(backend: TaskBackend) -> None:
    one, two = Handler(), Handler()
    backend.attach("n1", one)
    backend.attach("n2", two)
    rec = record(node="n2")
    await backend.create(rec)
    assert await backend.request_cancel("alice", "t1", "stop") == "accepted"
    await two.told.wait()
    assert two.cancels == [("alice", "t1", "stop")] and one.cancels == []
    assert await backend.request_cancel("alice", "nope", "stop") == "unknown"
    run_to_end(backend, rec, 2)
    await backend.flush()
    assert await backend.request_cancel("alice", "t1", "stop") == "already_terminal"


async def test_answers_and_messages_reach_the_node_running_the_task(
    backend: TaskBackend,
) -> None:
    one, two = Handler(), Handler()
    backend.attach("n1", one)
    backend.attach("n2", two)
    rec = record(node="n2")
    await backend.create(rec)

    def given(text: str) -> Input:
        return Input(id=1, task_id="t1", request_id="question-1", text=text)

    # The running node's verdicts come back as they are.
    assert await backend.send_input("alice", "t1", given("ok")) is None
    assert await backend.send_input("alice", "t1", given("again")) == ANSWER_RESENT
    assert await backend.send_input("alice", "t1", given("x")) == "invalid_answer: no"
    assert await backend.send_message("alice", "t1", "steer") == "msg-1"
    assert await backend.send_message("alice", "t1", "full") == "!too_many_messages: full"
    assert [a[2].text for a in two.answers] == ["ok", "again", "x"] and one.answers == []
    assert [m[2] for m in two.messages] == ["steer", "full"] and one.messages == []
    # No active task: refused without asking a node (another owner's task is unknown).
    assert (await backend.send_input("bob", "t1", given("ok")) or "").startswith("unknown_task:")
    assert (await backend.send_message("alice", "nope", "x")).startswith("!unknown_task:")
    run_to_end(backend, rec, 2)
    await backend.flush()
    assert (await backend.send_input("alice", "t1", given("ok")) or "").startswith("task_finished:")
    assert (await backend.send_message("alice", "t1", "x")).startswith("!task_finished:")
    assert len(two.answers) == 3 and len(two.messages) == 2


# -- threads


def in_thread(task_id: str, thread_id: str = "th", owner: str = "alice") -> TaskRecord:
    now = time.time()
    return record(owner, task_id, created=now, updated=now, thread_id=thread_id)


def turn_of(rec: TaskRecord) -> ThreadTurn:
    return ThreadTurn(task_id=rec.task_id, input=rec.input, created=rec.created)


async def create_in_thread(
    backend: TaskBackend, rec: TaskRecord, if_busy: str = "reject", max_queued: int = 8
) -> TaskRecord | tuple[str, ...]:
    return await backend.create_in_thread(
        rec,
        turn_of(rec),
        if_busy=if_busy,  # type: ignore[arg-type]
        max_queued=max_queued,
    )


async def test_create_in_thread_decides_busy_with_the_create(backend: TaskBackend) -> None:
    first = in_thread("t1")
    assert await create_in_thread(backend, first) == ()
    assert [t.task_id for t in await backend.thread_turns("alice", "th") or []] == ["t1"]
    assert await backend.get("alice", "t1") == first
    with pytest.raises(ThreadBusy) as busy:
        await create_in_thread(backend, in_thread("t2"))
    assert busy.value.busy == ("t1",) and not busy.value.queue_full
    assert await backend.get("alice", "t2") is None  # refused: nothing stored
    assert await create_in_thread(backend, in_thread("t2"), "enqueue") == ("t1",)
    with pytest.raises(ThreadBusy) as full:
        await create_in_thread(backend, in_thread("t3"), "enqueue", max_queued=1)
    assert full.value.busy == ("t1", "t2") and full.value.queue_full
    assert await create_in_thread(backend, in_thread("t3"), "interrupt") == ("t1", "t2")
    # An existing id is returned, whatever the thread's state (an idempotent retry).
    assert await create_in_thread(backend, in_thread("t1")) == first
    # Another owner's thread of that id is another thread; another thread is idle.
    assert await create_in_thread(backend, in_thread("t1", owner="bob")) == ()
    assert await create_in_thread(backend, in_thread("u1", thread_id="other")) == ()
    # A task that ended is no longer busy, even before the thread's copy of its turn says so.
    for rec in (first, in_thread("t2"), in_thread("t3")):
        run_to_end(backend, rec, 2)
    await backend.flush()
    assert await create_in_thread(backend, in_thread("t4")) == ()
    assert [t.task_id for t in await backend.thread_turns("alice", "th") or []] == [
        "t1",
        "t2",
        "t3",
        "t4",
    ]


async def test_create_in_thread_counts_the_active_limit(backend: TaskBackend) -> None:
    await backend.create(record(task_id="a"), max_active=1)
    with pytest.raises(ActiveLimitReached):
        await backend.create_in_thread(
            in_thread("t1"),
            turn_of(in_thread("t1")),
            if_busy="reject",
            max_queued=8,
            max_active=1,
        )
    assert await backend.thread_turns("alice", "th") is None


async def test_concurrent_starts_on_an_idle_thread_one_wins(
    make_backend: BackendFactory,
) -> None:
    # Two backends on one store play two gateways (one store for the in-memory one).
    first = make_backend()
    second = make_backend() if not isinstance(first, InMemoryBackend) else first
    for n in range(5):
        outcomes = await asyncio.gather(
            *(
                create_in_thread(b, in_thread(f"{n}-{i}", thread_id=f"race-{n}"))
                for i, b in enumerate((first, second, first, second))
            ),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in outcomes) == [
            "ThreadBusy",
            "ThreadBusy",
            "ThreadBusy",
            "tuple",
        ], outcomes
        assert len(await first.thread_turns("alice", f"race-{n}") or []) == 1
        enqueued = await asyncio.gather(
            *(
                create_in_thread(b, in_thread(f"{n}-q{i}", thread_id=f"race-{n}"), "enqueue")
                for i, b in enumerate((first, second, first))
            )
        )
        # Each waits for all the thread's tasks created before it: one order, no ties.
        assert sorted(len(e) for e in enqueued) == [1, 2, 3]  # type: ignore[arg-type]
        turns = [t.task_id for t in await second.thread_turns("alice", f"race-{n}") or []]
        for e in enqueued:
            assert isinstance(e, tuple) and list(e) == turns[: len(e)]


# -- lifetime


async def test_expire_removes_the_task_and_frees_the_id(backend: TaskBackend) -> None:
    rec = record()
    await backend.create(rec)
    run_to_end(backend, rec, 3)
    backend.expire("alice", "t1", float("inf"))  # kept (until the bounds need the room)
    await backend.flush()
    assert await backend.get("alice", "t1") is not None
    backend.expire("alice", "t1", 0)
    await backend.flush()
    assert await backend.get("alice", "t1") is None
    assert await backend.read("alice", "t1", 0) is None
    assert await backend.list_tasks("alice") == []
    assert await backend.create(record(input="again")) is None


async def finish_tasks(backend: TaskBackend, owner: str, n: int, size: int = 1) -> None:
    for i in range(n):
        rec = record(owner, f"{owner}-{i}", input="x" * size, created=float(i))
        await backend.create(rec)
        run_to_end(backend, rec, 3)
    await backend.flush()


async def ids(backend: TaskBackend, owner: str) -> list[str]:
    return [r.task_id for r in await backend.list_tasks(owner)]


async def test_finished_tasks_per_owner_oldest_dropped_first(make_backend: BackendFactory) -> None:
    backend = make_backend(Retention(max_finished_per_owner=3))
    active = record("alice", "running", created=-1.0)
    await backend.create(active)
    await finish_tasks(backend, "alice", 5)
    await finish_tasks(backend, "bob", 2)
    # Active tasks are never dropped; of the finished ones, the newest 3 remain.
    assert await ids(backend, "alice") == ["running", "alice-2", "alice-3", "alice-4"]
    assert await ids(backend, "bob") == ["bob-0", "bob-1"]
    assert await backend.get("alice", "alice-0") is None


async def test_finished_tasks_in_all(make_backend: BackendFactory) -> None:
    backend = make_backend(Retention(max_finished=4))
    await finish_tasks(backend, "alice", 3)
    await finish_tasks(backend, "bob", 3)
    assert await ids(backend, "alice") == ["alice-2"]
    assert await ids(backend, "bob") == ["bob-0", "bob-1", "bob-2"]


async def test_finished_tasks_by_bytes(make_backend: BackendFactory) -> None:
    # Each finished task here counts its 10,000-character input and a little more.
    backend = make_backend(
        Retention(max_finished_bytes_per_owner=25_000, max_finished_bytes=35_000)
    )
    await finish_tasks(backend, "alice", 4, size=10_000)
    assert await ids(backend, "alice") == ["alice-2", "alice-3"]
    await finish_tasks(backend, "bob", 2, size=10_000)
    assert len(await ids(backend, "alice")) + len(await ids(backend, "bob")) == 3
    assert await ids(backend, "bob") == ["bob-0", "bob-1"]
