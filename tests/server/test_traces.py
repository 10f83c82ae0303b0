"""``GET /tasks/{id}/trace`` and ``GatewayClient.trace``: a task's trace, for its owner only."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.client import GatewayClient, RequestError
from gateway.server import Settings, serve_in_background
from tests.server.helpers import demo_config

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"


def status_of(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def traced_demo_config(tmp_path: Path) -> Path:
    """The demo config, writing traces to ``tmp_path/traces``."""
    config = Path(demo_config(tmp_path, 0))
    config.write_text(config.read_text() + f"\noutput_dir: {tmp_path / 'traces'}\n")
    return config


async def test_the_owner_gets_the_trace_and_nobody_else(tmp_path: Path) -> None:
    config = traced_demo_config(tmp_path)
    settings = Settings(
        port=0, agent_config=str(config), web_root=None, tokens={ALICE: "alice", BOB: "bob"}
    )
    async with serve_in_background(settings) as gw:
        async with GatewayClient(gw.url, token=ALICE) as alice:
            task = await alice.start("Please research what 17*23+4 is.", task_id="t-1")
            await task.wait()
            trace = await alice.trace("t-1")
            with pytest.raises(RequestError) as info:
                await alice.trace("no-such-task")
            assert info.value.code == "unknown_task"
        async with GatewayClient(gw.url, token=BOB) as bob:
            with pytest.raises(RequestError) as info:
                await bob.trace("t-1")  # Alice's task looks like no task at all
            assert info.value.code == "unknown_task"
        url = f"{gw.http_url}/tasks/t-1/trace"
        assert await asyncio.to_thread(status_of, url, {}) == 401
        assert await asyncio.to_thread(status_of, url, {"Authorization": f"Bearer {ALICE}"}) == 200
    assert (trace["task_id"], trace["status"], trace["final_answer"]) == ("t-1", "completed", "395")
    assert set(trace["agents"]) == {"main", "main/agent-worker#1"}
    worker = trace["agents"]["main/agent-worker#1"]
    assert worker["messages"][0]["role"] == "system"
    tools = [(c["agent"], c["server"], c["tool"]) for c in trace["tool_calls"]]
    assert ("main", "agents", "agent-worker") in tools
    assert ("main/agent-worker#1", "calculator", "calculate") in tools
    calc = next(c for c in trace["tool_calls"] if c["tool"] == "calculate")
    assert calc["result"] == "395" and calc["arguments"]
    assert trace["usage"]["output_tokens"] > 0 and trace["duration_s"] >= 0
    written = json.loads((tmp_path / "traces" / "task_t-1.json").read_text())
    assert written["final_answer"] == "395" and written["agents"].keys() == trace["agents"].keys()
