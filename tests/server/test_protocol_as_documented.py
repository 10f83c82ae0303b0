"""The protocol as the README documents it, over real sockets (issue 17's findings): every
request with an ``id`` gets a reply, an idle socket sees single events, bad input gets a clear
error and the connection stays."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from gateway.server import Settings, serve_in_background
from protocol import (
    Accepted,
    ErrorFrame,
    Ping,
    Pong,
    StatusReply,
    StatusRequest,
    Subscribe,
    Subscribed,
    TaskCompleted,
    Unsubscribe,
    Unsubscribed,
)
from tests.server.helpers import Client, demo_config, server_log

QUESTION = "What is 17*23+4?"


def settings(tmp_path: Path, pace_ms: int = 0) -> Settings:
    return Settings(port=0, agent_config=demo_config(tmp_path, pace_ms), web_root=None)


async def test_unsubscribe_is_answered_and_no_event_follows_the_reply(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path, pace_ms=5)) as gw:
        client = await Client.connect(gw.url)
        await client.reply(await client.start(QUESTION, task_id="calc-1"), Accepted)
        await client.until(lambda: len(client.events["calc-1"]) >= 3)
        rid = client.next_id()
        await client.send(Unsubscribe(id=rid, task_id="calc-1"))
        reply = await client.reply(rid, Unsubscribed)
        assert reply.task_id == "calc-1"
        seen = len(client.events["calc-1"])
        # Unsubscribing from a task this connection does not follow is answered too.
        rid = client.next_id()
        await client.send(Unsubscribe(id=rid, task_id="not-followed"))
        await client.reply(rid, Unsubscribed)
        # A round trip later, still no event of the task arrived after the reply.
        rid = client.next_id()
        await client.send(Ping(id=rid))
        await client.reply(rid, Pong)
        assert len(client.events["calc-1"]) == seen
        await client.close()


async def test_subscribe_past_the_end_tells_the_client_the_task_ended(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        client = await Client.connect(gw.url)
        await client.reply(await client.start(QUESTION, task_id="calc-1"), Accepted)
        await client.until_finished(["calc-1"])
        last = client.events["calc-1"][-1].seq
        rid = client.next_id()
        await client.send(Subscribe(id=rid, task_id="calc-1", after_seq=last))
        reply = await client.reply(rid, Subscribed)
        assert (reply.state, reply.last_seq) == ("completed", last)
        # From the start: the reply, then the whole log again.
        rid = client.next_id()
        client.events["calc-1"].clear()
        await client.send(Subscribe(id=rid, task_id="calc-1"))
        reply = await client.reply(rid, Subscribed)
        assert client.events["calc-1"] == []  # the reply came before the replay
        await client.until_finished(["calc-1"])
        assert [f.seq for f in client.events["calc-1"]] == list(range(1, last + 1))
        await client.close()


async def test_an_idle_socket_with_one_task_sees_single_events(tmp_path: Path) -> None:
    # The demo model at its default pace, one task, a client that reads at once.
    async with serve_in_background(settings(tmp_path, pace_ms=20)) as gw:
        async with websockets.connect(gw.url) as ws:
            await ws.recv()  # hello
            await ws.send(json.dumps({"type": "start", "id": "r1", "input": QUESTION}))
            types = []
            while True:
                frame = json.loads(await ws.recv())
                types.append(frame["type"])
                if frame["type"] == "event" and frame["event"]["kind"] == "task_completed":
                    break
        assert "batch" not in types
        assert types.count("event") > 20


async def test_a_task_id_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        client = await Client.connect(gw.url)
        await client.ws.send(
            json.dumps({"type": "start", "id": "r1", "input": QUESTION, "task_id": "job-1\n"})
        )
        err = await client.reply("r1", ErrorFrame)
        assert err.code == "invalid_field" and err.field == "$.task_id"
        rid = client.next_id()
        await client.send(StatusRequest(id=rid))
        assert (await client.reply(rid, StatusReply)).tasks == []
        await client.close()


async def test_an_empty_input_is_refused_clearly(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        client = await Client.connect(gw.url)
        for rid, text in (("r1", ""), ("r2", "  \n ")):
            await client.ws.send(json.dumps({"type": "start", "id": rid, "input": text}))
            err = await client.reply(rid, ErrorFrame)
            assert err.code == "invalid_field" and err.field == "$.input"
            assert "empty" in err.message
        # The connection stays, and a real task still runs.
        await client.reply(await client.start(QUESTION, task_id="ok"), Accepted)
        await client.until_finished(["ok"])
        assert isinstance(client.events["ok"][-1].event, TaskCompleted)
        await client.close()


async def test_invalid_utf8_in_a_text_frame_is_a_bad_frame_and_the_connection_stays(
    tmp_path: Path,
) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        with server_log() as records:
            async with websockets.connect(gw.url) as ws:
                await ws.recv()  # hello
                await ws.send(b'{"type":"ping","id":"\xff\xfe"}', text=True)
                reply = json.loads(await ws.recv())
                assert reply["type"] == "error" and reply["code"] == "bad_frame", reply
                assert "UTF-8" in reply["message"]
                await ws.send(json.dumps({"type": "ping", "id": "alive"}))
                pong = json.loads(await ws.recv())
                assert (pong["type"], pong["id"]) == ("pong", "alive")
        assert not [r for r in records if r.levelno >= logging.WARNING], records


async def test_an_unknown_subprotocol_is_refused_clearly(tmp_path: Path) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(gw.url, subprotocols=["graphql-ws"]):  # type: ignore[list-item]
                pass
        response = info.value.response
        assert response.status_code == 400
        body = response.body.decode()
        assert "graphql-ws" in body and "ospark.v1.json" in body and "ospark.v1.msgpack" in body
        # Offering one of ours among others still works.
        async with websockets.connect(
            gw.url,
            subprotocols=["graphql-ws", "ospark.v1.msgpack"],  # type: ignore[list-item]
        ) as ws:
            assert ws.subprotocol == "ospark.v1.msgpack"
