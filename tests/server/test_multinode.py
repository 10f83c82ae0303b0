"""Several real `ospark serve` processes on one real Redis, driven by real WebSocket clients.

Each gateway here is its own process (``python -m gateway.cli serve --redis URL``) on its own
port, the way replicas run behind a load balancer. A short lease (``OSPARK_REDIS_LEASE``) makes
a killed process noticed within about a second; every wait is on an event the clients see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aredis

from protocol import (
    Accepted,
    Cancel,
    CancelAck,
    ErrorFrame,
    StatusReply,
    StatusRequest,
    Subscribe,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
)
from protocol.frames import EventFrame
from tests.redis_server import RedisServer
from tests.server.helpers import Client, assert_seq_continuous, demo_config

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789xx"}
LONG_TASK = "Research the number 42 please, thoroughly"


class Node:
    """One gateway process."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.clients: list[Client] = []

    @property
    def http(self) -> str:
        return self.url.replace("ws://", "http://").removesuffix("/ws")

    async def client(self, principal: str = "alice") -> Client:
        headers = {"Authorization": f"Bearer {TOKENS[principal]}"}
        client = await Client.connect(self.url, headers=headers)
        self.clients.append(client)
        return client

    async def close_clients(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 30)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


StartNode = Callable[..., Awaitable[Node]]


async def _start_node(
    tmp_path: Path, redis_url: str, *extra: str, pace_ms: int = 60, processes: int = 1
) -> Node:
    env = {
        **os.environ,
        "OSPARK_REDIS_URL": redis_url,
        "OSPARK_REDIS_LEASE": "1",
        "OSPARK_TOKENS": ",".join(f"{p}:{t}" for p, t in TOKENS.items()),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--port",
        "0",
        "--config",
        demo_config(tmp_path, pace_ms, f"demo-{pace_ms}.yaml"),
        "--shutdown-deadline",
        "0.2",
        *extra,
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    urls = []
    while len(urls) < processes:
        line = await proc.stderr.readline()
        assert line, "the gateway exited before listening"
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "listening":
            urls.append(record["url"])
    # Keep reading its log so the pipe never fills.
    asyncio.get_running_loop().create_task(_drain(proc.stderr))
    return Node(proc, urls[0])


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@pytest.fixture
async def nodes(tmp_path: Path, redis_url: str) -> AsyncIterator[StartNode]:
    started: list[Node] = []

    async def start(*extra: str, url: str = redis_url, pace_ms: int = 60) -> Node:
        node = await _start_node(tmp_path, url, *extra, pace_ms=pace_ms)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.close_clients()
        node.kill()
        await node.proc.wait()


async def started(client: Client, text: str = LONG_TASK, **kw: object) -> str:
    accepted = await client.reply(await client.start(text, **kw), Accepted)
    return str(accepted.task_id)


async def request(client: Client, frame_type: type, **fields: object) -> object:
    rid = client.next_id()
    await client.send(frame_type(id=rid, **fields))
    return await client.reply(rid)


def terminal(frames: list[EventFrame]) -> list[EventFrame]:
    return [f for f in frames if isinstance(f.event, TaskCompleted | TaskFailed | TaskCancelled)]


async def test_start_on_a_resume_and_cancel_on_b(nodes: StartNode) -> None:
    a, b = await nodes(), await nodes()
    on_a = await a.client()
    task = await started(on_a, task_id="job-1")
    await on_a.until(lambda: len(on_a.events[task]) >= 3)
    seen = on_a.events[task][:3]
    await on_a.close()  # the client's reconnect lands on the other gateway
    on_b = await b.client()
    rid = on_b.next_id()
    await on_b.send(Subscribe(id=rid, task_id=task, after_seq=3))
    await on_b.until(lambda: len(on_b.events[task]) >= 2)
    assert on_b.events[task][0].seq == 4  # exactly after what the client had
    ack = await request(on_b, Cancel, task_id=task)
    assert isinstance(ack, CancelAck) and ack.result == "accepted"
    await on_b.until_finished([task])
    frames = seen + on_b.events[task]
    assert_seq_continuous(frames)
    assert len(terminal(frames)) == 1
    assert isinstance(frames[-1].event, TaskCancelled)
    for node in (a, b):
        client = await node.client()
        reply = await request(client, StatusRequest, task_id=task)
        assert isinstance(reply, StatusReply) and reply.tasks[0].state == "cancelled"
        assert reply.tasks[0].last_seq == frames[-1].seq
        await client.close()


async def test_start_is_idempotent_across_gateways(nodes: StartNode) -> None:
    a, b = await nodes(), await nodes()
    on_a, on_b = await a.client(), await b.client()
    first = await on_a.reply(await on_a.start("What is 2+3?", task_id="same"), Accepted)
    again = await on_b.reply(await on_b.start("What is 2+3?", task_id="same"), Accepted)
    assert first.existing is False and again.existing is True
    await on_b.until_finished(["same"])
    assert_seq_continuous(on_b.events["same"])  # subscribed from seq 1 on the other gateway
    other = await on_b.reply(await on_b.start("something else", task_id="same"), ErrorFrame)
    assert other.code == "task_exists"


async def test_another_principal_sees_nothing_on_any_gateway(nodes: StartNode) -> None:
    a, b = await nodes(), await nodes()
    alice = await a.client("alice")
    task = await started(alice, "What is 6*7?", task_id="secret")
    await alice.until_finished([task])
    bob = await b.client("bob")
    for frame_type, fields in (
        (Subscribe, {"task_id": task}),
        (StatusRequest, {"task_id": task}),
    ):
        reply = await request(bob, frame_type, **fields)
        assert isinstance(reply, ErrorFrame) and reply.code == "unknown_task", reply
    ack = await request(bob, Cancel, task_id=task)
    assert isinstance(ack, CancelAck) and ack.result == "unknown"
    listing = await request(bob, StatusRequest)
    assert isinstance(listing, StatusReply) and listing.tasks == []
    mine = await b.client("alice")
    reply = await request(mine, StatusRequest, task_id=task)
    assert isinstance(reply, StatusReply) and reply.tasks[0].state == "completed"


async def test_kill_9_of_a_gateway_mid_stream_ends_its_tasks_with_node_lost(
    nodes: StartNode,
) -> None:
    a, b = await nodes(pace_ms=200), await nodes()
    on_a = await a.client()
    task = await started(on_a)
    on_b = await b.client()
    await on_b.send(Subscribe(id="s", task_id=task))
    await on_b.until(lambda: len(on_b.events[task]) >= 2)
    a.kill()  # SIGKILL: no drain, no goodbye
    await on_b.until_finished([task])
    frames = on_b.events[task]
    assert_seq_continuous(frames)
    assert len(terminal(frames)) == 1
    final = frames[-1].event
    assert isinstance(final, TaskFailed) and final.code == "node_lost", final
    reply = await request(on_b, StatusRequest, task_id=task)
    assert isinstance(reply, StatusReply) and reply.tasks[0].state == "failed"
    # The survivor keeps serving.
    fresh = await started(on_b, "What is 1+1?")
    await on_b.until_finished([fresh])
    assert isinstance(on_b.events[fresh][-1].event, TaskCompleted)


async def test_sigterm_of_one_gateway_while_the_other_keeps_serving(nodes: StartNode) -> None:
    a, b = await nodes(pace_ms=200), await nodes()
    on_a = await a.client()
    task = await started(on_a)
    on_b = await b.client()
    await on_b.send(Subscribe(id="s", task_id=task))
    await on_b.until(lambda: len(on_b.events[task]) >= 2)
    assert await a.stop() == 0
    await on_b.until_finished([task])
    final = on_b.events[task][-1].event
    assert isinstance(final, TaskCancelled) and final.reason == "server shutdown"
    assert_seq_continuous(on_b.events[task])
    fresh = await started(on_b, "What is 3*3?")
    await on_b.until_finished([fresh])
    assert isinstance(on_b.events[fresh][-1].event, TaskCompleted)
    # What a finished gateway wrote stays readable through the other one.
    replay = await b.client()
    await replay.send(Subscribe(id="r", task_id=task))
    await replay.until_finished([task])
    assert [f.seq for f in replay.events[task]] == [f.seq for f in on_b.events[task]]


async def test_redis_stopped_and_restarted_under_load(nodes: StartNode, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis-aof", aof=True)
    server.directory.mkdir()
    server.start()
    try:
        a = await nodes(url=server.url, pace_ms=40)
        b = await nodes(url=server.url, pace_ms=40)
        on_a, on_b = await a.client(), await b.client()
        tasks = [await started(on_a, f"{LONG_TASK} {i}") for i in range(3)]
        watch = await b.client()
        for t in tasks:
            await watch.send(Subscribe(id=f"w-{t}", task_id=t))
        await watch.until(lambda: all(watch.events[t] for t in tasks))  # all subscribed
        server.stop()
        refused = await on_b.reply(await on_b.start("What is 2+2?"), ErrorFrame)
        assert refused.code == "unavailable"
        # A notices on its next write to Redis (or lease tick); a start it refuses shows it has.
        refused = await on_a.reply(await on_a.start("What is 3+3?"), ErrorFrame)
        assert refused.code == "unavailable"
        health = await asyncio.to_thread(_get, a.http + "/healthz")
        assert health[0] == 503 and "Redis unreachable" in health[1]["reason"]
        server.start()
        await on_a.until_finished(tasks)
        await watch.until_finished(tasks)
        for t in tasks:
            # No acknowledged event lost: the client on A and the one on B got the same
            # complete stream, and a late reader replays it whole.
            assert_seq_continuous(on_a.events[t])
            assert isinstance(on_a.events[t][-1].event, TaskCompleted)
            assert [f.seq for f in watch.events[t]] == [f.seq for f in on_a.events[t]]
            late = await b.client()
            await late.send(Subscribe(id="l", task_id=t))
            await late.until_finished([t])
            assert [f.event for f in late.events[t]] == [f.event for f in on_a.events[t]]
        assert (await asyncio.to_thread(_get, a.http + "/healthz"))[0] == 200
    finally:
        server.stop()


async def test_workers_share_one_port_and_one_task_space(tmp_path: Path, redis_url: str) -> None:
    node = await _start_node(tmp_path, redis_url, "--workers", "2", processes=2)
    try:
        client = await node.client()
        task = await started(client, "What is 5*5?", task_id="w1")
        await client.until_finished([task])
        assert isinstance(client.events[task][-1].event, TaskCompleted)
        r = aredis.Redis.from_url(redis_url)
        try:
            nodes_seen = await r.zrange("osp:nodes", 0, -1)
        finally:
            await r.aclose()
        # Both workers registered as nodes (each did before it listened).
        assert len(nodes_seen) == 2
        await node.close_clients()
        assert await node.stop() == 0
    finally:
        await node.close_clients()
        node.kill()
        await node.proc.wait()


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def _serve_fails(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--port",
        "0",
        *args,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_workers_without_redis_are_refused_with_a_clear_message() -> None:
    code, err = await _serve_fails("--workers", "2")
    assert code == 2 and "--workers > 1 needs --redis" in err


async def test_an_unreachable_redis_is_refused_at_startup() -> None:
    from tests.redis_server import free_port

    code, err = await _serve_fails("--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert code == 2 and "cannot reach Redis" in err and "Traceback" not in err


async def test_bad_redis_settings_are_refused() -> None:
    code, err = await _serve_fails(env={"OSPARK_REDIS_LEASE": "soon"})
    assert code == 2 and "OSPARK_REDIS_LEASE: expected seconds" in err
