"""Conversations, questions and approvals, steering: end to end over real sockets (real
uvicorn, `websockets` clients, the real agent stack on the offline demo model, which asks and
follows conversations deterministically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.connection import ConnectionSettings
from gateway.server import Settings, serve_in_background
from gateway.tasks import TaskManagerConfig
from protocol import (
    JSON,
    MSGPACK,
    Accepted,
    Cancel,
    CancelAck,
    Codec,
    ErrorFrame,
    Input,
    InputAck,
    InputReceived,
    InputRequired,
    LlmResponse,
    Message,
    MessageAck,
    StartOptions,
    StatusReply,
    StatusRequest,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    ThreadReply,
    ThreadRequest,
    ThreadsReply,
    ThreadsRequest,
    ToolCallComplete,
    ToolCallStart,
    UserMessage,
)
from tests.server.helpers import Client, assert_seq_continuous, demo_config

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
ASK = "Please ask me for a number to double"


def settings(tmp_path: Path, **tasks: Any) -> Settings:
    s = Settings(
        port=0,
        agent_config=demo_config(tmp_path, 0),
        web_root=None,
        tokens={ALICE: "alice", BOB: "bob"},
    )
    s.connection = ConnectionSettings(merge_after=10**9)
    if tasks:
        s.tasks = TaskManagerConfig(**tasks)
    return s


def events(client: Client, task_id: str, kind: type) -> list[Any]:
    return [f.event for f in client.events[task_id] if isinstance(f.event, kind)]


async def started(client: Client, text: str, **kw: Any) -> Accepted:
    rid = await client.start(text, **kw)
    accepted: Accepted = await client.reply(rid, Accepted)
    return accepted


async def waiting(client: Client, task_id: str) -> InputRequired:
    await client.until(lambda: bool(events(client, task_id, InputRequired)))
    request: InputRequired = events(client, task_id, InputRequired)[-1]
    return request


async def answer(client: Client, **kw: Any) -> Any:
    rid = client.next_id()
    await client.send(Input(id=rid, **kw))
    return await client.reply(rid)


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
async def test_a_follow_up_sees_the_conversation(tmp_path: Path, codec: Codec) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}", codec=codec)
        first = await started(alice, "What is 17*23+4?", thread_id="chat-1")
        assert first.thread_id == "chat-1"
        await alice.until_finished([first.task_id])
        second = await started(alice, "Add 5 to that", thread_id="chat-1")
        await alice.until_finished([second.task_id])
        (start,) = events(alice, second.task_id, TaskStarted)
        assert start.thread_id == "chat-1" and start.history_turns == 1
        (call,) = events(alice, second.task_id, ToolCallStart)
        assert call.arguments == {"expression": "395+5"}
        final = alice.events[second.task_id][-1].event
        assert isinstance(final, TaskCompleted) and final.final_answer == "400"
        # Without the thread, the same words have nothing to refer to.
        alone = await started(alice, "Add 5 to that")
        await alice.until_finished([alone.task_id])
        assert not events(alice, alone.task_id, ToolCallStart)
        await alice.close()


async def test_threads_are_listed_per_principal(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        bob = await Client.connect(gw.url + f"?token={BOB}")
        a1 = await started(alice, "What is 17*23+4?", thread_id="chat-1")
        await alice.until_finished([a1.task_id])
        a2 = await started(alice, "Add 5 to that", thread_id="chat-1")
        await alice.until_finished([a2.task_id])
        b1 = await started(bob, "What is 1+1?", thread_id="chat-1")  # Bob's own chat-1
        await bob.until_finished([b1.task_id])

        # A second device of Alice's rebuilds the conversation.
        device = await Client.connect(gw.url + f"?token={ALICE}")
        await device.send(ThreadsRequest(id="l"))
        listed = await device.reply("l", ThreadsReply)
        assert [(t.thread_id, t.task_count, t.title) for t in listed.threads] == [
            ("chat-1", 2, "What is 17*23+4?")
        ]
        assert listed.threads[0].last_task_id == a2.task_id
        await device.send(ThreadRequest(id="t", thread_id="chat-1"))
        thread = await device.reply("t", ThreadReply)
        assert [(t.task_id, t.input, t.state, t.final_answer) for t in thread.tasks] == [
            (a1.task_id, "What is 17*23+4?", "completed", "395"),
            (a2.task_id, "Add 5 to that", "completed", "400"),
        ]
        assert all(t.last_seq == len(alice.events[t.task_id]) for t in thread.tasks)

        # Bob sees only his own thread of that name, and not Alice's others.
        await bob.send(ThreadRequest(id="t", thread_id="chat-1"))
        assert [t.task_id for t in (await bob.reply("t", ThreadReply)).tasks] == [b1.task_id]
        await bob.send(ThreadRequest(id="u", thread_id="nope"))
        error = await bob.reply("u", ErrorFrame)
        assert error.code == "unknown_thread"
        for c in (alice, bob, device):
            await c.close()


async def test_double_texting_reject_enqueue_interrupt(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        busy = await started(alice, ASK, thread_id="t")
        request = await waiting(alice, busy.task_id)  # holds the thread busy

        rid = await alice.start("Add 5 to that", thread_id="t")
        refused = await alice.reply(rid, ErrorFrame)
        assert refused.code == "thread_busy" and refused.task_id == busy.task_id

        queued = await started(alice, "Add 5 to that", thread_id="t", if_busy="enqueue")
        assert queued.after_task_id == busy.task_id
        await alice.until(
            lambda: any(
                isinstance(e, TaskProgress) and e.step == "waiting_for_thread"
                for e in (f.event for f in alice.events[queued.task_id])
            )
        )
        assert not events(alice, queued.task_id, TaskStarted)
        ack = await answer(
            alice, task_id=busy.task_id, request_id=request.request.request_id, text="7"
        )
        assert isinstance(ack, InputAck)
        await alice.until_finished([busy.task_id, queued.task_id])
        assert alice.events[busy.task_id][-1].event.final_answer == "14"  # type: ignore[union-attr]
        # The queued turn ran after the first ended, and saw it.
        first_end = alice.events[busy.task_id][-1].ts
        assert events(alice, queued.task_id, TaskStarted)
        began = next(f for f in alice.events[queued.task_id] if isinstance(f.event, TaskStarted))
        assert began.ts >= first_end
        final = alice.events[queued.task_id][-1].event
        assert isinstance(final, TaskCompleted) and final.final_answer == "19"  # 14 + 5

        # interrupt: the running turn is cancelled, then the new one runs.
        held = await started(alice, ASK, thread_id="t")
        await waiting(alice, held.task_id)
        now = await started(alice, "What is 2+2?", thread_id="t", if_busy="interrupt")
        await alice.until_finished([held.task_id, now.task_id])
        cancelled = alice.events[held.task_id][-1].event
        assert isinstance(cancelled, TaskCancelled)
        assert cancelled.reason == "interrupted by a new message on the thread"
        assert alice.events[now.task_id][-1].event.final_answer == "4"  # type: ignore[union-attr]
        await alice.close()


async def test_a_question_is_answered_once_from_any_connection(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        phone = await Client.connect(gw.url + f"?token={ALICE}")
        bob = await Client.connect(gw.url + f"?token={BOB}")
        task = await started(alice, ASK, task_id="ask-1")
        asked = (await waiting(alice, "ask-1")).request
        assert asked.kind == "question" and asked.prompt == "Which number should I use?"
        assert asked.expires_at is not None

        # A client that connects later sees what is waited for.
        await phone.send(StatusRequest(id="s", task_id="ask-1"))
        (status,) = (await phone.reply("s", StatusReply)).tasks
        assert status.state == "input_required" and status.pending_input == asked

        rid = asked.request_id
        wrong = await answer(phone, task_id="ask-1", request_id=rid, approved=True)
        assert isinstance(wrong, ErrorFrame) and wrong.code == "invalid_answer"
        unknown = await answer(phone, task_id="ask-1", request_id="nope", text="1")
        assert isinstance(unknown, ErrorFrame) and unknown.code == "unknown_request"
        other = await answer(bob, task_id="ask-1", request_id=rid, text="1")
        assert isinstance(other, ErrorFrame) and other.code == "unknown_task"

        taken = await answer(phone, task_id="ask-1", request_id=rid, text="21")
        assert isinstance(taken, InputAck) and taken.resent is False
        late = await answer(alice, task_id="ask-1", request_id=rid, text="5")
        assert isinstance(late, ErrorFrame) and late.code == "already_answered"
        # The phone lost its connection before the ack and sends its answer again.
        await phone.close()
        phone = await Client.connect(gw.url + f"?token={ALICE}")
        again = await answer(phone, task_id="ask-1", request_id=rid, text="21")
        assert isinstance(again, InputAck) and again.resent is True
        await alice.until_finished([task.task_id])
        (received,) = events(alice, "ask-1", InputReceived)
        assert received == InputReceived(request_id=rid, text="21")
        asking, call = events(alice, "ask-1", ToolCallStart)
        assert (asking.server, asking.tool) == ("user", "ask_user")
        assert call.arguments == {"expression": "21*2"}
        assert alice.events["ask-1"][-1].event.final_answer == "42"  # type: ignore[union-attr]
        assert_seq_continuous(alice.events["ask-1"])
        # Once the task has ended, its log still tells a resend from another answer, and a
        # request it never made is refused as finished.
        again = await answer(phone, task_id="ask-1", request_id=rid, text="21")
        assert isinstance(again, InputAck) and again.resent is True
        other = await answer(alice, task_id="ask-1", request_id=rid, text="5")
        assert isinstance(other, ErrorFrame) and other.code == "already_answered"
        finished = await answer(alice, task_id="ask-1", request_id="question-9", text="5")
        assert isinstance(finished, ErrorFrame) and finished.code == "task_finished"
        for c in (alice, phone, bob):
            await c.close()


@pytest.mark.parametrize("how", ["agent", "per_task"])
async def test_an_approval_denied_and_one_approved(tmp_path: Path, how: str) -> None:
    if how == "agent":
        options = StartOptions(agent="demo-approval")
    else:
        options = StartOptions(require_approval=["calculator/calculate"])
    async with serve_in_background(settings(tmp_path)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        denied = await started(alice, "What is 17*23+4?", options=options)
        request = (await waiting(alice, denied.task_id)).request
        assert (request.kind, request.server, request.tool) == (
            "approval",
            "calculator",
            "calculate",
        )
        assert request.arguments == {"expression": "17*23+4"}
        assert not events(alice, denied.task_id, ToolCallStart)  # nothing ran yet
        reply = await answer(
            alice,
            task_id=denied.task_id,
            request_id=request.request_id,
            approved=False,
            text="not now",
        )
        assert isinstance(reply, InputAck)
        await alice.until_finished([denied.task_id])
        (start,) = events(alice, denied.task_id, ToolCallStart)
        assert start.call_id == request.call_id
        (done,) = events(alice, denied.task_id, ToolCallComplete)
        assert done.result is None and done.error == "denied by the user: not now"
        assert isinstance(alice.events[denied.task_id][-1].event, TaskCompleted)  # carried on

        approved = await started(alice, "What is 17*23+4?", options=options)
        request = (await waiting(alice, approved.task_id)).request
        await answer(alice, task_id=approved.task_id, request_id=request.request_id, approved=True)
        await alice.until_finished([approved.task_id])
        assert alice.events[approved.task_id][-1].event.final_answer == "395"  # type: ignore[union-attr]
        await alice.close()


@pytest.mark.parametrize("policy", ["continue", "fail"])
async def test_a_wait_times_out(tmp_path: Path, policy: str) -> None:
    async with serve_in_background(settings(tmp_path, on_input_timeout=policy)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        task = await started(alice, ASK, options=StartOptions(input_timeout=0.05))
        await alice.until_finished([task.task_id])
        request = events(alice, task.task_id, InputRequired)[0].request
        (received,) = events(alice, task.task_id, InputReceived)
        assert received == InputReceived(request_id=request.request_id, timed_out=True)
        final = alice.events[task.task_id][-1].event
        if policy == "fail":
            assert isinstance(final, TaskFailed) and final.code == "input_timeout"
        else:
            assert isinstance(final, TaskCompleted)
            done = events(alice, task.task_id, ToolCallComplete)
            assert [d.result for d in done] == ["no answer: nobody answered in time"]
        late = await answer(alice, task_id=task.task_id, request_id=request.request_id, text="1")
        assert isinstance(late, ErrorFrame) and late.code == "task_finished"
        await alice.close()


async def test_cancel_while_waiting(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        task = await started(alice, ASK)
        await waiting(alice, task.task_id)
        await alice.send(Cancel(id="c", task_id=task.task_id))
        assert (await alice.reply("c", CancelAck)).result == "accepted"
        await alice.until_finished([task.task_id])
        assert isinstance(alice.events[task.task_id][-1].event, TaskCancelled)
        await alice.send(StatusRequest(id="s", task_id=task.task_id))
        (status,) = (await alice.reply("s", StatusReply)).tasks
        assert status.state == "cancelled" and status.pending_input is None
        await alice.close()


async def test_steering_a_running_task(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        watcher = await Client.connect(gw.url + f"?token={ALICE}")
        task = await started(alice, ASK, task_id="steer-1")
        request = (await waiting(alice, "steer-1")).request  # mid tool call: the message waits
        await watcher.send(Message(id="m", task_id="steer-1", text="also say hello"))
        ack = await watcher.reply("m", MessageAck)
        assert not events(alice, "steer-1", UserMessage)
        await answer(alice, task_id="steer-1", request_id=request.request_id, text="4")
        await alice.until_finished([task.task_id])
        (shown,) = events(alice, "steer-1", UserMessage)
        assert shown.text == "also say hello" and shown.message_id == ack.message_id
        assert shown.turn == 2  # the turn after the tool call, never in the middle of it
        kinds = [type(f.event).__name__ for f in alice.events["steer-1"]]
        assert kinds.index("UserMessage") > kinds.index("ToolCallComplete")
        text = "".join(
            e.delta for e in events(alice, "steer-1", LlmResponse) if e.channel == "text"
        )
        assert "You also said: also say hello" in text
        await watcher.send(Message(id="m2", task_id="steer-1", text="more"))
        refused = await watcher.reply("m2", ErrorFrame)
        assert refused.code == "task_finished"
        await watcher.send(Message(id="m3", task_id="nope", text="more"))
        assert (await watcher.reply("m3", ErrorFrame)).code == "unknown_task"
        await alice.close()
        await watcher.close()


async def test_pending_messages_are_bounded(tmp_path: Path) -> None:
    s = Settings(
        port=0,
        agent_config=demo_config(tmp_path, 0),
        web_root=None,
        tasks=TaskManagerConfig(max_pending_messages=2),
    )
    async with serve_in_background(s) as gw:
        alice = await Client.connect(gw.url)
        assert alice.hello is not None and alice.hello.limits.max_pending_messages == 2
        task = await started(alice, ASK)
        request = (await waiting(alice, task.task_id)).request
        for i in range(2):
            await alice.send(Message(id=f"m{i}", task_id=task.task_id, text=f"note {i}"))
            await alice.reply(f"m{i}", MessageAck)
        await alice.send(Message(id="m2", task_id=task.task_id, text="one too many"))
        assert (await alice.reply("m2", ErrorFrame)).code == "too_many_messages"
        await answer(alice, task_id=task.task_id, request_id=request.request_id, text="3")
        await alice.until_finished([task.task_id])
        assert [m.text for m in events(alice, task.task_id, UserMessage)] == ["note 0", "note 1"]
        await alice.close()


async def test_conversation_and_question_with_the_redis_backend(
    tmp_path: Path, redis_url: str
) -> None:
    s = settings(tmp_path)
    s.redis_url = redis_url
    async with serve_in_background(s) as gw:
        alice = await Client.connect(gw.url + f"?token={ALICE}")
        first = await started(alice, "What is 17*23+4?", thread_id="r-1")
        await alice.until_finished([first.task_id])
        second = await started(alice, "Add 5 to that", thread_id="r-1")
        await alice.until_finished([second.task_id])
        assert alice.events[second.task_id][-1].event.final_answer == "400"  # type: ignore[union-attr]
        asking = await started(alice, ASK, thread_id="r-1")
        request = (await waiting(alice, asking.task_id)).request
        await alice.send(StatusRequest(id="s", task_id=asking.task_id))
        (status,) = (await alice.reply("s", StatusReply)).tasks
        assert status.state == "input_required" and status.pending_input == request
        reply = await answer(alice, task_id=asking.task_id, request_id=request.request_id, text="5")
        assert isinstance(reply, InputAck)
        await alice.until_finished([asking.task_id])
        await alice.send(ThreadRequest(id="t", thread_id="r-1"))
        thread = await alice.reply("t", ThreadReply)
        assert [(t.state, t.final_answer) for t in thread.tasks] == [
            ("completed", "395"),
            ("completed", "400"),
            ("completed", "10"),
        ]
        await alice.close()
