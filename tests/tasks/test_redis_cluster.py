"""The Redis backend on a real Redis Cluster of three nodes (``tests/redis_cluster.py``).

The contract suite (``test_backend.py``) runs on the Cluster through its ``redis-cluster``
parameter; here are the several-process tests of ``test_redis_backend.py`` again on the
Cluster, and what only a Cluster has: keys spread over the nodes, a slot that moves to
another node while a task streams (the flusher follows ``MOVED``, other processes' sharded
subscriptions follow the slot), and a slot caught mid-migration (writes wait for its end).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from gateway.tasks.backend import BackendUnavailable, TaskRecord, ThreadTurn
from gateway.tasks.redis_backend import RedisBackend, RedisConfig
from protocol.frames import EventFrame
from tests.redis_cluster import RedisClusterProcesses
from tests.tasks import test_redis_backend as single
from tests.tasks.test_redis_backend import (
    LEASE,
    Collector,
    Factory,
    Handler,
    _asdict,
    frame,
    record,
    run,
)


@pytest.fixture
async def backends(redis_cluster_url: str) -> AsyncIterator[Factory]:
    """As in ``test_redis_backend.py``, on the Cluster: each backend plays one process."""
    made: list[RedisBackend] = []

    async def make(
        node: str | None = None,
        handler: Handler | None = None,
        url: str = redis_cluster_url,
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


# The several-process behaviour, on the Cluster (the tests of test_redis_backend.py that do not
# reach into one Redis themselves; this module's `backends` fixture serves them).
test_events_from_one_process_reach_listeners_in_another = (
    single.test_events_from_one_process_reach_listeners_in_another
)
test_another_owner_sees_nothing_in_any_process = (
    single.test_another_owner_sees_nothing_in_any_process
)
test_create_is_idempotent_and_counts_across_processes = (
    single.test_create_is_idempotent_and_counts_across_processes
)
test_cancel_through_another_process_reaches_the_running_node = (
    single.test_cancel_through_another_process_reaches_the_running_node
)
test_a_lost_node_s_tasks_end_with_node_lost_and_its_late_writes_are_refused = (
    single.test_a_lost_node_s_tasks_end_with_node_lost_and_its_late_writes_are_refused
)
test_a_lost_node_s_queued_task_is_adopted = single.test_a_lost_node_s_queued_task_is_adopted
test_a_hole_that_retention_trimmed_is_a_gap = single.test_a_hole_that_retention_trimmed_is_a_gap


def owner_slot(owner: str) -> int:
    return key_slot(f"osp:{{{owner}}}:t:x".encode())


async def test_owners_spread_over_the_nodes_and_each_stays_in_its_slot(
    backends: Factory, redis_cluster: RedisClusterProcesses
) -> None:
    a = await backends("a")
    owners = [f"user-{i}" for i in range(24)]
    assert len({redis_cluster.owner_of(owner_slot(o)) for o in owners}) == 3
    now = time.time()
    for owner in owners:
        rec = record(owner=owner)
        await a.create(rec)
        rec = run(a, rec, 1, 3)
        a.append(TaskRecord(**{**_asdict(rec), "state": "completed"}), frame("t1", 4, True))
        await a.thread_add(
            owner, "th", ThreadTurn(task_id="t1", input="hello", created=now, updated=now)
        )
    await a.flush()
    # Every node holds keys, and each owner's keys sit on the node serving its slot.
    for i in range(3):
        with redis_cluster.client(i) as client:
            assert client.dbsize() > 0
    for owner in owners:
        node = redis_cluster.owner_of(owner_slot(owner))
        with redis_cluster.client(node) as client:
            assert client.exists(f"osp:{{{owner}}}:t:t1", f"osp:{{{owner}}}:e:t1") == 2
        stored = await a.get(owner, "t1")
        assert stored is not None and stored.state == "completed" and stored.last_seq == 4
        assert [r.task_id for r in await a.list_tasks(owner)] == ["t1"]
        assert [t.thread_id for t in await a.list_threads(owner, 10)] == ["th"]


async def test_an_empty_owner_keeps_its_keys_in_one_slot(backends: Factory) -> None:
    # "{}" is no hash tag: the owner "" must still have one.
    a = await backends("a")
    b = await backends("b")
    rec = record(owner="")
    await a.create(rec)
    seen = Collector()
    await b.listen("", "t1", seen)
    rec = run(a, rec, 1, 5)
    await seen.wait(lambda: 5 in seen.seqs)
    found = await b.read("", "t1", 2)
    assert found is not None and [f.seq for f in found.frames] == [3, 4, 5]
    assert await b.request_cancel("", "t1", "stop") == "accepted"


async def test_a_slot_that_moves_mid_stream_loses_nothing(
    backends: Factory, redis_cluster: RedisClusterProcesses
) -> None:
    a = await backends("a")
    b = await backends("b")
    rec = record()
    await a.create(rec)
    seen = Collector()
    await b.listen("alice", "t1", seen)  # a sharded subscription on the slot's node
    rec = run(a, rec, 1, 10)
    await seen.wait(lambda: 10 in seen.seqs)
    slot = owner_slot("alice")
    before = redis_cluster.owner_of(slot)
    await asyncio.to_thread(redis_cluster.move_slot, slot, (before + 1) % 3)
    # a's flusher is told MOVED and follows; b's subscription is dropped by Redis with the
    # slot, and b subscribes on the new node and reads what it missed from the log.
    rec = run(a, rec, 11, 30)
    a.append(TaskRecord(**{**_asdict(rec), "state": "completed"}), frame("t1", 31, True))
    await seen.wait(lambda: 31 in seen.seqs)
    assert seen.seqs == list(range(1, 32))
    found = await b.read("alice", "t1", 0)
    assert found is not None and [f.seq for f in found.frames] == list(range(1, 32))
    stored = await b.get("alice", "t1")
    assert stored is not None and stored.state == "completed"
    assert await b.active_count("alice") == 0
    # New tasks of that owner land on the new node, and are heard there.
    rec2 = record("t2")
    await a.create(rec2)
    seen2 = Collector()
    await b.listen("alice", "t2", seen2)
    run(a, rec2, 1, 3)
    await seen2.wait(lambda: 3 in seen2.seqs)
    assert seen2.seqs == [1, 2, 3]


async def test_writes_wait_while_their_slot_migrates_and_lose_nothing(
    backends: Factory, redis_cluster: RedisClusterProcesses
) -> None:
    a = await backends("a")
    b = await backends("b")
    rec = record()
    await a.create(rec)
    seen = Collector()
    await b.listen("alice", "t1", seen)
    rec = run(a, rec, 1, 5)
    await seen.wait(lambda: 5 in seen.seqs)
    slot = owner_slot("alice")
    target = (redis_cluster.owner_of(slot) + 1) % 3
    # The keys are moved but the slot is not handed over yet. A script naming several keys
    # is refused on both sides meanwhile (TRYAGAIN: Redis cannot tell a key never made from
    # one not yet migrated), so the writes wait, and say so.
    await asyncio.to_thread(redis_cluster.move_slot, slot, target, finish=False)
    try:
        rec = run(a, rec, 6, 12)
        while a.health() is None:
            a.health_changed.clear()
            await a.health_changed.wait()
        assert "TRYAGAIN" in (a.health() or "")
        assert seen.seqs == [1, 2, 3, 4, 5]  # nothing shown that is not stored
    finally:
        await asyncio.to_thread(redis_cluster.finish_move, slot, target)
    a.append(TaskRecord(**{**_asdict(rec), "state": "completed"}), frame("t1", 13, True))
    await seen.wait(lambda: 13 in seen.seqs)
    assert seen.seqs == list(range(1, 14))
    assert all(isinstance(i, EventFrame) for i in seen.items)
    await a.flush()
    assert a.health() is None
    found = await b.read("alice", "t1", 0)
    assert found is not None and [f.seq for f in found.frames] == list(range(1, 14))


async def test_a_whole_cluster_restart_loses_no_acknowledged_event(
    backends: Factory, tmp_path: Path
) -> None:
    # A Cluster of its own, with AOF: all three nodes go away at once and come back.
    nodes = RedisClusterProcesses(tmp_path, aof=True)
    nodes.start()
    try:
        handler = Handler()
        a = await backends("a", handler, url=nodes.url)
        b = await backends("b", url=nodes.url)
        rec = record()
        await a.create(rec)
        seen = Collector()
        await b.listen("alice", "t1", seen)
        rec = run(a, rec, 1, 10)
        await seen.wait(lambda: 10 in seen.seqs)
        nodes.stop()
        rec = run(a, rec, 11, 30)  # buffered while the Cluster is away
        with pytest.raises(BackendUnavailable):
            await b.create(record("t2", node="b"))
        while a.health() is None:
            a.health_changed.clear()
            await a.health_changed.wait()
        assert seen.seqs == list(range(1, 11))
        await asyncio.to_thread(nodes.restart)
        a.append(TaskRecord(**{**_asdict(rec), "state": "completed"}), frame("t1", 31, True))
        await seen.wait(lambda: 31 in seen.seqs)
        assert seen.seqs == list(range(1, 32))
        found = await b.read("alice", "t1", 0)
        assert found is not None and [f.seq for f in found.frames] == list(range(1, 32))
        assert await b.create(record("t2", node="b")) is None  # serving again
        assert handler.lost == []
    finally:
        nodes.stop()
