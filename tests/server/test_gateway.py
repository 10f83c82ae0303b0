"""The gateway end to end: real uvicorn on an ephemeral port, real `websockets` clients,
the real agent stack on the offline demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import websockets

from gateway.connection import ConnectionSettings
from gateway.server import Settings, serve_in_background
from protocol import (
    JSON,
    MSGPACK,
    Accepted,
    Cancel,
    CancelAck,
    Codec,
    ErrorFrame,
    LlmResponse,
    Ping,
    Pong,
    StartOptions,
    StatusReply,
    StatusRequest,
    Subscribe,
    TaskCancelled,
    TaskCompleted,
    ToolCallComplete,
    ToolCallStart,
)
from tests.server.helpers import Client, assert_seq_continuous, demo_config, event_key

QUESTION = "What is 17*23+4?"


def settings(tmp_path: Path, pace_ms: int = 0, **kw: object) -> Settings:
    s = Settings(port=0, agent_config=demo_config(tmp_path, pace_ms), web_root=None)
    s.connection = ConnectionSettings(merge_after=10**9)  # exact event equality in these tests
    for name, value in kw.items():
        setattr(s, name, value)
    return s


async def test_three_tasks_interleave_and_one_is_cancelled(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path, pace_ms=5)) as gw:
        client = await Client.connect(gw.url)
        rids = [await client.start(f"{QUESTION} (run {i})") for i in range(3)]
        accepted = [await client.reply(r, Accepted) for r in rids]
        ids = [a.task_id for a in accepted]
        assert len(set(ids)) == 3
        victim = ids[1]
        # Cancel once the victim is visibly streaming.
        await client.until(
            lambda: any(isinstance(f.event, LlmResponse) for f in client.events[victim])
        )
        cid = client.next_id()
        await client.send(Cancel(id=cid, task_id=victim))
        ack = await client.reply(cid, CancelAck)
        assert ack.result == "accepted"
        await client.until_finished(ids)
        for task_id in ids:
            assert_seq_continuous(client.events[task_id])
        assert isinstance(client.events[victim][-1].event, TaskCancelled)
        for task_id in (ids[0], ids[2]):
            final = client.events[task_id][-1].event
            assert isinstance(final, TaskCompleted) and final.final_answer == "395"
        # The streams were interleaved on the one socket.
        order = [
            f.task_id
            for frames in [client.events]
            for f in sorted((f for t in ids for f in frames[t]), key=lambda f: f.ts)
        ]
        assert len({order[i] for i in range(10)}) > 1
        sid = client.next_id()
        await client.send(StatusRequest(id=sid))
        status = await client.reply(sid, StatusReply)
        states = {t.task_id: t.state for t in status.tasks}
        assert states == {ids[0]: "completed", victim: "cancelled", ids[2]: "completed"}
        assert {t.task_id: t.last_seq for t in status.tasks} == {
            t: len(client.events[t]) for t in ids
        }
        await client.close()


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
async def test_both_encodings_end_to_end(tmp_path: Path, codec: Codec) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        client = await Client.connect(gw.url, codec=codec)
        assert client.ws.subprotocol == codec.subprotocol
        assert client.hello is not None and client.hello.encoding == codec.name
        rid = await client.start(QUESTION, task_id="calc-1")
        assert (await client.reply(rid, Accepted)).task_id == "calc-1"
        await client.until_finished(["calc-1"])
        events = [f.event for f in client.events["calc-1"]]
        starts = [e for e in events if isinstance(e, ToolCallStart)]
        completes = [e for e in events if isinstance(e, ToolCallComplete)]
        assert starts and completes and completes[0].result is not None
        assert "395" in completes[0].result
        assert isinstance(events[-1], TaskCompleted) and events[-1].final_answer == "395"
        pid = client.next_id()
        await client.send(Ping(id=pid, payload="hi"))
        assert (await client.reply(pid, Pong)).payload == "hi"
        await client.close()


async def test_no_subprotocol_means_json_text_frames(tmp_path: Path) -> None:
    """What `wscat -c ws://127.0.0.1:8000/ws` does: no subprotocol, raw JSON text."""
    async with serve_in_background(settings(tmp_path)) as gw, websockets.connect(gw.url) as ws:
        assert ws.subprotocol is None
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and hello["encoding"] == "json"
        await ws.send('{"type":"start","id":"r1","input":"What is 17*23+4?"}')
        kinds: list[str] = []
        while "task_completed" not in kinds:
            frame = json.loads(await ws.recv())
            assert isinstance(frame, dict)
            for event in frame.get("events", [frame]):
                if event["type"] == "event":
                    kinds.append(event["event"]["kind"])
        assert kinds[0] == "task_started"


async def test_resume_after_drop_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path, pace_ms=2)) as gw:
        # The reference: one uninterrupted run.
        ref = await Client.connect(gw.url)
        await ref.start(QUESTION, task_id="ref")
        await ref.until_finished(["ref"])
        await ref.close()

        first = await Client.connect(gw.url)
        await first.start(QUESTION, task_id="dropped")
        await first.until(lambda: len(first.events["dropped"]) >= 8)
        first.ws.transport.abort()  # the socket drops mid-stream
        last_seq = first.events["dropped"][-1].seq

        second = await Client.connect(gw.url)
        await second.send(Subscribe(id="s1", task_id="dropped", after_seq=last_seq))
        await second.until_finished(["dropped"])
        got = first.events["dropped"] + second.events["dropped"]
        assert_seq_continuous(got)
        assert [event_key(f.event) for f in got] == [event_key(f.event) for f in ref.events["ref"]]
        await second.close()


async def test_bad_frames_over_a_real_socket(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s.connection = ConnectionSettings(
        limits=s.connection.limits.__class__(max_frame_bytes=2048), merge_after=10**9
    )
    async with serve_in_background(s) as gw, websockets.connect(gw.url) as ws:
        await ws.recv()  # hello
        cases = [
            ("{not json", "bad_frame"),
            ("[1,2]", "bad_frame"),
            ('{"type":"launch","id":"x"}', "unknown_type"),
            ('{"type":"start","id":"a"}', "invalid_field"),
            ('{"type":"subscribe","id":1,"task_id":"t","after_seq":"x"}', "invalid_field"),
            ('{"type":"cancel","id":"c","task_id":"nope"}', None),
            ('{"type":"status","id":"s","task_id":"nope"}', "unknown_task"),
            ('{"type":"subscribe","id":"u","task_id":"nope"}', "unknown_task"),
            (b'{"type":"ping"}', "bad_frame"),
            ('{"type":"ping","payload":"' + "x" * 4000 + '"}', "frame_too_large"),
            ('{"type":"start","id":"s","input":"' + "x" * 1500 + '"}', None),
        ]
        for data, code in cases:
            await ws.send(data)
            reply = json.loads(await ws.recv())
            while reply["type"] in ("event", "batch", "accepted"):
                if reply["type"] == "accepted":
                    break
                reply = json.loads(await ws.recv())
            if code is None:
                assert reply["type"] in ("cancel_ack", "accepted"), reply
                if reply["type"] == "cancel_ack":
                    assert reply["result"] == "unknown"
            else:
                assert reply["type"] == "error" and reply["code"] == code, (data, reply)
        # The connection still works after all that.
        await ws.send('{"type":"ping","id":"alive"}')
        while (reply := json.loads(await ws.recv()))["type"] != "pong":
            pass
        assert reply["id"] == "alive"


async def test_repeated_oversized_frames_close_with_policy_violation(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s.connection.limits = s.connection.limits.__class__(max_frame_bytes=512)
    async with serve_in_background(s) as gw, websockets.connect(gw.url) as ws:
        await ws.recv()
        big = '{"type":"ping","payload":"' + "x" * 1000 + '"}'
        for _ in range(3):
            await ws.send(big)
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 4002


async def test_input_length_limit(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s.connection.limits = s.connection.limits.__class__(max_input_chars=10)
    async with serve_in_background(s) as gw:
        client = await Client.connect(gw.url)
        rid = await client.start("x" * 11)
        err = await client.reply(rid, ErrorFrame)
        assert err.code == "input_too_long" and err.field == "$.input"
        await client.close()


async def test_tasks_per_connection_limit(tmp_path: Path) -> None:
    s = settings(tmp_path, pace_ms=50)
    s.connection.limits = s.connection.limits.__class__(max_tasks_per_connection=2)
    async with serve_in_background(s) as gw:
        client = await Client.connect(gw.url)
        ok = [await client.start(QUESTION) for _ in range(2)]
        for rid in ok:
            await client.reply(rid, Accepted)
        rid = await client.start(QUESTION)
        err = await client.reply(rid, ErrorFrame)
        assert err.code == "too_many_tasks"
        await client.close()


async def test_start_rate_limit(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s.connection.limits = s.connection.limits.__class__(max_starts_per_second=2.0)
    async with serve_in_background(s) as gw:
        client = await Client.connect(gw.url)
        rids = [
            await client.start(QUESTION, options=StartOptions(on_detach="keep")) for _ in range(4)
        ]
        replies = [await client.reply(r) for r in rids]
        codes = [getattr(r, "code", "accepted") for r in replies]
        assert codes[:2] == ["accepted", "accepted"]
        assert "rate_limited" in codes[2:]
        await client.close()
