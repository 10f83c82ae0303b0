"""The README's wscat session, replayed against a real server with raw JSON text frames."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import websockets

from gateway.connection import ConnectionSettings
from gateway.server import Settings, serve_in_background
from tests.server.helpers import demo_config

README = Path(__file__).resolve().parents[2] / "README.md"


def session_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("### A wscat session")
    block = re.search(r"```text\n(.*?)\n```", text[start:], flags=re.S)
    assert block is not None
    lines = block.group(1).splitlines()
    assert lines[0] == "$ wscat -c ws://127.0.0.1:8000/ws"
    return lines[1:]


def key(frame: dict[str, Any]) -> tuple[object, ...]:
    event = frame.get("event") or {}
    return (frame["type"], frame.get("id"), frame.get("task_id"), event.get("kind"))


def flatten(frame: dict[str, Any]) -> list[dict[str, Any]]:
    return list(frame["events"]) if frame["type"] == "batch" else [frame]


async def test_wscat_session(tmp_path: Path) -> None:
    s = Settings(port=0, agent_config=demo_config(tmp_path, 0), web_root=None)
    s.connection = ConnectionSettings(merge_after=10**9)  # every seq shown, none merged away
    # No subprotocol: what wscat does.
    async with serve_in_background(s) as gw, websockets.connect(gw.url) as ws:
        pending: list[dict[str, Any]] = []
        for line in session_lines():
            direction, payload = line[:2], line[2:]
            if direction == "> ":
                await ws.send(payload)
                continue
            assert direction == "< ", line
            expected = json.loads(payload)
            while True:
                if not pending:
                    pending = flatten(json.loads(await ws.recv()))
                got = pending.pop(0)
                if key(got) == key(expected):
                    break
                # Only events may be elided from the README's transcript.
                assert got["type"] == "event", (got, expected)
            if expected["type"] == "event":
                assert got["seq"] == expected["seq"], (got, expected)
            if expected["type"] == "event" and expected["event"]["kind"] == "task_completed":
                assert got["event"]["final_answer"] == expected["event"]["final_answer"]
            if expected["type"] == "status":
                assert got["tasks"][0]["state"] == expected["tasks"][0]["state"]
                assert got["tasks"][0]["last_seq"] == expected["tasks"][0]["last_seq"]
            if expected["type"] == "subscribed":
                assert (got["state"], got["last_seq"]) == (expected["state"], expected["last_seq"])
            if expected["type"] == "cancel_ack":
                assert got["result"] == expected["result"]
