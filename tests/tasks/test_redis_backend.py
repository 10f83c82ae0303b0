"""What only the Redis backend has: several processes on one task space.

Each ``RedisBackend`` here plays one gateway process (its own connections, flusher, lease and
subscriber) on the test session's real ``redis-server``. The behaviour every backend shares is
in the contract suite (``test_backend.py``), which runs over this backend too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio as aredis

from gateway.tasks.backend import BackendUnavailable, Retention, TaskRecord, frame_size
from gateway.tasks.redis_backend import RedisBackend, RedisConfig
from protocol.events import LlmResponse, TaskCompleted, TaskFailed, TaskStarted
from protocol.frames import EventFrame, Gap, StartOptions
from tests.redis_server import RedisServer

LEASE = 0.6  # seconds: a lost node is noticed within 0.8 s


class Handler:
    """A node's handler that records what the backend told it."""

    def __init__(self, adopts: bool = False) -> None:
        self.cancels: list[tuple[str, str, str]] = []
        self.lost: list[tuple[str, str, str]] = []
        self.adopted: list[TaskRecord] = []
        self.changed = asyncio.Event()
        if adopts:
            self.task_adopted = self._adopt

    def cancel_requested(self, owner: str, task_id: str, reason: str) -> None:
        self.cancels.append((owner, task_id, reason))
        self.changed.set()

    def task_lost(self, owner: str, task_id: str, reason: str) -> None:
        self.lost.append((owner, task_id, reason))
        self.changed.set()

    def _adopt(self, record: TaskRecord) -> None:
        self.adopted.append(record)
        self.changed.set()

    async def wait(self, check: Callable[[], object]) -> None:
        while not check():
            self.changed.clear()
            await self.changed.wait()


class Collector:
    """A listener keeping what it got, with a wait for a condition."""

    def __init__(self) -> None:
        self.items: list[EventFrame | Gap] = []
        self.changed = asyncio.Event()

    def __call__(self, item: EventFrame | Gap) -> None:
        self.items.append(item)
        self.changed.set()

    @property
    def seqs(self) -> list[int]:
        return [i.seq for i in self.items if isinstance(i, EventFrame)]

    async def wait(self, check: Callable[[], object]) -> None:
        while not check():
            self.changed.clear()
            await self.changed.wait()


Factory = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture
async def backends(redis_url: str) -> AsyncIterator[Factory]:
    made: list[RedisBackend] = []

    async def make(
        node: str | None = None,
        handler: Handler | None = None,
        url: str = redis_url,
        **config: object,
    ) -> RedisBackend:
        retention = config.pop("retention", None)
        backend = RedisBackend(
            RedisConfig(url=url, lease=LEASE, **config),  # type: ignore[arg-type]
            retention,  # type: ignore[arg-type]
        )
        if node is not None:
            backend.attach(node, handler or Handler())
        await backend.start()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


def record(task_id: str = "t1", owner: str = "alice", node: str = "a", **kw: object) -> TaskRecord:
    return TaskRecord(
        owner=owner,
        task_id=task_id,
        input="hello",
        options=StartOptions(),
        created=time.time(),
        node=node,
        **kw,  # type: ignore[arg-type]
    )


def frame(task_id: str, seq: int, final: bool = False) -> EventFrame:
    event = TaskCompleted(final_answer="42") if final else LlmResponse(delta=f"w{seq} ")
    if seq == 1 and not final:
        event = TaskStarted(input="hello", model="m")
    return EventFrame(task_id=task_id, seq=seq, ts=time.time(), event=event)


def run(backend: RedisBackend, rec: TaskRecord, first: int, last: int) -> TaskRecord:
    rec = TaskRecord(**{**_asdict(rec), "state": "running"})
    for seq in range(first, last + 1):
        backend.append(rec, frame(rec.task_id, seq))
    return rec


def _asdict(rec: TaskRecord) -> dict[str, object]:
    return {f: getattr(rec, f) for f in rec.__struct_fields__}


async def test_events_from_one_process_reach_listeners_in_another(backends: Factory) -> None:
    a = await backends("a")
    b = await backends("b")
    rec = record()
    assert await a.create(rec) is None
    seen = Collector()
    await b.listen("alice", "t1", seen)
    rec = run(a, rec, 1, 50)
    a.append(TaskRecord(**{**_asdict(rec), "state": "completed"}), frame("t1", 51, final=True))
    await seen.wait(lambda: 51 in seen.seqs)
    assert seen.seqs == list(range(1, 52))
    stored = await b.get("alice", "t1")
    assert stored is not None and stored.state == "completed" and stored.last_seq == 51
    assert await b.active_count("alice") == 0
    found = await b.read("alice", "t1", 40)
    assert found is not None and [f.seq for f in found.frames] == list(range(41, 52))


async def test_durable_before_visible(backends: Factory, redis_url: str) -> None:
    a = await backends("a")
    rec = record()
    await a.create(rec)
    check = redis.Redis.from_url(redis_url)
    stored_when_seen: list[bool] = []

    def listener(item: EventFrame | Gap) -> None:
        # A blocking read in a listener is a test's privilege: is the event in Redis already?
        assert isinstance(item, EventFrame)
        # The entry holding it: the first whose id (its last event's seq) is not below.
        entries = check.xrange(a._task_keys("alice", "t1")[1], min=f"{item.seq}-0", count=1)
        seqs = [f["seq"] for f in json.loads(entries[0][1][b"f"])] if entries else []
        stored_when_seen.append(item.seq in seqs)

    await a.listen("alice", "t1", listener)
    run(a, rec, 1, 20)
    await a.flush()
    check.close()
    assert stored_when_seen == [True] * 20


async def test_another_owner_sees_nothing_in_any_process(backends: Factory) -> None:
    a = await backends("a")
    b = await backends("b")
    await a.create(record())
    run(a, record(), 1, 3)
    await a.flush()
    assert await b.get("mallory", "t1") is None
    assert await b.read("mallory", "t1", 0) is None
    assert await b.request_cancel("mallory", "t1", "no") == "unknown"
    assert await b.list_tasks("mallory") == []


async def test_create_is_idempotent_and_counts_across_processes(backends: Factory) -> None:
    a = await backends("a")
    b = await backends("b")
    results = await asyncio.gather(a.create(record(node="a")), b.create(record(node="b")))
    assert sorted(r is None for r in results) == [False, True]  # exactly one won
    await a.create(record("t2"))
    from gateway.tasks.backend import ActiveLimitReached

    with pytest.raises(ActiveLimitReached):
        await b.create(record("t3", node="b"), max_active=2)
    assert await b.active_count("alice") == 2


async def test_a_start_retried_on_the_running_node_keeps_its_task_swept(
    backends: Factory, redis_url: str
) -> None:
    # The retry finds the task (this node's, running): it stays in the node's set, which the
    # sweeper reads when the node is lost; a task found on another node is not named here.
    a = await backends("a")
    b = await backends("b")
    rec = record(node="a")
    assert await a.create(rec) is None
    later = msgspec.structs.replace(rec, created=rec.created + 1)  # another start, same id
    assert await a.create(later) is not None
    assert await b.create(msgspec.structs.replace(later, node="b")) is not None
    await a.flush()
    await b.flush()
    client = aredis.Redis.from_url(redis_url)
    assert await client.smembers(a._node_key("a", "tasks")) == {b"alice\0t1"}
    assert await client.smembers(b._node_key("b", "tasks")) == set()
    await client.aclose()


class _HeldWire:
    """Stands in for a backend's flusher connection: holds each batch until released, or
    loses the reply of the next one (the batch was carried out)."""

    def __init__(self, wire: Any) -> None:
        self.wire = wire
        self.sent = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.lose_next = False

    async def call(self, packed: bytes, n: int) -> list[Any]:
        self.sent.set()
        await self.release.wait()
        replies = await self.wire.call(packed, n)
        if self.lose_next:
            self.lose_next = False
            raise redis.exceptions.ConnectionError("the reply was lost")
        return replies

    async def close(self) -> None:
        await self.wire.close()


async def test_a_create_whose_reply_was_lost_is_known_as_ours(backends: Factory) -> None:
    a = await backends("a")
    held = _HeldWire(a._wire)
    a._wire = held
    held.lose_next = True
    rec = record()
    assert await a.create(rec) is None  # sent again: found as this very record
    assert ("alice", "t1") in a._local
    later = msgspec.structs.replace(rec, created=rec.created + 1)  # another start finds it
    assert await a.create(later) is not None


async def test_a_create_given_up_after_it_was_sent_runs_all_the_same(
    backends: Factory, redis_url: str
) -> None:
    # The start stopped waiting once its create was on its way: the task exists, so this
    # node runs it (as the manager does with a task it created but cannot follow).
    handler = Handler(adopts=True)
    a = await backends("a", handler)
    held = _HeldWire(a._wire)
    a._wire = held
    held.release.clear()
    held.sent.clear()
    rec = record()
    start = asyncio.ensure_future(a.create(rec))
    await held.sent.wait()  # the create is in the batch on its way
    start.cancel()
    held.release.set()
    with pytest.raises(asyncio.CancelledError):
        await start
    await handler.wait(lambda: handler.adopted)
    assert handler.adopted == [rec] and ("alice", "t1") in a._local
    assert await a.create(msgspec.structs.replace(rec, created=rec.created + 1)) == rec
    client = aredis.Redis.from_url(redis_url)
    assert await client.smembers(a._node_key("a", "tasks")) == {b"alice\0t1"}
    await client.aclose()


async def test_a_create_whose_reply_came_as_its_start_was_stopped_runs(
    backends: Factory,
) -> None:
    # The reply is handed over, but the start is cancelled before it resumes: the reply is
    # not lost with it.
    handler = Handler(adopts=True)
    a = await backends("a", handler)
    held = _HeldWire(a._wire)
    a._wire = held
    loop = asyncio.get_running_loop()
    starts: list[asyncio.Future[object]] = []

    async def call(packed: bytes, n: int) -> list[Any]:
        replies = await held.wire.call(packed, n)
        loop.call_soon(starts[0].cancel)  # runs before the start resumes with its reply
        return replies

    held.call = call  # type: ignore[method-assign]
    rec = record()
    starts.append(asyncio.ensure_future(a.create(rec)))
    with pytest.raises(asyncio.CancelledError):
        await starts[0]
    assert handler.adopted == [rec] and ("alice", "t1") in a._local


async def test_a_create_given_up_before_it_was_sent_is_never_sent(backends: Factory) -> None:
    a = await backends("a")
    held = _HeldWire(a._wire)
    a._wire = held
    rec = record("t0")
    await a.create(rec)
    held.release.clear()
    held.sent.clear()
    run(a, rec, 1, 3)
    await held.sent.wait()  # a batch is on its way: the create waits for the next one
    start = asyncio.ensure_future(a.create(record()))
    await asyncio.sleep(0)  # one step: the create is queued
    assert len(a._calls) == 1 and a._calls[0].sends == 0
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    held.release.set()
    await a.flush()
    assert await a.get("alice", "t1") is None


async def test_cancel_through_another_process_reaches_the_running_node(backends: Factory) -> None:
    handler = Handler()
    a = await backends("a", handler)
    b = await backends("b")
    await a.create(record())
    assert await b.request_cancel("alice", "t1", "stop it") == "accepted"
    await handler.wait(lambda: handler.cancels)
    assert handler.cancels[0] == ("alice", "t1", "stop it")


async def test_cancel_without_the_publish_arrives_on_the_lease_tick(
    backends: Factory, redis_url: str
) -> None:
    handler = Handler()
    a = await backends("a", handler)
    await a.create(record())
    # Only the fallback: the request in node a's set, no message on its control channel.
    client = aredis.Redis.from_url(redis_url)
    await client.sadd(
        "osp:node:a:cancels", b'{"owner":"alice","task_id":"t1","reason":"by the set"}'
    )
    await client.aclose()
    await handler.wait(lambda: handler.cancels)
    assert handler.cancels == [("alice", "t1", "by the set")]


async def test_a_lost_node_s_tasks_end_with_node_lost_and_its_late_writes_are_refused(
    backends: Factory,
) -> None:
    zombie = Handler()
    a = await backends("a", zombie)
    b = await backends("b")
    rec = record()
    await a.create(rec)
    rec = run(a, rec, 1, 5)
    await a.flush()
    seen = Collector()
    await b.listen("alice", "t1", seen)
    a.stop_lease()  # process a freezes: its lease runs out, its connections stay
    await seen.wait(lambda: any(isinstance(i, EventFrame) and i.seq == 6 for i in seen.items))
    last = seen.items[-1]
    assert isinstance(last, EventFrame) and isinstance(last.event, TaskFailed)
    assert last.event.code == "node_lost"
    stored = await b.get("alice", "t1")
    assert stored is not None and stored.state == "failed" and stored.epoch == rec.epoch + 1
    # The zombie wakes up and writes: refused, and told so.
    run(a, rec, 6, 8)
    await zombie.wait(lambda: zombie.lost)
    assert zombie.lost[0][:2] == ("alice", "t1")
    found = await b.read("alice", "t1", 0)
    assert found is not None and [f.seq for f in found.frames] == [1, 2, 3, 4, 5, 6]
    assert seen.seqs == [6]  # b listened after 1-5 were stored
    assert await b.active_count("alice") == 0


async def test_a_lost_node_s_queued_task_is_adopted(backends: Factory) -> None:
    a = await backends("a")
    survivor = Handler(adopts=True)
    b = await backends("b", survivor)
    await a.create(record())  # pending: queued on a, no work done
    a.stop_lease()
    await survivor.wait(lambda: survivor.adopted)
    moved = survivor.adopted[0]
    assert (moved.task_id, moved.node, moved.state) == ("t1", "b", "pending")
    assert moved.epoch == 1
    run(b, moved, 1, 3)
    await b.flush()
    found = await b.read("alice", "t1", 0)
    assert found is not None and [f.seq for f in found.frames] == [1, 2, 3]


async def test_a_lost_subscriber_connection_reads_the_hole(
    backends: Factory, redis_url: str
) -> None:
    a = await backends("a")
    b = await backends("b")
    rec = record()
    await a.create(rec)
    seen = Collector()
    await b.listen("alice", "t1", seen)
    rec = run(a, rec, 1, 3)
    await seen.wait(lambda: 3 in seen.seqs)
    client = aredis.Redis.from_url(redis_url)
    await client.client_kill_filter(_type="pubsub")
    await client.aclose()
    run(a, rec, 4, 30)
    await seen.wait(lambda: 30 in seen.seqs)
    assert seen.seqs == list(range(1, 31))


async def test_a_hole_that_retention_trimmed_is_a_gap(backends: Factory, redis_url: str) -> None:
    small = Retention(max_events=5)
    a = await backends("a", retention=small)
    b = await backends("b", retention=small)
    rec = record()
    await a.create(rec)
    seen = Collector()
    await b.listen("alice", "t1", seen)
    rec = run(a, rec, 1, 2)
    await seen.wait(lambda: 2 in seen.seqs)
    b.pause_subscriber()
    rec = run(a, rec, 3, 20)
    await a.flush()
    b.resume_subscriber()
    run(a, rec, 21, 21)
    await seen.wait(lambda: 21 in seen.seqs)
    gaps = [i for i in seen.items if isinstance(i, Gap)]
    assert len(gaps) == 1 and gaps[0].after_seq == 2
    assert seen.seqs == [1, 2, *range(gaps[0].first_available_seq, 22)]


async def test_redis_restart_loses_no_acknowledged_event(backends: Factory, tmp_path: Path) -> None:
    server = RedisServer(tmp_path, aof=True)
    server.start()
    try:
        handler = Handler()
        a = await backends("a", handler, url=server.url)
        rec = record()
        await a.create(rec)
        seen = Collector()
        await a.listen("alice", "t1", seen)
        rec = run(a, rec, 1, 10)
        await seen.wait(lambda: 10 in seen.seqs)
        server.stop()
        rec = run(a, rec, 11, 40)  # buffered while Redis is away
        with pytest.raises(BackendUnavailable):
            await a.create(record("t2"))
        while a.health() is None:
            a.health_changed.clear()
            await a.health_changed.wait()
        assert "unreachable" in (a.health() or "")
        assert seen.seqs == list(range(1, 11))  # nothing visible that is not stored
        server.start()
        await seen.wait(lambda: 40 in seen.seqs)
        assert seen.seqs == list(range(1, 41))
        found = await a.read("alice", "t1", 0)
        assert found is not None and [f.seq for f in found.frames] == list(range(1, 41))
        assert handler.lost == []
    finally:
        server.stop()


async def test_a_start_refused_while_redis_is_down_is_never_created_later(
    backends: Factory, tmp_path: Path
) -> None:
    # Its create never reached Redis: refused at once, and nothing of it is carried out once
    # Redis is back (a start the client was told to retry must not run anyway).
    server = RedisServer(tmp_path)
    server.start()
    try:
        a = await backends("a", url=server.url)
        await a.create(record("t0"))
        server.stop()
        # The flusher's idle connection sees Redis go (it reads nothing else meanwhile).
        assert await a._wire._reader.read(1) == b""
        with pytest.raises(BackendUnavailable):
            await a.create(record())
        assert not a._calls
        with pytest.raises(BackendUnavailable):  # refused at once while the outage lasts
            await a.create(record("t2"))
        server.start()
        while a.health() is not None:
            a.health_changed.clear()
            await a.health_changed.wait()
        assert await a.get("alice", "t0") is None  # (no persistence: Redis came back empty)
        assert await a.get("alice", "t1") is None
        assert await a.get("alice", "t2") is None
    finally:
        server.stop()


async def test_past_the_outage_bound_running_tasks_end_with_store_unavailable(
    backends: Factory, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path, aof=True)
    server.start()
    try:
        handler = Handler()
        a = await backends("a", handler, url=server.url, max_buffered=20)
        rec = record()
        await a.create(rec)
        rec = run(a, rec, 1, 5)
        await a.flush()
        server.stop()
        run(a, rec, 6, 30)  # past max_buffered
        await handler.wait(lambda: handler.lost)
        assert handler.lost[0][:2] == ("alice", "t1")
        assert "unreachable" in handler.lost[0][2]
        server.start()
        while a.health() is not None:
            a.health_changed.clear()
            await a.health_changed.wait()
        await a.flush()
        found = await a.read("alice", "t1", 0)
        assert found is not None
        last = found.frames[-1]
        assert isinstance(last.event, TaskFailed) and last.event.code == "store_unavailable"
        assert [f.seq for f in found.frames] == list(range(1, 32))
        stored = await a.get("alice", "t1")
        assert stored is not None and stored.state == "failed"
    finally:
        server.stop()


# ---------------------------------------------------------------------- writes (one call per task)


async def _published(redis_url: str, channel: str) -> tuple[aredis.Redis, Any]:
    """A raw subscriber to a task's channel, as another process has it."""
    client = aredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.execute_command("SSUBSCRIBE", channel)
    assert (await pubsub.parse_response(block=True))[0] == b"ssubscribe"
    return client, pubsub


async def test_a_write_larger_than_the_batch_is_split_in_order(
    backends: Factory, redis_url: str
) -> None:
    a = await backends("a", batch=4)
    b = await backends("b")
    rec = record()
    await a.create(rec)
    here, there = Collector(), Collector()
    await a.listen("alice", "t1", here)
    await b.listen("alice", "t1", there)
    client, pubsub = await _published(redis_url, a._task_keys("alice", "t1")[2])
    # 23 events and the terminal one queued at once: one task's writes, more than a batch.
    rec = run(a, rec, 1, 23)
    a.append(TaskRecord(**{**_asdict(rec), "state": "completed"}), frame("t1", 24, final=True))
    await there.wait(lambda: 24 in there.seqs)
    await here.wait(lambda: 24 in here.seqs)
    assert here.seqs == there.seqs == list(range(1, 25))
    messages: list[list[int]] = []
    while sum(len(m) for m in messages) < 24:
        reply = await pubsub.parse_response(block=True)
        assert reply[0] == b"smessage"
        messages.append([f["seq"] for f in json.loads(reply[2])])
    await pubsub.aclose()
    await client.aclose()
    # Each call carried at most a batch of events, in seq order, none twice.
    assert all(1 <= len(m) <= 4 for m in messages) and len(messages) >= 6
    assert [s for m in messages for s in m] == list(range(1, 25))
    stored = await b.get("alice", "t1")
    assert stored is not None and stored.state == "completed" and stored.last_seq == 24
    assert await b.active_count("alice") == 0


async def test_a_write_that_spans_a_fencing_change_stores_none_of_it(
    backends: Factory, redis_url: str
) -> None:
    zombie = Handler()
    a = await backends("a", zombie)
    rec, other = record(), record("t2")
    await a.create(rec)
    await a.create(other)
    rec, other = run(a, rec, 1, 3), run(a, other, 1, 3)
    await a.flush()
    check = redis.Redis.from_url(redis_url)
    # Events 4 and 5 are queued under epoch 0; before they are sent another node takes the
    # task (the epoch moves); event 6 and a record change join the same write.
    run(a, rec, 4, 5)
    run(a, other, 4, 5)
    check.hincrby(a._task_keys("alice", "t1")[0], "epoch", 1)  # no await: nothing was sent
    rec = run(a, rec, 6, 6)
    a.update(TaskRecord(**{**_asdict(rec), "progress": "late"}))
    await zombie.wait(lambda: zombie.lost)
    await a.flush()
    assert [x[:2] for x in zombie.lost] == [("alice", "t1")]
    found = await a.read("alice", "t1", 0)
    assert found is not None and [f.seq for f in found.frames] == [1, 2, 3]
    stored = await a.get("alice", "t1")
    assert stored is not None and stored.last_seq == 3 and stored.progress is None
    # The other task's write in the same batch is stored whole.
    found = await a.read("alice", "t2", 0)
    assert found is not None and [f.seq for f in found.frames] == [1, 2, 3, 4, 5]
    # Refused writes count no more as buffered.
    assert a.buffered == 0
    check.close()


async def test_a_write_sent_again_stores_and_publishes_its_events_once(
    backends: Factory, redis_url: str
) -> None:
    # What the flusher does after a lost reply: the same calls again; a write's events are
    # one entry, stored (and published) whole or not at all.
    a = await backends("a")
    rec = record()
    await a.create(rec)
    keys = a._task_keys("alice", "t1")
    client, pubsub = await _published(redis_url, keys[2])

    async def write(seqs: range) -> object:
        payloads = [
            json.dumps({"task_id": "t1", "seq": seq, "ts": 1.0, "event": {}}) for seq in seqs
        ]
        base = a._base("alice")
        return await client.evalsha(
            a._scripts["APPEND"].sha,
            4,
            base + "active",
            *keys[:3],
            1000,  # max events
            1 << 20,  # max bytes
            base,
            1000,  # max finished tasks of the owner
            1 << 20,  # their max bytes
            "t1",
            rec.epoch,
            0,  # not final
            seqs[0],
            seqs[-1],
            "[" + ",".join(payloads) + "]",
            str([len(p) for p in payloads]),  # their sizes
            sum(map(len, payloads)),  # their bytes
            1,  # one field: updated
            "updated",
            "2.0",
        )

    assert await write(range(1, 4)) == [[[1, 0]], []]
    assert await write(range(1, 4)) == [[0], []]  # stored: nothing written or published
    assert await write(range(4, 6)) == [[[1, 0]], []]
    assert await write(range(4, 6)) == [[0], []]
    entries = await client.xrange(keys[1])
    assert [e[0] for e in entries] == [b"3-0", b"5-0"]  # one entry per write: its last seq
    assert await client.hget(keys[0], "last_seq") == b"5"
    published = []
    for _ in range(2):
        reply = await pubsub.parse_response(block=True)
        published.append([f["seq"] for f in json.loads(reply[2])])
    assert published == [[1, 2, 3], [4, 5]]
    await pubsub.aclose()
    await client.aclose()


async def test_a_log_written_an_event_per_entry_is_read_and_trimmed(
    backends: Factory, redis_url: str
) -> None:
    # Earlier versions stored one event per entry (a JSON object, no sizes): such a log is
    # read, appended to and trimmed like one of today's.
    a = await backends("a", retention=Retention(max_events=4))
    rec = record()
    await a.create(rec)
    keys = a._task_keys("alice", "t1")
    client = aredis.Redis.from_url(redis_url)
    old = [msgspec.json.encode(frame("t1", seq)) for seq in (1, 2, 3)]
    for seq, payload in enumerate(old, start=1):
        await client.xadd(keys[1], {"f": payload}, id=f"{seq}-0")
    await client.hset(keys[0], mapping={"last_seq": 3, "bytes": sum(map(len, old))})
    found = await a.read("alice", "t1", 1)
    assert found is not None and [f.seq for f in found.frames] == [2, 3]
    run(a, rec, 4, 6)  # one write of three: the log keeps 3..6
    await a.flush()
    found = await a.read("alice", "t1", 0)
    assert found is not None and found.first_available_seq == 3
    assert [f.seq for f in found.frames] == [3, 4, 5, 6]
    assert [e[0] for e in await client.xrange(keys[1])] == [b"3-0", b"6-0"]
    sizes = [frame_size(frame("t1", n)) for n in (4, 5, 6)]
    assert int(await client.hget(keys[0], "bytes")) == len(old[2]) + sum(sizes)
    await client.aclose()


async def test_a_write_trims_the_log_to_its_bounds_at_once(
    backends: Factory, redis_url: str
) -> None:
    a = await backends("a", retention=Retention(max_events=5))
    rec = record()
    await a.create(rec)
    run(a, rec, 1, 40)
    await a.flush()
    found = await a.read("alice", "t1", 0)
    assert found is not None and found.first_available_seq == 36
    assert [f.seq for f in found.frames] == [36, 37, 38, 39, 40]
    client = aredis.Redis.from_url(redis_url)
    keys = a._task_keys("alice", "t1")
    # One entry (one write) of 40 events, their sizes listed: the first 35 are trimmed.
    ((_, entry),) = await client.xrange(keys[1])
    sizes = json.loads(entry[b"s"])
    assert len(sizes) == 40 and sizes[1:] == [frame_size(frame("t1", n)) for n in range(2, 41)]
    kept = sum(sizes[35:])
    assert int(await client.hget(keys[0], "bytes")) == kept  # the byte count follows the trim
    await client.aclose()
    # The byte bound alone: about three events fit.
    size = kept // 5
    b = await backends("b", retention=Retention(max_bytes=size * 3 + size // 2))
    rec = record("t2", node="b")
    await b.create(rec)
    run(b, rec, 1, 30)
    await b.flush()
    found = await b.read("alice", "t2", 0)
    assert found is not None and [f.seq for f in found.frames] == [28, 29, 30]


async def test_record_changes_between_events_keep_their_order(backends: Factory) -> None:
    a = await backends("a")
    b = await backends("b")
    rec = record()
    await a.create(rec)
    rec = run(a, rec, 1, 2)
    a.update(TaskRecord(**{**_asdict(rec), "progress": "thinking", "turn": 2}))
    rec = TaskRecord(**{**_asdict(rec), "progress": "searching", "turn": 2})
    a.append(rec, frame("t1", 3))
    await a.flush()
    stored = await b.get("alice", "t1")
    assert stored is not None
    assert (stored.last_seq, stored.progress, stored.turn) == (3, "searching", 2)
    # A record change alone (no event) is a write too.
    a.update(TaskRecord(**{**_asdict(rec), "progress": "writing"}))
    await a.flush()
    stored = await b.get("alice", "t1")
    assert stored is not None and (stored.last_seq, stored.progress) == (3, "writing")
