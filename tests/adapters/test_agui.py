"""The AG-UI adapter, driven by the official ``@ag-ui/client`` HttpAgent (Node) against a real
gateway."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.server import Settings, serve_in_background
from gateway.testing.held import Held
from protocol.events import TaskCancelled
from protocol.frames import EventFrame

NODE_DIR = Path(__file__).parent / "node"
QUESTION = "What is 17*23+4?"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@ag-ui" / "client").is_dir(),
    reason="node and @ag-ui/client (make test installs them with npm ci)",
)


async def _node(*args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "agui_client.mjs"),
        *args,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_http_agent_runs_the_calculator_question() -> None:
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        seen = await _node(f"http://127.0.0.1:{gw.port}/agui", "run", QUESTION)
    assert seen["error"] is None
    types = [e["type"] for e in seen["events"]]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert seen["events"][0]["runId"] == seen["runId"]
    assert seen["result"]["final_answer"] == "395"
    # the calculator call, its arguments and its result, in order
    start = types.index("TOOL_CALL_START")
    assert types[start : start + 4] == [
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
    ]
    call = seen["events"][start]
    assert call["toolCallName"] == "calculator__calculate"
    assert json.loads(seen["events"][start + 1]["delta"]) == {"expression": "17*23+4"}
    assert seen["events"][start + 3]["content"] == "395"
    # reasoning, steps and text
    for kind in ("REASONING_START", "REASONING_MESSAGE_CONTENT", "REASONING_END"):
        assert kind in types
    steps = [e["stepName"] for e in seen["events"] if e["type"] == "STEP_STARTED"]
    assert steps == ["turn 1", "turn 2", "summary"]
    assert types.count("STEP_STARTED") == types.count("STEP_FINISHED")
    assert types.count("TEXT_MESSAGE_START") == types.count("TEXT_MESSAGE_END") >= 1
    # the client built the conversation: the user's question, the answer with \\boxed{395}
    assert seen["messages"][0] == {"role": "user", "content": QUESTION}
    assert any(
        m["role"] == "assistant" and "\\boxed{395}" in (m["content"] or "")
        for m in seen["messages"]
    )


async def test_aborting_the_request_cancels_the_run() -> None:
    held = Held("turn 2")
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=held.runner()
    ) as gw:
        seen = await _node(f"http://127.0.0.1:{gw.port}/agui", "abort", QUESTION)
        types = [e["type"] for e in seen["events"]]
        assert "TOOL_CALL_RESULT" in types and "RUN_FINISHED" not in types
        assert seen["events"][-1]["code"] == "abort"  # the client's own note of its abort
        manager = gw.gateway.manager
        assert manager is not None
        sub = await manager.subscribe("local", seen["runId"])
        last = [item async for item in sub][-1]
        assert isinstance(last, EventFrame) and isinstance(last.event, TaskCancelled)
        status = await manager.status("local", seen["runId"])
        assert status.state == "cancelled"
        assert held.arrivals("summary") == 0  # the work stopped before its summary


async def test_refusals_are_run_errors() -> None:
    settings = Settings(port=0, web_root=None, tokens={"secret": "alice"})
    async with serve_in_background(settings, runner_factory=Held().runner()) as gw:
        url = f"http://127.0.0.1:{gw.port}/agui"
        async with httpx.AsyncClient() as http:
            refused = await http.post(url, json={})
            assert refused.status_code == 401
            assert refused.json()["type"] == "RUN_ERROR"
            auth = {"Authorization": "Bearer secret"}
            bad = await http.post(url, headers=auth, json={"threadId": "t"})
            assert bad.status_code == 400
            assert bad.json()["code"] == "invalid_input"
            assert "runId" in bad.json()["message"] or "run_id" in bad.json()["message"]
