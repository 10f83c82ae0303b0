"""The Python client SDK against a real gateway running the agent stack on the demo model.

Races are made deterministic with :class:`gateway.testing.held.Held` (the model waits at a
named point until the test releases it) and :class:`tests.client.support.Proxy` (the client's
connection is cut and restored when the test says): no sleeps, no timing."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.client import (
    CannotConnect,
    ConnectionLost,
    GatewayClient,
    GatewayError,
    RequestError,
    TaskHandle,
)
from gateway.connection import ConnectionSettings
from gateway.testing.held import Held
from protocol import (
    EventFrame,
    Gap,
    Limits,
    LlmResponse,
    TaskCancelled,
    TaskCompleted,
    TaskProgress,
    TaskStarted,
    ToolCallComplete,
    ToolCallStart,
)

from .support import QUESTION, ROOT, Proxy, drop_connections, held_gateway, transcript

ENCODINGS = pytest.mark.parametrize("encoding", ["msgpack", "json"])


def readme_examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Python client\n", 1)[1].split("\n## ", 1)[0]
    examples = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(examples) == 2, "the README's Python client section has two examples"
    return examples


async def run_python(code: str) -> str:
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
    return out.decode()


async def seqs_and_text(task: TaskHandle) -> tuple[list[int], str]:
    seqs: list[int] = []
    text = ""
    async for frame in task.frames():
        assert isinstance(frame, EventFrame)
        seqs.append(frame.seq)
        if isinstance(frame.event, LlmResponse):
            text += frame.event.delta
    return seqs, text


async def test_readme_example_runs() -> None:
    code = readme_examples()[0]
    assert len(code.strip().splitlines()) <= 16
    async with held_gateway(Held()) as gw:
        text = await run_python(code.replace("ws://127.0.0.1:8000/ws", gw.url))
    assert "[calculate({'expression': '17*23+4'})]" in text
    assert "answer: 395" in text.splitlines()[-1]


async def test_readme_held_example_runs() -> None:
    assert await run_python(readme_examples()[1]) == "accepted TaskCancelled\n"


@ENCODINGS
async def test_one_task_typed_events(encoding: str) -> None:
    async with (
        held_gateway(Held()) as gw,
        GatewayClient(gw.url, encoding=encoding) as client,  # type: ignore[arg-type]
    ):
        assert client.hello is not None and client.hello.encoding == encoding
        task = await client.start(QUESTION)
        events = [e async for e in task.events()]
    assert isinstance(events[0], TaskStarted)
    assert [e.tool for e in events if isinstance(e, ToolCallStart)] == ["calculate"]
    assert [e.result for e in events if isinstance(e, ToolCallComplete)] == ["395"]
    assert isinstance(events[-1], TaskCompleted) and events[-1].final_answer == "395"
    assert task.state == "completed" and task.result is events[-1]
    assert task.last_seq == len(events)
    assert not task.superseded


async def test_many_tasks_concurrently_on_one_socket() -> None:
    questions = [f"What is {n}*3+1?" for n in range(8)]
    held = Held("summary")  # every task is running at once before any can finish
    async with held_gateway(held) as gw, GatewayClient(gw.url) as client:
        tasks = [await client.start(q) for q in questions]
        await held.reached("summary", len(questions))
        assert len(gw.gateway.connections) == 1
        assert {s.state for s in await client.status()} == {"running"}
        held.release()
        results = await asyncio.gather(*(seqs_and_text(t) for t in tasks))
        statuses = {s.task_id: s.state for s in await client.status()}
    for n, (task, (seqs, _)) in enumerate(zip(tasks, results, strict=True)):
        assert seqs == list(range(1, len(seqs) + 1))
        assert isinstance(task.result, TaskCompleted)
        assert task.result.final_answer == str(n * 3 + 1)
        assert statuses[task.task_id] == "completed"


async def test_cancel_while_the_model_streams() -> None:
    held = Held()
    held.hold("turn 1 text", task=QUESTION)  # after its reasoning, before its answer
    async with held_gateway(held) as gw, GatewayClient(gw.url) as client:
        task = await client.start(QUESTION)
        other = await client.start("What is 2+2?")
        await held.reached("turn 1 text", task=QUESTION)
        assert await task.cancel() == "accepted"
        events = [e async for e in task.events()]
        assert isinstance(events[-1], TaskCancelled)
        assert task.state == "cancelled"
        # Nothing of the held call's answer was streamed: the cancel stopped the model there.
        assert task.text("text") == "" and task.text("reasoning") != ""
        assert not any(isinstance(e, ToolCallStart) for e in events)
        assert await task.cancel() == "already_terminal"
        [status] = await client.status(task.task_id)
        assert status.state == "cancelled"
        assert isinstance(await other.wait(), TaskCompleted)
        assert held.arrivals("turn 1 text", task=QUESTION) == 1
        assert held.arrivals("summary", task=QUESTION) == 0


@ENCODINGS
async def test_resume_replays_what_was_missed_while_away(encoding: str) -> None:
    held = Held()
    async with held_gateway(held) as gw:
        expected = await transcript(gw.url)
        held.hold("summary text")
        async with (
            Proxy(gw) as proxy,
            GatewayClient(proxy.url, encoding=encoding, open_timeout=60) as client,  # type: ignore[arg-type]
            GatewayClient(gw.url) as observer,
        ):
            task = await client.start(QUESTION, options={"on_detach": "keep"})
            await held.reached("summary text", 2)
            proxy.cut()  # the client is away ...
            held.release()  # ... while the task streams its answer and ends
            assert isinstance(await (await observer.attach(task.task_id)).wait(), TaskCompleted)
            seen_before = task.last_seq
            proxy.restore()
            seqs, text = await seqs_and_text(task)
            assert client.reconnects == 1 and proxy.accepted == 2
    assert seen_before < seqs[-1]  # the end came by replay after the reconnect
    assert text == expected
    assert seqs == list(range(1, len(seqs) + 1))
    assert isinstance(task.result, TaskCompleted) and task.result.final_answer == "395"


async def test_server_close_mid_stream_resumes_without_loss_or_duplicates() -> None:
    held = Held()
    async with held_gateway(held) as gw:
        expected = await transcript(gw.url)
        held.hold("summary text")
        async with GatewayClient(gw.url) as client:
            task = await client.start(QUESTION)
            await held.reached("summary text", 2)
            assert drop_connections(gw) == 1  # what was queued for the socket is dropped too
            held.release()
            seqs, text = await seqs_and_text(task)
            assert client.reconnects == 1
    assert text == expected
    assert seqs == list(range(1, len(seqs) + 1))


async def test_hundreds_of_tasks_resume_paced_within_the_replay_budget() -> None:
    """Resubscribing to every task at once would replay ~30 events x 150 tasks, far over the
    gateway's replay budget (500 here), and be closed "too much to replay" again and again;
    paced, 8 tasks at a time, it stays within it and one reconnect suffices."""
    n = 150
    held = Held("summary text")
    settings = ConnectionSettings(
        max_replay=500,
        limits=Limits(max_tasks_per_connection=1000, max_starts_per_second=10_000),
    )
    async with (
        held_gateway(held, connection=settings) as gw,
        Proxy(gw) as proxy,
        GatewayClient(proxy.url, resume_batch=8, open_timeout=60) as client,
        GatewayClient(gw.url) as observer,
    ):
        tasks = [
            await client.start(f"What is {k}+1?", options={"on_detach": "keep"}) for k in range(n)
        ]
        await held.reached("summary text", n)
        proxy.cut()
        held.release()
        for task in tasks:
            assert isinstance(await (await observer.attach(task.task_id)).wait(), TaskCompleted)
        missed = sum(s.last_seq for s in await observer.status()) - sum(t.last_seq for t in tasks)
        assert missed > 4 * settings.max_replay
        proxy.restore()
        everything: asyncio.Future[Any] = asyncio.gather(*(t.wait() for t in tasks))
        another_reconnect: asyncio.Future[Any] = asyncio.create_task(proxy.connections(3))
        done, _ = await asyncio.wait(
            [everything, another_reconnect], return_when=asyncio.FIRST_COMPLETED
        )
        another_reconnect.cancel()
        assert everything in done, f"closed again: {client.reconnects} reconnects"
        assert client.reconnects == 1
        for k, task in enumerate(tasks):
            assert isinstance(task.result, TaskCompleted) and task.result.final_answer == str(k + 1)


async def test_requests_wait_across_a_reconnect() -> None:
    async with (
        held_gateway(Held()) as gw,
        Proxy(gw) as proxy,
        GatewayClient(proxy.url, open_timeout=60) as client,
    ):
        proxy.cut()
        # Sent while the connection is down: resent once the client is back.
        starting = asyncio.create_task(client.start(QUESTION))
        pinging = asyncio.create_task(client.ping("x"))
        await proxy.connections(2)
        assert not starting.done() and not pinging.done()
        proxy.restore()
        task = await starting
        assert isinstance(await task.wait(), TaskCompleted)
        assert (await pinging).payload == "x"
        assert client.reconnects == 1


async def test_attach_from_a_second_client() -> None:
    held = Held("summary")
    async with (
        held_gateway(held) as gw,
        GatewayClient(gw.url) as first,
        GatewayClient(gw.url) as second,
    ):
        task = await first.start(QUESTION, options={"on_detach": "keep"})
        await held.reached("summary")
        follower = await second.attach(task.task_id)
        held.release()
        assert isinstance(await follower.wait(), TaskCompleted)
        assert isinstance(await task.wait(), TaskCompleted)
        assert follower.last_seq == task.last_seq
        assert follower.text() == task.text() != ""


async def test_request_errors() -> None:
    async with held_gateway(Held()) as gw, GatewayClient(gw.url) as client:
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


async def test_unauthorized_is_not_retried() -> None:
    token = "secret-token-0123456789"
    async with held_gateway(Held(), tokens={token: "alice"}) as gw:
        with pytest.raises(ConnectionLost) as info:
            async with GatewayClient(gw.url, token="wrong-token-000000000"):
                pass
        # Refused at the handshake (HTTP 401), reported with the 4001 code: never retried.
        error = info.value
        assert isinstance(error, CannotConnect)
        assert (error.code, error.status, error.retryable) == (4001, 401, False)
        async with GatewayClient(gw.url, token=token) as client:
            assert client.hello is not None and client.hello.principal == "alice"
            task = await client.start(QUESTION)
            assert isinstance(await task.wait(), TaskCompleted)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says anything."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_is_a_gateway_error(closed_port: int) -> None:
    url = f"ws://127.0.0.1:{closed_port}/ws"
    with pytest.raises(CannotConnect) as info:
        async with GatewayClient(url):
            pass
    assert isinstance(info.value, GatewayError)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert url in str(info.value) and info.value.retryable and info.value.status is None


async def test_unknown_host_is_a_gateway_error() -> None:
    with pytest.raises(CannotConnect) as info:
        await GatewayClient("ws://no-such-host.invalid/ws").connect()
    assert isinstance(info.value.__cause__, OSError)


async def test_a_silent_server_times_out_as_a_gateway_error(silent_port: int) -> None:
    with pytest.raises(CannotConnect) as info:
        await GatewayClient(f"ws://127.0.0.1:{silent_port}/ws", open_timeout=0.2).connect()
    assert "no answer within 0.2s" in str(info.value)
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_tls_to_a_plain_server_is_a_gateway_error() -> None:
    async with held_gateway(Held()) as gw:
        with pytest.raises(CannotConnect) as info:
            await GatewayClient(f"wss://127.0.0.1:{gw.port}/ws").connect()
    assert "TLS" in str(info.value) and not info.value.retryable


async def test_a_handshake_refused_with_http_status_is_a_gateway_error() -> None:
    async with held_gateway(Held()) as gw:
        with pytest.raises(CannotConnect) as info:
            await GatewayClient(f"ws://127.0.0.1:{gw.port}/no-such-path").connect()
    assert info.value.status is not None and 400 <= info.value.status < 500


async def refuse_with_401(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP server refusing every WebSocket handshake as a gateway refuses a bad token."""
    await reader.readuntil(b"\r\n\r\n")
    body = b"invalid token\n"
    writer.write(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    writer.close()


async def test_a_token_refused_at_the_handshake_is_not_retryable() -> None:
    server = await asyncio.start_server(refuse_with_401, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(CannotConnect) as info:
            await GatewayClient(f"ws://127.0.0.1:{port}/ws", token="x" * 20).connect()
    assert info.value.status == 401 and not info.value.retryable
    assert str(info.value).endswith("HTTP 401: invalid token")


async def test_a_reconnect_refused_at_the_handshake_gives_up() -> None:
    held = Held("summary")
    server = await asyncio.start_server(refuse_with_401, "127.0.0.1", 0)
    async with (
        server,
        held_gateway(held) as gw,
        Proxy(gw) as proxy,
        GatewayClient(proxy.url, open_timeout=60) as client,
    ):
        task = await client.start(QUESTION)
        await held.reached("summary")
        proxy.upstream = server.sockets[0].getsockname()[:2]  # e.g. the token was revoked
        proxy.cut()
        proxy.restore()
        with pytest.raises(CannotConnect) as info:
            await task.wait()
        assert info.value.status == 401
        assert proxy.accepted == 2 and client.reconnects == 0
        with pytest.raises(CannotConnect):
            await client.ping()
        held.release()


async def test_not_a_url_is_a_gateway_error() -> None:
    with pytest.raises(CannotConnect):
        await GatewayClient("http://127.0.0.1:1/ws").connect()


async def test_close_wakes_waiting_consumers() -> None:
    held = Held("summary")
    async with held_gateway(held) as gw:
        client = GatewayClient(gw.url)
        await client.connect()
        task = await client.start(QUESTION)
        waiting = asyncio.create_task(task.wait())
        await held.reached("summary")
        await client.close()
        with pytest.raises(ConnectionLost):
            await waiting
        held.release()


async def test_a_retried_model_call_is_superseded_not_repeated() -> None:
    held = Held()
    async with held_gateway(held) as gw:
        expected = await transcript(gw.url)
        held.break_stream("summary end")  # the summary streams in full, then its stream breaks
        async with GatewayClient(gw.url) as client:
            task = await client.start(QUESTION)
            events = [e async for e in task.events()]
    steps = [e.step for e in events if isinstance(e, TaskProgress)]
    assert steps.count("retrying") == 1
    raw = "".join(e.delta for e in events if isinstance(e, LlmResponse))
    summary = task.text(phase="summary")
    assert summary.endswith("\\boxed{395}") and raw.count(summary) == 2  # sent twice
    assert task.text(agent=None, channel="text") + task.text("reasoning") != raw
    clean = "".join(
        e.delta
        for f in task._frames
        if isinstance(f, EventFrame) and isinstance(e := f.event, LlmResponse)
        if f.seq not in task.superseded
    )
    assert clean == expected  # without the superseded copy: what an unbroken run streams
    assert isinstance(task.result, TaskCompleted) and task.result.summary.count(summary) == 1


async def test_gap_is_reported_not_skipped() -> None:
    client = GatewayClient()
    task = TaskHandle(client, "t1")
    task._feed(EventFrame(task_id="t1", seq=1, ts=0.0, event=TaskStarted()))
    task._feed(EventFrame(task_id="t1", seq=1, ts=0.0, event=TaskStarted()))  # duplicate
    task._gap(Gap(task_id="t1", after_seq=1, first_available_seq=5))
    task._feed(EventFrame(task_id="t1", seq=4, ts=0.0, event=LlmResponse(delta="old")))
    task._feed(EventFrame(task_id="t1", seq=5, ts=0.0, event=TaskCompleted(final_answer="1")))
    frames = [f async for f in task.frames()]
    assert [type(f).__name__ for f in frames] == ["EventFrame", "Gap", "EventFrame"]
    assert task.gaps and task.state == "completed"
