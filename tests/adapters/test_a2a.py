"""The A2A adapter, driven by the official ``a2a-sdk`` client against a real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.client import ClientCallContext
from a2a.client.errors import A2AClientError
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
from a2a.utils.errors import TaskNotFoundError

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
    async with serve_in_background(Settings(port=0, web_root=None), runner_factory=held.runner()) as gw:
        async with _client(f"http://127.0.0.1:{gw.port}") as client:
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
        if kinds[events.index(e)] == "artifact_update" and e.artifact_update.artifact.name == "answer"
    ]
    assert [a.parts[0].text for a in answers] == ["395"]
    seqs = [s for s in (_seq(e) for e in events[1:]) if s is not None]
    assert seqs == sorted(seqs) and seqs[0] == 1
    assert all(e.status_update.task_id == task_id for e in events if e.HasField("status_update"))
