"""The A2A adapter, driven by the official ``a2a-sdk`` client against a real gateway."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.client import ClientCallContext
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError

from gateway.server import Settings, serve_in_background
from gateway.testing.held import Held

QUESTION = "What is 17*23+4?"


def _message(text: str, context_id: str = "") -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            message_id="m1", role=Role.ROLE_USER, parts=[Part(text=text)], context_id=context_id
        )
    )


def _seq(event: StreamResponse) -> int | None:
    which = event.WhichOneof("payload")
    meta = getattr(event, which).metadata
    return int(meta["seq"]) if "seq" in meta else None


@asynccontextmanager
async def _client(base: str, token: str | None = None) -> AsyncIterator[object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        client = await create_client(base, ClientConfig(httpx_client=http))
        yield client


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
            sent = await http.post(
                url,
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "message/send",
                    "params": {"message": message},
                },
            )
            task = sent.json()["result"]
            assert task["status"]["state"] == "completed"
            answer = next(a for a in task["artifacts"] if a["name"] == "answer")
            assert answer["parts"][0]["text"] == "395"
            got = await http.post(
                url,
                json={
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "tasks/get",
                    "params": {"id": task["id"]},
                },
            )
            assert got.json()["result"]["status"]["state"] == "completed"
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
