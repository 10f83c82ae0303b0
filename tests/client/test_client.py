"""The Python client SDK against a real gateway running the agent stack on the demo model."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from gateway.client import ConnectionLost, GatewayClient, GatewayError, RequestError, Task
from protocol import (
    EventFrame,
    Gap,
    LlmResponse,
    TaskCancelled,
    TaskCompleted,
    TaskStarted,
    ToolCallComplete,
    ToolCallStart,
)

from .support import QUESTION, ROOT, demo_gateway, drop_connections, transcript

ENCODINGS = pytest.mark.parametrize("encoding", ["msgpack", "json"])


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python client section has no example"
    return match.group(1)


async def seqs_and_text(task: Task) -> tuple[list[int], str]:
    seqs: list[int] = []
    text = ""
    async for frame in task.frames():
        assert isinstance(frame, EventFrame)
        seqs.append(frame.seq)
        if isinstance(frame.event, LlmResponse):
            text += frame.event.delta
    return seqs, text


async def test_readme_example_runs(tmp_path: Path) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= 16
    async with demo_gateway(tmp_path, pace_ms=0) as gw:
        code = code.replace("ws://127.0.0.1:8000/ws", gw.url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "[calculate({'expression': '17*23+4'})]" in text
    assert "answer: 395" in text.splitlines()[-1]


@ENCODINGS
async def test_one_task_typed_events(tmp_path: Path, encoding: str) -> None:
    async with (
        demo_gateway(tmp_path) as gw,
        GatewayClient(gw.url, encoding=encoding) as client,  # type: ignore[arg-type]
    ):
        assert client.hello is not None and client.hello.encoding == encoding
        task = await client.start(QUESTION)
        events = [e async for e in task.events()]
    assert isinstance(events[0], TaskStarted)
    assert any(isinstance(e, ToolCallStart) and e.tool == "calculate" for e in events)
    assert any(isinstance(e, ToolCallComplete) and e.result == "395" for e in events)
    assert isinstance(events[-1], TaskCompleted) and events[-1].final_answer == "395"
    assert task.state == "completed" and task.result is events[-1]
    assert task.last_seq == len(events)


async def test_many_tasks_concurrently_on_one_socket(tmp_path: Path) -> None:
    questions = [f"What is {n}*3+1?" for n in range(8)]
    async with demo_gateway(tmp_path, pace_ms=1) as gw, GatewayClient(gw.url) as client:
        tasks = [await client.start(q) for q in questions]
        assert len(gw.gateway.connections) == 1
        results = await asyncio.gather(*(seqs_and_text(t) for t in tasks))
        statuses = {s.task_id: s.state for s in await client.status()}
    for n, (task, (seqs, _)) in enumerate(zip(tasks, results, strict=True)):
        assert seqs == list(range(1, len(seqs) + 1))
        assert isinstance(task.result, TaskCompleted)
        assert task.result.final_answer == str(n * 3 + 1)
        assert statuses[task.task_id] == "completed"


async def test_cancel(tmp_path: Path) -> None:
    async with demo_gateway(tmp_path, pace_ms=20) as gw, GatewayClient(gw.url) as client:
        task = await client.start(QUESTION)
        other = await client.start("What is 2+2?")
        events = task.events()
        assert isinstance(await anext(events), TaskStarted)
        assert await task.cancel() == "accepted"
        rest = [e async for e in events]
        assert isinstance(rest[-1], TaskCancelled)
        assert task.state == "cancelled"
        assert await task.cancel() == "already_terminal"
        [status] = await client.status(task.task_id)
        assert status.state == "cancelled"
        assert isinstance(await other.wait(), TaskCompleted)


@ENCODINGS
async def test_reconnect_resumes_without_loss_or_duplicates(tmp_path: Path, encoding: str) -> None:
    async with demo_gateway(tmp_path, pace_ms=5) as gw:
        expected = await transcript(gw.url)
        async with GatewayClient(gw.url, encoding=encoding) as client:  # type: ignore[arg-type]
            task = await client.start(QUESTION)
            seqs: list[int] = []
            text = ""
            dropped = False
            async for frame in task.frames():
                assert isinstance(frame, EventFrame)
                seqs.append(frame.seq)
                if isinstance(frame.event, LlmResponse):
                    text += frame.event.delta
                if isinstance(frame.event, ToolCallStart) and not dropped:
                    assert drop_connections(gw) == 1
                    dropped = True
            assert client.reconnects == 1
    assert dropped
    assert text == expected
    assert seqs == sorted(set(seqs)) and seqs[0] == 1
    assert isinstance(task.result, TaskCompleted) and task.result.final_answer == "395"


async def test_requests_wait_across_a_reconnect(tmp_path: Path) -> None:
    async with demo_gateway(tmp_path) as gw, GatewayClient(gw.url) as client:
        drop_connections(gw)
        # Sent while the socket is going down: resent once the client is back.
        task = await client.start(QUESTION)
        assert isinstance(await task.wait(), TaskCompleted)
        assert (await client.ping("x")).payload == "x"
        assert client.reconnects >= 1


async def test_attach_from_a_second_client(tmp_path: Path) -> None:
    async with (
        demo_gateway(tmp_path, pace_ms=2) as gw,
        GatewayClient(gw.url) as first,
        GatewayClient(gw.url) as second,
    ):
        task = await first.start(QUESTION, options={"on_detach": "keep"})
        follower = await second.attach(task.task_id)
        assert isinstance(await follower.wait(), TaskCompleted)
        assert isinstance(await task.wait(), TaskCompleted)
        assert follower.last_seq == task.last_seq


async def test_request_errors(tmp_path: Path) -> None:
    async with demo_gateway(tmp_path) as gw, GatewayClient(gw.url) as client:
        assert await client.cancel("no-such-task") == "unknown"
        with pytest.raises(RequestError) as info:
            await client.status("no-such-task")
        assert info.value.code == "unknown_task"
        ghost = await client.attach("no-such-task")
        with pytest.raises(RequestError) as info:
            await ghost.wait()
        assert info.value.code == "unknown_task"
        with pytest.raises(RequestError) as info:
            await client.start("x" * 200_000)
        assert info.value.code == "input_too_long"
        task = await client.start(QUESTION, task_id="same-id")
        with pytest.raises(RequestError) as info:
            await client.start("something else", task_id="same-id")
        assert info.value.code == "task_exists"
        assert isinstance(await task.wait(), TaskCompleted)
        again = await client.start(QUESTION, task_id="same-id")
        assert again.existing and again.done


async def test_unauthorized_is_not_retried(tmp_path: Path) -> None:
    token = "secret-token-0123456789"
    async with demo_gateway(tmp_path, tokens={token: "alice"}) as gw:
        with pytest.raises(ConnectionLost) as info:
            async with GatewayClient(gw.url, token="wrong-token-000000000"):
                pass
        assert info.value.code == 4001
        async with GatewayClient(gw.url, token=token) as client:
            assert client.hello is not None and client.hello.principal == "alice"
            task = await client.start(QUESTION)
            assert isinstance(await task.wait(), TaskCompleted)


async def test_close_wakes_waiting_consumers(tmp_path: Path) -> None:
    async with demo_gateway(tmp_path, pace_ms=20) as gw:
        client = GatewayClient(gw.url)
        await client.connect()
        task = await client.start(QUESTION)
        waiting = asyncio.create_task(task.wait())
        await anext(task.events())
        await client.close()
        with pytest.raises(GatewayError):
            await waiting


async def test_gap_is_reported_not_skipped() -> None:
    client = GatewayClient()
    task = Task(client, "t1")
    task._feed(EventFrame(task_id="t1", seq=1, ts=0.0, event=TaskStarted()))
    task._feed(EventFrame(task_id="t1", seq=1, ts=0.0, event=TaskStarted()))  # duplicate
    task._gap(Gap(task_id="t1", after_seq=1, first_available_seq=5))
    task._feed(EventFrame(task_id="t1", seq=4, ts=0.0, event=LlmResponse(delta="old")))
    task._feed(EventFrame(task_id="t1", seq=5, ts=0.0, event=TaskCompleted(final_answer="1")))
    frames = [f async for f in task.frames()]
    assert [type(f).__name__ for f in frames] == ["EventFrame", "Gap", "EventFrame"]
    assert task.gaps and task.state == "completed"
