"""The multiplexer on its own: a fake socket, a real TaskManager, scripted task runs.

The scripted runner stands in for the agent (this file is about requests, follows and the
outbox in use, not agents): each run emits the events it is given, waiting on a shared gate at
each ``None`` of its script. The writer here is the endpoint's loop in miniature (the real one
runs over real sockets in tests/server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.connection import Connection, ConnectionSettings
from gateway.tasks import TaskManager, TaskSpec
from gateway.testing import HOLD, ScriptedRunner, Step
from protocol import (
    JSON,
    ClientSession,
    CloseCode,
    Event,
    EventFrame,
    Hello,
    LlmResponse,
    ProtocolError,
    ServerSession,
    TaskCompleted,
    TaskStarted,
    ToolCallStart,
    Usage,
)


async def run_writer(conn: Connection, send: Callable[[str | bytes], Awaitable[None]]) -> None:
    """Take payloads from the connection's outbox and send them, as the endpoint does."""
    outbox = conn.outbox
    while True:
        await conn.wait_for_output()
        if conn.close_code is not None:
            return
        outbox.begin_write()
        try:
            while (item := outbox.take()) is not None:
                await send(item[0])
                if conn.close_code is not None:
                    return
        finally:
            outbox.end_write()
        conn.sent_all()


class FakeSocket:
    """Collects what the writer sends; ``paused`` blocks it like a full TCP buffer."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.paused = asyncio.Event()
        self.paused.set()
        self.progress = asyncio.Condition()

    async def send(self, payload: str | bytes) -> None:
        await self.paused.wait()
        self.sent.append(payload)
        async with self.progress:
            self.progress.notify_all()

    def frames(self) -> list[object]:
        client = ClientSession(JSON)
        out: list[object] = []
        for payload in self.sent:
            frames = client.receive(payload)
            assert not isinstance(frames, ProtocolError), frames
            out.extend(frames)
        return out


def deltas(n: int, text: str = "w") -> list[Event | None]:
    return [LlmResponse(delta=f"{text}{i} ", turn=1) for i in range(n)]


@pytest.fixture
def gate() -> asyncio.Semaphore:
    return asyncio.Semaphore(0)


def open_gate(gate: asyncio.Semaphore) -> None:
    for _ in range(1000):
        gate.release()


async def setup(
    scripts: dict[str, list[Event | None]], gate: asyncio.Semaphore, **settings: int
) -> tuple[TaskManager, Connection, FakeSocket, asyncio.Task[None]]:
    def script(spec: TaskSpec) -> list[Step]:
        return [HOLD if e is None else e for e in scripts[spec.input]]

    runner = ScriptedRunner(script, gate=gate, usage=Usage())
    manager = TaskManager(runner)
    session = ServerSession(JSON)
    conn = Connection(manager, session, principal="p", settings=ConnectionSettings(**settings))
    sock = FakeSocket()
    sock.sent.append(conn.hello())
    writer = asyncio.create_task(run_writer(conn, sock.send))
    return manager, conn, sock, writer


async def finish(manager: TaskManager, conn: Connection, writer: asyncio.Task[None]) -> None:
    await manager.shutdown(0)
    await conn.flushed()
    writer.cancel()
    conn.close()


async def wait_done(manager: TaskManager, task_id: str) -> None:
    """Follow the task (as a second subscriber) until its terminal event."""
    async for _ in await manager.subscribe("p", task_id):
        pass


def events_of(frames: list[object], task_id: str) -> list[EventFrame]:
    return [f for f in frames if isinstance(f, EventFrame) and f.task_id == task_id]


async def test_idle_writer_sends_one_event_per_frame(gate: asyncio.Semaphore) -> None:
    script: list[Event | None] = [TaskStarted()]
    for d in deltas(5):
        script += [None, d]
    manager, conn, sock, writer = await setup({"a": [*script, None]}, gate)
    await conn.handle('{"type":"start","id":1,"input":"a","task_id":"t"}')

    async def sent(n: int) -> None:
        async with sock.progress:
            await sock.progress.wait_for(lambda: len(sock.sent) >= n)

    await sent(3)  # hello, accepted, task_started
    for i in range(5):  # one event at a time: each goes out alone, at once
        gate.release()
        await sent(4 + i)
        assert f'"w{i} "' in str(sock.sent[-1]) and '"batch"' not in str(sock.sent[-1])
    assert isinstance(ClientSession(JSON).receive(sock.sent[0])[0], Hello)
    assert '"accepted"' in str(sock.sent[1])
    gate.release()
    await finish(manager, conn, writer)


async def test_backlog_is_batched_and_deltas_merged(gate: asyncio.Semaphore) -> None:
    script: list[Event | None] = [
        TaskStarted(),
        None,
        *deltas(300),
        ToolCallStart(call_id="c", server="s", tool="t"),
        *deltas(5, "x"),
    ]
    manager, conn, sock, writer = await setup({"a": script}, gate, merge_after=4, max_batch=64)
    sock.paused.clear()  # the client stops reading
    await conn.handle('{"type":"start","id":1,"input":"a","task_id":"t"}')
    open_gate(gate)
    await wait_done(manager, "t")
    sock.paused.set()
    await conn.flushed()
    frames = sock.frames()
    got = events_of(frames, "t")
    assert conn.outbox.events_merged > 0
    assert any(isinstance(ClientSession(JSON).receive(p)[0], Hello) for p in sock.sent[:1])
    assert any('"batch"' in str(p) for p in sock.sent)
    # Nothing lost: the text is whole, seq increases, lifecycle events all there, in order.
    text = "".join(f.event.delta for f in got if isinstance(f.event, LlmResponse))
    assert text == "".join(f"w{i} " for i in range(300)) + "".join(f"x{i} " for i in range(5))
    seqs = [f.seq for f in got]
    assert seqs == sorted(set(seqs)) and seqs[-1] == 308
    kinds = [f.event.__struct_config__.tag for f in got]
    assert kinds[0] == "task_started" and kinds[-1] == "task_completed"
    assert kinds.count("tool_call_start") == 1
    tool_at = kinds.index("tool_call_start")
    assert all(k == "llm_response" for k in kinds[1:tool_at])
    await finish(manager, conn, writer)


async def test_slow_consumer_is_closed_and_memory_bounded(gate: asyncio.Semaphore) -> None:
    script: list[Event | None] = [TaskStarted(), None]
    for i in range(200):  # tool events are never merged, so the outbox must overflow
        script.append(ToolCallStart(call_id=f"c{i}", server="s", tool="t"))
    manager, conn, sock, writer = await setup({"a": script}, gate, max_outbox=50)
    sock.paused.clear()
    await conn.handle('{"type":"start","id":1,"input":"a","task_id":"t"}')
    open_gate(gate)
    await conn.close_requested.wait()
    assert conn.close_code == CloseCode.SLOW_CONSUMER
    assert len(conn.outbox) == 0  # the backlog was dropped, not kept
    writer.cancel()  # as the endpoint does: its writer is stuck on the full socket
    conn.close()
    # The task is unaffected and the client can resume from its last seq.
    await manager.shutdown(5)
    status = await manager.status("p", "t")
    assert status.state == "completed"
    sub = await manager.subscribe("p", "t", after_seq=0)
    assert [d.seq async for d in sub] == list(range(1, status.last_seq + 1))  # type: ignore[union-attr]


async def test_accepted_comes_before_replayed_events(gate: asyncio.Semaphore) -> None:
    open_gate(gate)
    manager, conn, sock, writer = await setup({"a": [TaskStarted()]}, gate)
    await conn.handle('{"type":"start","id":1,"input":"a","task_id":"t"}')
    await wait_done(manager, "t")
    await conn.flushed()
    sock.sent.clear()
    # A retried start of a finished task: replayed events follow the accepted reply.
    await conn.handle('{"type":"start","id":2,"input":"a","task_id":"t"}')
    await conn.flushed()
    client = ClientSession(JSON)
    client.hello = Hello()
    received = [f for p in sock.sent for f in client.receive(p)]
    assert type(received[0]).__name__ == "Accepted" and received[0].existing  # type: ignore[attr-defined]
    assert [f.seq for f in received[1:]] == [1, 2]  # type: ignore[attr-defined]
    await finish(manager, conn, writer)


async def test_resubscribing_never_detaches_the_task(gate: asyncio.Semaphore) -> None:
    manager, conn, sock, writer = await setup({"a": [TaskStarted(), None, *deltas(3)]}, gate)
    await conn.handle(
        '{"type":"start","id":1,"input":"a","task_id":"t","options":{"on_detach":"cancel"}}'
    )
    async with sock.progress:  # the client has seen seq 1
        await sock.progress.wait_for(lambda: "task_started" in str(sock.sent))
    await conn.handle('{"type":"subscribe","id":2,"task_id":"t","after_seq":1}')
    open_gate(gate)
    await wait_done(manager, "t")
    await conn.flushed()
    got = events_of(sock.frames(), "t")
    assert isinstance(got[-1].event, TaskCompleted)  # not cancelled as "detached"
    assert [f.seq for f in got] == [1, 2, 3, 4, 5]
    await finish(manager, conn, writer)


async def test_resubscribing_while_lagging_gives_each_event_once(gate: asyncio.Semaphore) -> None:
    manager, conn, sock, writer = await setup(
        {"a": [TaskStarted(), None, *deltas(40)]}, gate, merge_after=4
    )
    sock.paused.clear()  # the client lags: events pile up (and merge) in the outbox
    await conn.handle('{"type":"start","id":1,"input":"a","task_id":"t"}')
    open_gate(gate)
    await wait_done(manager, "t")
    await conn.handle('{"type":"subscribe","id":2,"task_id":"t","after_seq":1}')
    sock.paused.set()
    await conn.flushed()
    got = events_of(sock.frames(), "t")
    seqs = [f.seq for f in got]
    assert seqs == sorted(set(seqs)) and seqs[-1] == 42
    text = "".join(f.event.delta for f in got if isinstance(f.event, LlmResponse))
    assert text == "".join(f"w{i} " for i in range(40))
    await finish(manager, conn, writer)


async def test_replay_flooding_is_bounded(gate: asyncio.Semaphore) -> None:
    script: list[Event | None] = [TaskStarted()]
    script += [ToolCallStart(call_id=f"c{i}", server="s", tool="t") for i in range(100)]
    manager, conn, sock, writer = await setup({"a": script}, gate, max_replay=1000)
    await conn.handle('{"type":"start","id":1,"input":"a","task_id":"t","subscribe":false}')
    await wait_done(manager, "t")
    sock.paused.clear()  # a client that never reads asks for the whole log again and again
    for i in range(100):
        await conn.handle(f'{{"type":"subscribe","id":{i},"task_id":"t"}}')
        assert len(conn.outbox) <= 1000 + 102  # one replay at a time: older ones are dropped
    # Replays of many different tasks past the bound close the connection instead.
    for n in range(12):
        await conn.handle(
            f'{{"type":"start","id":"s{n}","input":"a","task_id":"t{n}","subscribe":false}}'
        )
    for n in range(12):
        await wait_done(manager, f"t{n}")
    for n in range(12):
        await conn.handle(f'{{"type":"subscribe","id":"u{n}","task_id":"t{n}"}}')
    assert conn.close_code == CloseCode.SLOW_CONSUMER
    assert len(conn.outbox) == 0
    writer.cancel()
    conn.close()
    await manager.shutdown(0)


async def test_the_writer_is_started_once_with_the_first_output(gate: asyncio.Semaphore) -> None:
    manager = TaskManager(ScriptedRunner(lambda spec: [TaskStarted()], gate=gate))
    conn = Connection(manager, ServerSession(JSON), principal="p")
    conn.hello()
    starts: list[int] = []
    conn.start_writer = lambda: starts.append(len(conn.outbox))
    assert starts == []  # idle: nothing to write, no writer
    await conn.handle('{"type":"ping","id":1}')
    assert starts == [1]
    await conn.handle('{"type":"ping","id":2}')
    assert starts == [1] and len(conn.outbox) == 2  # started once; it takes from the outbox
    closes: list[int | None] = []
    conn.on_close = lambda: closes.append(conn.close_code)
    conn.request_close(4003, "bye")
    conn.request_close(4000, "again")
    assert closes == [4003] and len(conn.outbox) == 0
    await manager.shutdown(0)
