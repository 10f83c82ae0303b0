"""Questions, approvals, steering and threads across gateways: real `ospark serve` processes
on one real Redis, real WebSocket clients.

Gateway A runs the task; the client talks to gateway B (after a reconnect that the load
balancer sent elsewhere). Answers and messages given through B reach the task on A; the thread
rules hold for starts made through A and B at once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    Accepted,
    ErrorFrame,
    Input,
    InputAck,
    InputReceived,
    InputRequired,
    Message,
    MessageAck,
    StartOptions,
    Subscribe,
    Subscribed,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskStarted,
    ToolCallComplete,
    UserMessage,
)
from tests.server.helpers import Client, assert_seq_continuous
from tests.server.test_multinode import Node, StartNode, _start_node

ASK = "Please ask me for a number to double"


@pytest.fixture
async def gateways(tmp_path: Path, redis_url: str) -> AsyncIterator[StartNode]:
    started: list[Node] = []

    async def start(pace_ms: int = 0) -> Node:
        node = await _start_node(tmp_path, redis_url, pace_ms=pace_ms)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.close_clients()
        if node.proc.returncode is None:
            node.proc.send_signal(signal.SIGCONT)
        node.kill()
        await node.proc.wait()


def events(client: Client, task_id: str, kind: type) -> list[Any]:
    return [f.event for f in client.events[task_id] if isinstance(f.event, kind)]


async def started(client: Client, text: str, **kw: Any) -> Accepted:
    accepted: Accepted = await client.reply(await client.start(text, **kw), Accepted)
    return accepted


async def follow(client: Client, task_id: str) -> None:
    rid = client.next_id()
    await client.send(Subscribe(id=rid, task_id=task_id))
    await client.reply(rid, Subscribed)


async def waiting(client: Client, task_id: str) -> InputRequired:
    await client.until(lambda: bool(events(client, task_id, InputRequired)))
    request: InputRequired = events(client, task_id, InputRequired)[-1]
    return request


async def answer(client: Client, **kw: Any) -> Any:
    rid = client.next_id()
    await client.send(Input(id=rid, **kw))
    return await client.reply(rid)


async def steer(client: Client, task_id: str, text: str) -> Any:
    rid = client.next_id()
    await client.send(Message(id=rid, task_id=task_id, text=text))
    return await client.reply(rid)


async def test_a_question_answered_and_a_message_sent_through_b(gateways: StartNode) -> None:
    a, b = await gateways(), await gateways()
    on_a, on_b = await a.client(), await b.client()
    task = (await started(on_a, ASK, task_id="ask-1")).task_id
    asked = (await waiting(on_a, task)).request
    await follow(on_b, task)
    assert (await waiting(on_b, task)).request == asked

    note = await steer(on_b, task, "also say hello")  # queued on A while it waits
    assert isinstance(note, MessageAck) and note.message_id == "msg-1"
    rid = asked.request_id
    wrong = await answer(on_b, task_id=task, request_id=rid, approved=True)
    assert isinstance(wrong, ErrorFrame) and wrong.code == "invalid_answer"  # A's verdict
    unknown = await answer(on_b, task_id=task, request_id="nope", text="1")
    assert isinstance(unknown, ErrorFrame) and unknown.code == "unknown_request"
    ack = await answer(on_b, task_id=task, request_id=rid, text="21")
    assert isinstance(ack, InputAck) and ack.resent is False

    # The client resends its answer (it never saw the ack), through either gateway: an ack
    # again, marked resent; another answer is refused. Running or ended, the same verdicts.
    for client in (on_b, on_a):
        again = await answer(client, task_id=task, request_id=rid, text="21")
        assert isinstance(again, InputAck) and again.resent is True
        other = await answer(client, task_id=task, request_id=rid, text="5")
        assert isinstance(other, ErrorFrame) and other.code == "already_answered"

    await on_a.until_finished([task])
    await on_b.until_finished([task])
    assert_seq_continuous(on_a.events[task])
    assert_seq_continuous(on_b.events[task])
    (received,) = events(on_b, task, InputReceived)
    assert received == InputReceived(request_id=rid, text="21")
    (shown,) = events(on_b, task, UserMessage)
    assert shown.text == "also say hello" and shown.message_id == note.message_id
    final = on_b.events[task][-1].event
    assert isinstance(final, TaskCompleted) and final.final_answer == "42"
    for client in (on_b, on_a):
        again = await answer(client, task_id=task, request_id=rid, text="21")
        assert isinstance(again, InputAck) and again.resent is True
        other = await answer(client, task_id=task, request_id=rid, text="5")
        assert isinstance(other, ErrorFrame) and other.code == "already_answered"
    late = await steer(on_b, task, "too late")
    assert isinstance(late, ErrorFrame) and late.code == "task_finished"


async def test_an_approval_given_through_b(gateways: StartNode) -> None:
    a, b = await gateways(), await gateways()
    on_a, on_b = await a.client(), await b.client()
    options = StartOptions(require_approval=["calculator/calculate"])
    denied = (await started(on_a, "What is 17*23+4?", options=options)).task_id
    approved = (await started(on_a, "What is 6*7?", options=options)).task_id
    for task in (denied, approved):
        await follow(on_b, task)
    deny = (await waiting(on_b, denied)).request
    allow = (await waiting(on_b, approved)).request
    assert deny.kind == "approval" and deny.arguments == {"expression": "17*23+4"}
    no = await answer(
        on_b, task_id=denied, request_id=deny.request_id, approved=False, text="not now"
    )
    yes = await answer(on_b, task_id=approved, request_id=allow.request_id, approved=True)
    assert isinstance(no, InputAck) and isinstance(yes, InputAck)
    await on_b.until_finished([denied, approved])
    assert on_b.events[approved][-1].event.final_answer == "42"  # type: ignore[union-attr]
    (refused,) = events(on_b, denied, ToolCallComplete)
    assert refused.error == "denied by the user: not now"


async def test_an_answer_for_a_task_on_a_killed_gateway(gateways: StartNode) -> None:
    a, b = await gateways(), await gateways()
    on_a, on_b = await a.client(), await b.client()
    task = (await started(on_a, ASK)).task_id
    await follow(on_b, task)
    rid = (await waiting(on_b, task)).request.request_id
    a.proc.send_signal(signal.SIGSTOP)  # frozen: its lease still looks alive for a while
    frozen = await answer(on_b, task_id=task, request_id=rid, text="3")
    # B waited for A's reply (bounded), then gave up: a clear, retryable refusal.
    assert isinstance(frozen, ErrorFrame) and frozen.code in ("unavailable", "task_finished")
    if frozen.code == "unavailable":
        assert "retry" in frozen.message and frozen.task_id == task
    a.kill()
    # A's lease runs out; B ends the task with node_lost; a retry now says so.
    await on_b.until_finished([task])
    final = on_b.events[task][-1].event
    assert isinstance(final, TaskFailed) and final.code == "node_lost"
    assert not events(on_b, task, InputReceived)  # the answer was never taken
    retry = await answer(on_b, task_id=task, request_id=rid, text="3")
    assert isinstance(retry, ErrorFrame) and retry.code == "task_finished"
    dead = await steer(on_b, task, "hello?")
    assert isinstance(dead, ErrorFrame) and dead.code == "task_finished"


async def test_concurrent_starts_on_one_thread_through_a_and_b(gateways: StartNode) -> None:
    a, b = await gateways(), await gateways()
    on_a, on_b = await a.client(), await b.client()
    for n in range(3):
        thread = f"race-{n}"
        rids = await asyncio.gather(
            on_a.start("What is 2+2?", thread_id=thread),
            on_b.start("What is 3+3?", thread_id=thread),
        )
        replies = await asyncio.gather(on_a.reply(rids[0]), on_b.reply(rids[1]))
        kinds = sorted(type(r).__name__ for r in replies)
        assert kinds == ["Accepted", "ErrorFrame"], replies
        (refused,) = [r for r in replies if isinstance(r, ErrorFrame)]
        (won,) = [r for r in replies if isinstance(r, Accepted)]
        assert refused.code == "thread_busy" and refused.task_id == won.task_id
        winner = on_a if replies[0] is won else on_b
        await winner.until_finished([won.task_id])


async def test_enqueue_and_interrupt_across_gateways(gateways: StartNode) -> None:
    a, b = await gateways(), await gateways()
    on_a, on_b = await a.client(), await b.client()
    first = (await started(on_a, ASK, thread_id="t")).task_id
    rid = (await waiting(on_a, first)).request.request_id
    # Two enqueued turns through A and B at once: one order, each behind the one before.
    rids = await asyncio.gather(
        on_a.start("Add 5 to that", thread_id="t", if_busy="enqueue"),
        on_b.start("Add 5 to that", thread_id="t", if_busy="enqueue"),
    )
    queued = [await on_a.reply(rids[0], Accepted), await on_b.reply(rids[1], Accepted)]
    after = {q.task_id: q.after_task_id for q in queued}
    second = next(t for t, x in after.items() if x == first)
    third = next(t for t, x in after.items() if x == second)
    await follow(on_a, queued[1].task_id)
    await follow(on_b, queued[0].task_id)
    ack = await answer(on_b, task_id=first, request_id=rid, text="7")
    assert isinstance(ack, InputAck)
    await on_a.until_finished([first, second, third])
    results = [on_a.events[t][-1].event for t in (first, second, third)]
    assert [r.final_answer for r in results] == ["14", "19", "24"]  # type: ignore[union-attr]
    # Each started after the one before it ended, whichever gateway ran it.
    for before, later in ((first, second), (second, third)):
        began = next(f for f in on_a.events[later] if isinstance(f.event, TaskStarted))
        assert began.ts >= on_a.events[before][-1].ts

    # interrupt through B: A's waiting turn is cancelled, then the new one runs.
    held = (await started(on_a, ASK, thread_id="t")).task_id
    await waiting(on_a, held)
    now = (await started(on_b, "What is 2+2?", thread_id="t", if_busy="interrupt")).task_id
    await on_a.until_finished([held])
    cancelled = on_a.events[held][-1].event
    assert isinstance(cancelled, TaskCancelled)
    assert cancelled.reason == "interrupted by a new message on the thread"
    await on_b.until_finished([now])
    assert on_b.events[now][-1].event.final_answer == "4"  # type: ignore[union-attr]
