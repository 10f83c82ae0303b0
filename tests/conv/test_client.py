"""The Python client's conversation API against a real gateway (demo model, real sockets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.client import GatewayClient, RequestError
from gateway.server import Settings, serve_in_background
from protocol import InputReceived, InputRequired, TaskCompleted, UserMessage
from tests.server.helpers import demo_config


def settings(tmp_path: Path) -> Settings:
    return Settings(port=0, agent_config=demo_config(tmp_path, 0), web_root=None)


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
async def test_respond_steer_and_list(tmp_path: Path, encoding: str) -> None:
    async with serve_in_background(settings(tmp_path)) as gw:
        client = GatewayClient(gw.url, encoding=encoding)  # type: ignore[arg-type]
        other = GatewayClient(gw.url, encoding=encoding)  # type: ignore[arg-type]
        async with client, other:
            chat = client.thread("chat-9")
            task = await chat.ask("Please ask me for a number to double")
            async for event in task.events():
                if isinstance(event, InputRequired):
                    break
            assert task.state == "input_required" and task.pending_input is not None
            assert task.pending_input.kind == "question"
            asked = task.pending_input.request_id
            message_id = await task.send_message("thanks")
            seen = await other.attach(task.task_id)
            async for event in seen.events():  # the replay shows what is waited for
                if isinstance(event, InputRequired):
                    break
            await seen.respond("8")  # the owner's other connection answers first
            with pytest.raises(RequestError) as late:
                await task.respond("9", request_id=asked)
            assert late.value.code == "already_answered"
            result = await task.wait()
            assert isinstance(result, TaskCompleted) and result.final_answer == "16"
            assert task.pending_input is None and task.state == "completed"
            kinds = {type(e) for e in [f.event for f in task._frames]}
            assert {InputReceived, UserMessage} <= kinds
            shown = [e async for e in task.events() if isinstance(e, UserMessage)]
            assert [(m.text, m.message_id) for m in shown] == [("thanks", message_id)]
            with pytest.raises(RequestError) as finished:
                await task.send_message("more")
            assert finished.value.code == "task_finished"

            (listed,) = await client.threads()
            assert listed.thread_id == "chat-9" and listed.task_count == 1
            (turn,) = await chat.tasks()
            assert (turn.task_id, turn.state, turn.final_answer) == (
                task.task_id,
                "completed",
                "16",
            )
            with pytest.raises(RequestError) as unknown:
                await client.thread_tasks("nope")
            assert unknown.value.code == "unknown_thread"
