"""The README's "use the core from Python" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def agent_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## The agent core")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"```python\n(.*?)\n```", agent_section(), flags=re.S)
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    assert "\\boxed{395}" in capsys.readouterr().out


def test_example_configs_are_the_ones_shipped() -> None:
    section = agent_section()
    configs = Path(__file__).resolve().parents[2] / "gateway" / "configs"
    for path in configs.glob("*.yaml"):
        assert path.name in section


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


LAYOUT = Path(__file__).with_name("miroflow_config")


def test_serve_config_on_a_miroflow_directory() -> None:
    """The README's ``ospark serve --config DIR``, run on the test layout: the server starts,
    names the unused keys once in a warning, and answers /healthz."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    (command,) = re.findall(
        r"^ospark serve --config (\S+)$",
        section("Agent configuration (MiroFlow configs)"),
        flags=re.M,
    )
    assert command == "path/to/MiroFlow/config"
    ospark = Path(sys.executable).with_name("ospark")
    env = {**os.environ, "OSPARK_TEST_MCP_SERVER": str(LAYOUT.parent / "mcp_server.py")}
    proc = subprocess.Popen(
        [str(ospark), "serve", "--config", str(LAYOUT), "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[dict[str, object]] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(json.loads(line))
            if lines[-1].get("msg") == "listening":
                break
        url = str(lines[-1]["url"]).replace("ws://", "http://").removesuffix("/ws")
        with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
            assert response.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    warnings = [line for line in lines if "keys understood but not used" in str(line.get("msg"))]
    assert len(warnings) == 1 and "main_agent.llm.top_k" in str(warnings[0]["msg"])
    mapped = [line for line in lines if "MiroFlow tool servers run as" in str(line.get("msg"))]
    assert len(mapped) == 1 and "→ gateway.tools.search" in str(mapped[0]["msg"])
    assert proc.returncode == 0


def test_traces_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"```python\n(.*?)\n```", section("Traces"), flags=re.S)
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert out.startswith("completed 395 ['calculate']")
    assert '"role": "assistant"' in out


async def test_files_example_runs(tmp_path: Path) -> None:
    """The README's curl upload and ``start`` frame against a real server with a token."""
    import asyncio
    import json
    import os
    import shlex

    import websockets

    from gateway.server import Settings, serve_in_background

    text = section("Files")
    (curl,) = re.findall(r"```sh\n(curl .*?)\n#", text, flags=re.S)
    (frame,) = re.findall(r"```json\n(.*?)\n```", text, flags=re.S)
    token = "readme-token-0123456789"
    (tmp_path / "sales.csv").write_text("a,1\nb,2\n")
    settings = Settings(port=0, web_root=None, tokens={token: "reader"})
    async with serve_in_background(settings) as gw:
        command = curl.replace("\\\n", " ").replace("http://127.0.0.1:8000", gw.http_url)
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(command.replace("$TOKEN", token)),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "TOKEN": token},
        )
        out, _ = await proc.communicate()
        uploaded = json.loads(out)
        assert (uploaded["name"], uploaded["content_type"], uploaded["size"]) == (
            "sales.csv",
            "text/csv",
            8,
        )
        start = json.loads(frame.replace("file_3vQ…", uploaded["file_id"]))
        headers = {"Authorization": f"Bearer {token}"}
        async with websockets.connect(gw.url, additional_headers=headers) as ws:
            await ws.recv()  # hello
            await ws.send(json.dumps({**start, "task_id": "readme-files"}))
            kinds: list[str] = []
            while "task_completed" not in kinds and "task_failed" not in kinds:
                message = json.loads(await ws.recv())
                for item in message.get("events", [message]):
                    if item.get("type") == "event":
                        kinds.append(item["event"]["kind"])
        assert kinds[-1] == "task_completed"
        trace = gw.gateway.traces.get("reader", "readme-files")
        assert trace is not None
        assert trace.to_dict()["files"][0]["file_id"] == uploaded["file_id"]
