"""Answers and steering messages forwarded between gateway processes (the Redis backend).

Each ``RedisBackend`` plays one process on the session's real ``redis-server``: ``a`` runs
the task, ``b`` takes the client's request and forwards it over ``a``'s control channel. What
every backend shares (verdicts passed through, refusals without a node) is in the contract
suite; here: the request/reply itself, a lost publish, a lost reply, a node that never replies
and the at-most-once rule.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aredis

from gateway.tasks.backend import ANSWER_RESENT, TaskRecord
from gateway.tasks.redis_backend import RedisBackend, RedisConfig, _Control
from protocol.frames import Input, StartOptions

LEASE = 0.6  # seconds: a lease tick every 0.2 s


class Node:
    """A node's handler that answers like a manager would, and counts what it applied."""

    def __init__(self) -> None:
        self.answers: list[Input] = []
        self.messages: list[str] = []
        self.changed = asyncio.Event()

    def cancel_requested(self, owner: str, task_id: str, reason: str) -> None:
        pass

    def task_lost(self, owner: str, task_id: str, reason: str) -> None:
        pass

    def input_given(self, owner: str, task_id: str, answer: Input) -> str | None:
        first = not self.answers
        self.answers.append(answer)
        self.changed.set()
        return None if first else ANSWER_RESENT

    def message_given(self, owner: str, task_id: str, text: str) -> str:
        self.messages.append(text)
        self.changed.set()
        return f"msg-{len(self.messages)}"


Factory = Callable[..., Awaitable[RedisBackend]]


@pytest.fixture
async def process(redis_url: str) -> AsyncIterator[Factory]:
    made: list[RedisBackend] = []

    async def make(node: str | None, handler: Node | None = None) -> RedisBackend:
        backend = RedisBackend(RedisConfig(url=redis_url, lease=LEASE))
        if node is not None:
            backend.attach(node, handler or Node())
        await backend.start()
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.close()


def record(node: str = "a") -> TaskRecord:
    now = time.time()
    return TaskRecord(
        owner="alice",
        task_id="t1",
        input="q",
        options=StartOptions(),
        created=now,
        updated=now,
        node=node,
        state="running",
    )


def answer(text: str = "21") -> Input:
    return Input(id=1, task_id="t1", request_id="question-1", text=text)


async def test_an_answer_and_a_message_reach_the_other_process(process: Factory) -> None:
    runs = Node()
    a = await process("a", runs)
    b = await process("b")
    await a.create(record())
    assert await b.send_input("alice", "t1", answer()) is None
    assert await b.send_input("alice", "t1", answer()) == ANSWER_RESENT
    assert await b.send_message("alice", "t1", "also this") == "msg-1"
    assert [x.text for x in runs.answers] == ["21", "21"] and runs.messages == ["also this"]
    assert b._replies == {}  # every waiting call got its own reply


async def test_concurrent_requests_each_get_their_own_reply(process: Factory) -> None:
    runs = Node()
    a = await process("a", runs)
    b = await process("b")
    await a.create(record())
    ids = await asyncio.gather(*(b.send_message("alice", "t1", f"m{i}") for i in range(20)))
    # Whatever order they were applied in, each call got the id of its own message.
    assert sorted(ids) == sorted(f"msg-{i}" for i in range(1, 21))
    assert all(runs.messages[int(mid[4:]) - 1] == f"m{i}" for i, mid in enumerate(ids))


async def test_a_lost_publish_is_taken_from_the_set(process: Factory) -> None:
    runs = Node()
    a = await process("a", runs)
    b = await process("b")
    await a.create(record())
    a.pause_subscriber()  # a's channel is down: the publish reaches nobody
    try:
        assert await b.send_message("alice", "t1", "still") == "msg-1"  # a's lease tick
    finally:
        a.resume_subscriber()
    assert runs.messages == ["still"]


async def test_a_lost_reply_is_read_from_the_fate_key(process: Factory) -> None:
    # The sender reads the fate key now and then while it waits: a lost reply costs it a
    # fraction of a second, not its whole timeout.
    runs = Node()
    a = await process("a", runs)
    b = await process("b")
    b.reply_timeout = 60.0  # the verdict is read long before
    await a.create(record())
    b.pause_subscriber()  # b never hears the reply
    try:
        assert await b.send_message("alice", "t1", "once") == "msg-1"
    finally:
        b.resume_subscriber()
    assert runs.messages == ["once"]


async def test_without_a_node_to_reply_to_the_sender_reads_the_fate_key(
    process: Factory,
) -> None:
    runs = Node()
    a = await process("a", runs)
    bare = await process(None)  # no node attached in this process
    await a.create(record())
    assert await bare.send_input("alice", "t1", answer()) is None
    assert len(runs.answers) == 1


async def test_a_node_that_never_replies_gets_a_clear_refusal_and_never_applies_it(
    process: Factory, redis_url: str
) -> None:
    b = await process("b")
    b.reply_timeout = 0.3
    await b.create(record(node="mute"))  # runs on a node whose process does not answer
    check = aredis.Redis.from_url(redis_url)
    try:
        await check.set("osp:node:mute", "1", px=60_000)  # its lease looks alive
        verdict = await b.send_input("alice", "t1", answer())
        assert verdict is not None and verdict.startswith("unavailable: ")
        assert "did not reply within 0.3 s" in verdict and "not taken" in verdict
        refused = await b.send_message("alice", "t1", "hello")
        assert refused.startswith("!unavailable: ")
        # The requests still wait in the node's set; when the node comes back, it applies
        # neither: their senders gave up.
        pending = await check.smembers("osp:node:mute:cancels")
        assert len(pending) == 2
        runs = Node()
        late = await process("mute", runs)
        for payload in pending:
            await late._serve("mute", late_request(payload), payload)
        assert runs.answers == [] and runs.messages == []
    finally:
        await check.aclose()


async def test_a_lost_node_is_refused_at_once(process: Factory) -> None:
    b = await process("b")
    await b.create(record(node="gone"))  # no lease: the node stopped or was cut off
    verdict = await b.send_input("alice", "t1", answer())
    assert verdict is not None and verdict.startswith("unavailable: ")
    assert "lost its lease" in verdict


async def test_a_request_delivered_twice_is_applied_once(process: Factory) -> None:
    runs = Node()
    a = await process("a", runs)
    request = _Control(op="message", owner="alice", task_id="t1", corr="c-1", text="x")
    payload = b'{"op":"message","owner":"alice","task_id":"t1","corr":"c-1","text":"x"}'
    await a.create(record())
    await a._serve("a", request, payload)  # from the channel
    await a._serve("a", request, payload)  # and again from the set
    assert runs.messages == ["x"]


def late_request(payload: bytes) -> _Control:
    from gateway.tasks.redis_backend import _ctl_decoder

    return _ctl_decoder.decode(payload)
