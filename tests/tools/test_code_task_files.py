"""Issue 15 end to end: a file uploaded through a real gateway (``POST /files``) and named in
``start`` opens by its path in the code tool's sandbox, with the shipped demo-tools config."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from gateway.client import GatewayClient
from gateway.server import Settings, serve_in_background
from protocol.events import TaskCompleted, ToolCallComplete

TOKEN = "alice-token-0123456789"
DEMO_TOOLS = Path(__file__).resolve().parents[2] / "gateway" / "configs" / "demo-tools.yaml"

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="needs bubblewrap (make sysdeps)"
)


async def test_an_uploaded_file_opens_in_the_code_sandbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The config starts its tool servers with `python`: this interpreter, as `make serve` does.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("OSPARK_DEMO_PACE_MS", "0")
    settings = Settings(
        port=0, agent_config=str(DEMO_TOOLS), web_root=None, tokens={TOKEN: "alice"}
    )
    async with serve_in_background(settings) as gw, GatewayClient(gw.url, token=TOKEN) as alice:
        file_id = await alice.upload(b"north,12\nsouth,30\n", "sales.csv", "text/csv")
        # The upload store's directory is closed to others (the sandbox runs as nobody when
        # the gateway is root): the file still opens at the path the agent is told.
        path = gw.gateway.files.get("alice", file_id).path
        code = f"print(sum(int(line.split(',')[1]) for line in open({str(path)!r})))"
        task = await alice.start(f"run python: {code}", task_id="t1", options={"files": [file_id]})
        terminal = await task.wait()
        (complete,) = [e async for e in task.events() if isinstance(e, ToolCallComplete)]
    assert complete.result == "exit code 0\n--- stdout ---\n42"
    assert isinstance(terminal, TaskCompleted) and terminal.final_answer == "42"
