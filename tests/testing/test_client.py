"""FrameClient of gateway.testing against a real gateway on the demo model."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.server import Settings, serve_in_background
from gateway.testing import FrameClient, write_demo_config
from protocol import (
    JSON,
    MSGPACK,
    Accepted,
    CancelAck,
    Codec,
    Ping,
    Pong,
    TaskCancelled,
    TaskCompleted,
)


@pytest.mark.parametrize("codec", [JSON, MSGPACK], ids=["json", "msgpack"])
async def test_start_reply_events_and_cancel(tmp_path: Path, codec: Codec) -> None:
    settings = Settings(port=0, agent_config=write_demo_config(tmp_path, 0), web_root=None)
    async with (
        serve_in_background(settings) as gw,
        await FrameClient.connect(gw.url, codec=codec) as client,
    ):
        assert client.hello is not None
        accepted = await client.reply(await client.start("What is 17*23+4?", task_id="a"), Accepted)
        assert accepted.task_id == "a"
        await client.until_finished(["a"])
        frames = client.events["a"]
        assert [f.seq for f in frames] == list(range(1, len(frames) + 1))
        last = frames[-1].event
        assert isinstance(last, TaskCompleted) and last.final_answer == "395"

        ping = client.next_id()
        await client.send(Ping(id=ping))
        assert isinstance(await client.reply(ping), Pong)
        with pytest.raises(AssertionError, match="expected Accepted"):
            await client.reply(await client.cancel("nope"), Accepted)
        (ack,) = [f for f in client.others if isinstance(f, CancelAck)]
        assert ack.result == "unknown"


async def test_cancel_a_running_task(tmp_path: Path) -> None:
    settings = Settings(port=0, agent_config=write_demo_config(tmp_path, 1000), web_root=None)
    async with (
        serve_in_background(settings) as gw,
        await FrameClient.connect(gw.url) as client,
    ):
        await client.reply(await client.start("What is 17*23+4?", task_id="slow"), Accepted)
        await client.until(lambda: len(client.events["slow"]) >= 1)
        ack = await client.reply(await client.cancel("slow"), CancelAck)
        assert ack.result == "accepted"
        await client.until_finished(["slow"])
        assert isinstance(client.events["slow"][-1].event, TaskCancelled)
