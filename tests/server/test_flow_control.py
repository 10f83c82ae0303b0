"""A client that stops reading: it is closed as a slow consumer (4000) with bounded memory,
other clients are unaffected, and it resumes without losing anything."""

from __future__ import annotations

import socket
from collections import defaultdict
from pathlib import Path

import msgspec
import websockets

from gateway.connection import ConnectionSettings
from gateway.server import Settings, serve_in_background
from protocol import Accepted, EventFrame, Limits, LlmResponse, Subscribe, TaskCompleted
from tests.server.helpers import Client, demo_config

QUESTION = "What is 17*23+4?"


def text_of(frames: list[EventFrame]) -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = defaultdict(str)
    for f in frames:
        if isinstance(f.event, LlmResponse):
            out[(f.event.agent, f.event.channel, f.event.phase)] += f.event.delta
    return dict(out)


def kinds_without_deltas(frames: list[EventFrame]) -> list[object]:
    return [
        msgspec.to_builtins(f.event) | {"duration_ms": None}
        for f in frames
        if not isinstance(f.event, LlmResponse)
    ]


async def test_slow_consumer_is_closed_and_resumes(tmp_path: Path) -> None:
    s = Settings(port=0, agent_config=demo_config(tmp_path, 1), web_root=None)
    s.connection = ConnectionSettings(
        limits=Limits(max_starts_per_second=10_000, max_tasks_per_connection=200),
        max_outbox=200,
        merge_after=16,
    )
    async with serve_in_background(s) as gw:
        reference = await Client.connect(gw.url)
        await reference.start(QUESTION, task_id="ref")
        await reference.until_finished(["ref"])
        ref = reference.events["ref"]

        # A client whose socket barely buffers and that stops reading after `hello` (small
        # buffers at both ends: accepted sockets inherit the listening socket's send buffer).
        for server in gw.server.servers:
            for listening in server.sockets:
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", gw.port))
        slow = await Client.connect(gw.url, sock=raw, max_queue=1)
        assert slow.hello is not None
        conn = next(c for c in gw.gateway.connections if c.session_id == slow.hello.session_id)
        ids = [f"slow-{i}" for i in range(120)]
        for task_id in ids:
            await slow.start(QUESTION, task_id=task_id)

        # Meanwhile another client is served normally.
        other = await Client.connect(gw.url)
        await other.start(QUESTION, task_id="other")
        await other.until_finished(["other"])
        assert isinstance(other.events["other"][-1].event, TaskCompleted)

        await conn.close_requested.wait()
        assert conn.close_code == 4000
        assert len(conn.outbox) == 0  # the backlog is dropped, not kept

        # The slow client reads what was already on its way, then the 4000 close.
        try:
            while True:
                await slow.recv()
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4000
        accepted = {f.task_id for f in slow.others if isinstance(f, Accepted)}

        # It resumes every task from its last seen seq and loses nothing.
        again = await Client.connect(gw.url)
        for task_id in ids:
            seen = slow.events[task_id]
            assert task_id in accepted or not seen
            await again.send(
                Subscribe(id=task_id, task_id=task_id, after_seq=seen[-1].seq if seen else 0)
            )
        await again.until_finished(ids)
        for task_id in ids:
            got = slow.events[task_id] + again.events[task_id]
            seqs = [f.seq for f in got]
            assert seqs == sorted(set(seqs)), task_id  # increasing, no duplicate
            assert seqs[-1] == ref[-1].seq
            assert text_of(got) == text_of(ref)
            assert kinds_without_deltas(got) == kinds_without_deltas(ref)
        for c in (reference, other, again):
            await c.close()
