"""The A2A adapter, driven by the official ``a2a-sdk`` client against a real gateway."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from a2a.client import Client, ClientConfig, create_client
from a2a.client.client import ClientCallContext
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import (
    InvalidParamsError,
    InvalidRequestError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf import json_format

from gateway.server import Settings, serve_in_background
from gateway.testing.held import Held

QUESTION = "What is 17*23+4?"
ASK = "Please ask me for a number to double"
WORKING = TaskState.TASK_STATE_WORKING
INPUT_REQUIRED = TaskState.TASK_STATE_INPUT_REQUIRED
COMPLETED = TaskState.TASK_STATE_COMPLETED


def _message(
    text: str,
    context_id: str = "",
    task_id: str = "",
    data: dict[str, Any] | None = None,
    ospark: dict[str, Any] | None = None,
) -> SendMessageRequest:
    parts = [Part(text=text)] if text else []
    if data is not None:
        part = Part()
        part.data.struct_value.update(data)
        parts.append(part)
    request = SendMessageRequest(
        message=Message(
            message_id=uuid.uuid4().hex,
            role=Role.ROLE_USER,
            parts=parts,
            context_id=context_id,
            task_id=task_id,
        )
    )
    if ospark is not None:
        request.metadata.update({"ospark": ospark})
    return request


def _seq(event: StreamResponse) -> int | None:
    which = event.WhichOneof("payload")
    meta = getattr(event, which).metadata
    return int(meta["seq"]) if "seq" in meta else None


@asynccontextmanager
async def _client(
    base: str, token: str | None = None, *, streaming: bool = True
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        config = ClientConfig(httpx_client=http, streaming=streaming)
        yield await create_client(base, config)


def _answer(events: list[StreamResponse]) -> str:
    """The text of the ``answer`` artifact among a stream's events."""
    (text,) = [
        e.artifact_update.artifact.parts[0].text
        for e in events
        if e.HasField("artifact_update") and e.artifact_update.artifact.name == "answer"
    ]
    return text


def _data(part: Part) -> dict[str, Any]:
    value: dict[str, Any] = json_format.MessageToDict(part.data)
    return value


def _events_of(events: list[StreamResponse], kind: str) -> list[dict[str, Any]]:
    """Our events of ``kind`` as carried in the A2A events' metadata."""
    out = []
    for e in events:
        payload = getattr(e, e.WhichOneof("payload"))
        if "event" in payload.metadata and payload.metadata["event"]["kind"] == kind:
            out.append(json_format.MessageToDict(payload.metadata["event"]))
    return out


async def test_card_describes_the_agent() -> None:
    async with serve_in_background(Settings(port=0, web_root=None)) as gw:
        base = f"http://127.0.0.1:{gw.port}"
        async with httpx.AsyncClient() as http:
            card = (await http.get(f"{base}/.well-known/agent-card.json")).json()
        assert card["capabilities"]["streaming"] is True
        assert card["supportedInterfaces"][0]["url"] == f"{base}/a2a"
        assert card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"] == "Bearer"
        skills = {s["id"] for s in card["skills"]}
        assert {"task", "tool:calculator", "agent:agent-worker"} <= skills


async def test_stream_a_task_to_its_answer() -> None:
    held = Held()
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=held.runner()) as gw,
        _client(f"http://127.0.0.1:{gw.port}") as client,
    ):
        events = [e async for e in client.send_message(_message(QUESTION, "ctx-1"))]
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task"
    task_id = events[0].task.id
    assert events[0].task.context_id == "ctx-1"
    final = events[-1].status_update
    assert final.status.state == TaskState.TASK_STATE_COMPLETED
    answers = [
        e.artifact_update.artifact
        for e in events
        if kinds[events.index(e)] == "artifact_update"
        and e.artifact_update.artifact.name == "answer"
    ]
    assert [a.parts[0].text for a in answers] == ["395"]
    seqs = [s for s in (_seq(e) for e in events[1:]) if s is not None]
    assert seqs == sorted(seqs) and seqs[0] == 1
    assert all(e.status_update.task_id == task_id for e in events if e.HasField("status_update"))


async def test_cancel_mid_stream_stops_the_task() -> None:
    held = Held("summary")
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=held.runner()) as gw,
        _client(f"http://127.0.0.1:{gw.port}") as client,
    ):
        stream = client.send_message(_message(QUESTION))
        first = await anext(stream)
        task_id = first.task.id
        await held.reached("summary")
        task = await client.cancel_task(CancelTaskRequest(id=task_id))
        assert task.status.state == TaskState.TASK_STATE_CANCELED
        rest = [e async for e in stream]
        assert rest[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED
        # the work stopped: our own status says so, and the summary never ran
        status = await gw.gateway.manager.status("local", task_id)
        assert status.state == "cancelled"
        got = await client.get_task(GetTaskRequest(id=task_id))
        assert got.status.state == TaskState.TASK_STATE_CANCELED
        assert "cancelled by an A2A client" in got.status.message.parts[0].text


async def test_get_a_finished_task_and_an_unknown_one() -> None:
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=Held().runner()) as gw,
        _client(f"http://127.0.0.1:{gw.port}") as client,
    ):
        events = [e async for e in client.send_message(_message(QUESTION))]
        task = await client.get_task(GetTaskRequest(id=events[0].task.id))
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        assert task.history[0].parts[0].text == QUESTION
        assert {a.name: a.parts[0].text for a in task.artifacts}["answer"] == "395"
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id="no-such-task"))


async def test_resubscribe_after_a_drop_sees_every_event_once() -> None:
    await _resubscribe_after_a_drop(Settings(port=0, web_root=None))


async def test_resubscribe_over_the_redis_backend(redis_url: str) -> None:
    await _resubscribe_after_a_drop(Settings(port=0, web_root=None, redis_url=redis_url))


async def _resubscribe_after_a_drop(settings: Settings) -> None:
    held = Held("turn 2")
    async with (
        serve_in_background(settings, runner_factory=held.runner()) as gw,
        _client(f"http://127.0.0.1:{gw.port}") as client,
    ):
        seen: list[int] = []
        stream = client.send_message(_message(QUESTION))
        task_id = ""
        async for event in stream:
            if event.HasField("task"):
                task_id = event.task.id
                continue
            seq = _seq(event)
            assert seq is not None
            seen.append(seq)
            if event.status_update.metadata["event"]["kind"] == "tool_call_complete":
                break  # the connection drops here
        await stream.aclose()
        await held.reached("turn 2")
        held.release()  # the task goes on with nobody connected
        last = seen[-1]
        context = ClientCallContext(service_parameters={"Last-Event-ID": str(last)})
        resumed = [
            e async for e in client.subscribe(SubscribeToTaskRequest(id=task_id), context=context)
        ]
    assert resumed[0].HasField("task")
    more = [s for s in (_seq(e) for e in resumed[1:]) if s is not None]
    everything = seen + sorted(set(more))
    assert everything == list(range(1, everything[-1] + 1))
    # each event once: only our task_completed is several A2A events (two artifacts, the status)
    counts = Counter(more)
    assert more[0] == last + 1
    assert counts.pop(more[-1]) == 3 and set(counts.values()) == {1}
    assert resumed[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_refusals_and_bad_requests_have_the_standard_shape() -> None:
    settings = Settings(port=0, web_root=None, tokens={"secret": "alice"})
    async with serve_in_background(settings, runner_factory=Held().runner()) as gw:
        url = f"http://127.0.0.1:{gw.port}/a2a"
        async with httpx.AsyncClient() as http:
            refused = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "GetTask"})
            assert refused.status_code == 401
            assert refused.json()["error"]["message"].startswith("a token is required")
            auth = {"Authorization": "Bearer secret", "A2A-Version": "1.0"}
            reply = await http.post(
                url, headers=auth, json={"jsonrpc": "2.0", "id": 2, "method": "tasks/nope"}
            )
            assert reply.json()["error"]["code"] == -32601
            reply = await http.post(
                url,
                headers=auth,
                json={"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": "x"}},
            )
            assert reply.json()["error"]["code"] == -32001
            assert reply.json()["id"] == 3
            huge = await http.post(url, headers=auth, content=b"x" * (2 << 20))
            assert huge.status_code == 413
            assert "over the limit" in huge.json()["error"]["message"]
            metrics = (await http.get(f"{gw.http_url}/metrics", headers=auth)).text
            assert 'ospark_connections_rejected_total{reason="unauthorized"} 1.0' in metrics
            assert 'ospark_adapter_requests_total{adapter="a2a"}' in metrics
        async with _client(f"http://127.0.0.1:{gw.port}", "secret") as client:
            with pytest.raises(InvalidParamsError, match="no text"):
                [e async for e in client.send_message(_message("   "))]


async def _rpc(http: httpx.AsyncClient, url: str, method: str, params: Any) -> Any:
    """The result of a JSON-RPC call, written by hand (as a 0.3 client sends it)."""
    reply = await http.post(
        url, json={"jsonrpc": "2.0", "id": uuid.uuid4().hex, "method": method, "params": params}
    )
    return reply.json()["result"]


async def test_a2a_0_3_method_names() -> None:
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        url = f"{gw.http_url}/a2a"
        message = {
            "kind": "message",
            "messageId": "m1",
            "role": "user",
            "parts": [{"kind": "text", "text": QUESTION}],
        }
        async with httpx.AsyncClient(timeout=30) as http:
            task = await _rpc(http, url, "message/send", {"message": message})
            assert task["status"]["state"] == "completed"
            answer = next(a for a in task["artifacts"] if a["name"] == "answer")
            assert answer["parts"][0]["text"] == "395"
            got = await _rpc(http, url, "tasks/get", {"id": task["id"]})
            assert got["status"]["state"] == "completed"
            lines: list[str] = []
            async with http.stream(
                "POST",
                url,
                json={
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "tasks/resubscribe",
                    "params": {"id": task["id"]},
                },
                headers={"Last-Event-ID": "0"},
            ) as stream:
                lines = [line async for line in stream.aiter_lines() if line.startswith("data:")]
            assert '"completed"' in lines[-1]
            # input-required and its answer under the 0.3 names and shapes
            asking = {**message, "messageId": "m2", "parts": [{"kind": "text", "text": ASK}]}
            waiting = await _rpc(http, url, "message/send", {"message": asking})
            assert waiting["status"]["state"] == "input-required"
            answer = {
                **message,
                "messageId": "m3",
                "taskId": waiting["id"],
                "contextId": waiting["contextId"],
                "parts": [{"kind": "text", "text": "21"}],
            }
            done = await _rpc(http, url, "message/send", {"message": answer})
            assert done["status"]["state"] == "completed"
            assert next(a for a in done["artifacts"] if a["name"] == "answer")["parts"][0] == {
                "kind": "text",
                "text": "42",
            }


# --------------------------------------------------------------------------- conversations


async def test_context_id_continues_the_conversation() -> None:
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=Held().runner()) as gw,
        _client(gw.http_url) as client,
    ):
        first = [e async for e in client.send_message(_message(QUESTION))]
        context_id = first[0].task.context_id
        assert context_id  # a new context for a message without one
        assert _answer(first) == "395"
        follow = [e async for e in client.send_message(_message("Add 5 to that", context_id))]
        assert follow[0].task.context_id == context_id
        assert _answer(follow) == "400"  # it saw the earlier turn
        (started,) = _events_of(follow, "task_started")
        assert started["thread_id"] == context_id and started["history_turns"] == 1
        # Without the context, the same words have nothing to refer to.
        alone = [e async for e in client.send_message(_message("Add 5 to that"))]
        assert alone[0].task.context_id not in ("", context_id)
        assert not _events_of(alone, "tool_call_start")
        # Listing and getting show the context.
        listed = await client.list_tasks(ListTasksRequest(context_id=context_id))
        ids = [first[0].task.id, follow[0].task.id]
        assert [t.id for t in listed.tasks] == ids
        assert {t.context_id for t in listed.tasks} == {context_id}
        got = await client.get_task(GetTaskRequest(id=ids[1]))
        assert got.context_id == context_id
        with pytest.raises(InvalidParamsError, match="contextId must be"):
            [e async for e in client.send_message(_message(QUESTION, "no spaces allowed"))]


async def test_a_message_on_a_busy_context_waits_for_the_running_turn() -> None:
    held = Held("summary")
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=held.runner()) as gw,
        _client(gw.http_url) as client,
    ):
        first = client.send_message(_message(QUESTION, "ctx-busy"))
        first_task = (await anext(first)).task
        await held.reached("summary")  # the first turn is still running
        follow = client.send_message(_message("Add 5 to that", "ctx-busy"))
        head = [await anext(follow), await anext(follow)]
        assert head[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
        waiting = head[1].status_update
        assert waiting.status.state == TaskState.TASK_STATE_SUBMITTED
        assert waiting.metadata["event"]["step"] == "waiting_for_thread"
        held.release()
        assert _answer([e async for e in first]) == "395"
        rest = [e async for e in follow]
        assert _answer(rest) == "400"
        assert rest[-1].status_update.status.state == COMPLETED
        assert first_task.context_id == head[0].task.context_id == "ctx-busy"


# --------------------------------------------------------------------------- input-required


async def test_a_question_is_input_required_and_a_message_answers_it() -> None:
    await _question_answered(Settings(port=0, web_root=None))


async def test_a_question_over_the_redis_backend(redis_url: str) -> None:
    await _question_answered(Settings(port=0, web_root=None, redis_url=redis_url))


async def _question_answered(settings: Settings) -> None:
    async with (
        serve_in_background(settings, runner_factory=Held().runner()) as gw,
        _client(gw.http_url) as client,
    ):
        asked = [e async for e in client.send_message(_message(ASK))]  # ends at the question
        task, last = asked[0].task, asked[-1].status_update
        assert last.status.state == INPUT_REQUIRED
        prompt, request = last.status.message.parts
        assert prompt.text == "Which number should I use?"
        assert _data(request)["kind"] == "question"
        got = await client.get_task(GetTaskRequest(id=task.id))
        assert got.status.state == INPUT_REQUIRED
        assert got.status.message.parts[0].text == "Which number should I use?"
        # Resubscribing to the waiting task: its snapshot, and the stream ends.
        (again,) = [e async for e in client.subscribe(SubscribeToTaskRequest(id=task.id))]
        assert again.task.status.state == INPUT_REQUIRED

        # Another message in the same context is refused: the task waits for its answer.
        with pytest.raises(InvalidRequestError, match="waits for an answer"):
            [e async for e in client.send_message(_message(QUESTION, task.context_id))]

        with pytest.raises(InvalidParamsError, match="exceeds the limit"):
            [e async for e in client.send_message(_message("1" * 100_001, task_id=task.id))]
        answered = [e async for e in client.send_message(_message("21", task.context_id, task.id))]
        assert answered[0].task.id == task.id
        assert answered[0].task.status.state == WORKING
        (received,) = _events_of(answered, "input_received")
        assert received["text"] == "21"
        assert _answer(answered) == "42"
        assert answered[-1].status_update.status.state == COMPLETED
        # The two streams together: every event of the task once, in order.
        seqs = [s for s in (_seq(e) for e in asked[1:] + answered[1:]) if s is not None]
        assert sorted(set(seqs)) == list(range(1, max(seqs) + 1))

        # The task has ended: a further message to it says how to go on.
        with pytest.raises(UnsupportedOperationError, match="without taskId"):
            [e async for e in client.send_message(_message("5", task.context_id, task.id))]


@pytest.mark.parametrize("how", ["data", "text"])
async def test_an_approval_is_denied_then_approved(how: str) -> None:
    options = {"agent": "demo-approval"}
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=Held().runner()) as gw,
        _client(gw.http_url) as client,
        _client(gw.http_url, streaming=False) as blocking,
    ):
        asked = [e async for e in client.send_message(_message(QUESTION, ospark=options))]
        task = asked[0].task
        update = asked[-1].status_update
        assert update.status.state == INPUT_REQUIRED
        request = _data(update.status.message.parts[1])
        assert (request["kind"], request["server"], request["tool"]) == (
            "approval",
            "calculator",
            "calculate",
        )
        assert request["arguments"] == {"expression": "17*23+4"}
        assert not _events_of(asked, "tool_call_start")  # nothing ran yet

        with pytest.raises(InvalidParamsError, match='"approve" or "deny"'):
            [e async for e in client.send_message(_message("maybe", task_id=task.id))]
        if how == "data":
            deny = _message("", task_id=task.id, data={"approved": False, "text": "not now"})
        else:
            deny = _message("deny: not now", task_id=task.id)
        denied = [e async for e in client.send_message(deny)]
        (done,) = _events_of(denied, "tool_call_complete")
        assert done["error"] == "denied by the user: not now"
        assert denied[-1].status_update.status.state == COMPLETED  # carried on without it

        # A blocking message/send returns at input-required, and again at the end.
        (waiting,) = [e async for e in blocking.send_message(_message(QUESTION, ospark=options))]
        assert waiting.task.status.state == INPUT_REQUIRED
        approve = _message(
            "approve" if how == "text" else "",
            task_id=waiting.task.id,
            data=None if how == "text" else {"approved": True},
        )
        (finished,) = [e async for e in blocking.send_message(approve)]
        assert finished.task.status.state == COMPLETED
        assert {a.name: a.parts[0].text for a in finished.task.artifacts}["answer"] == "395"


async def test_a_message_to_a_running_task_steers_it() -> None:
    held = Held("turn 1 end")
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=held.runner()) as gw,
        _client(gw.http_url) as client,
    ):
        stream = client.send_message(_message(QUESTION))
        task = (await anext(stream)).task
        await held.reached("turn 1 end")
        steering = client.send_message(_message("also say hello", task_id=task.id))
        first = await anext(steering)
        assert first.task.id == task.id and first.task.status.state == WORKING
        held.release()
        rest = [e async for e in steering]
        (shown,) = _events_of(rest, "user_message")
        assert shown["text"] == "also say hello"
        assert _answer(rest) == "395"
        await stream.aclose()
