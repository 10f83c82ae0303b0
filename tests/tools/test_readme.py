"""The README's "Tools" section: its examples run as written, its table names every tool."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from gateway.agent.__main__ import main as agent_main

from .support import tool_client

ROOT = Path(__file__).resolve().parents[2]
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


def tools_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Tools")
    return text[start : text.index("\n## ", start + 1)]


@needs_bwrap
def test_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    (code,) = re.findall(r"```python\n(.*?)\n```", tools_section(), flags=re.S)
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out == "exit code 0\n--- stdout ---\n42\n"


@needs_bwrap
def test_command_line_example_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (line,) = re.findall(r"^python -m gateway\.agent .*$", tools_section(), flags=re.M)
    argv = shlex.split(line)[3:]
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    assert agent_main([*argv, "--set", "llm.pace_ms=0"]) == 0
    out = capsys.readouterr().out
    assert "code/run_python_code" in out and "Final answer: 1024" in out


async def test_the_table_lists_every_tool_of_every_server() -> None:
    section = tools_section()
    for name in ("search", "reading", "code", "reasoning"):
        async with tool_client(name) as client:
            for tool in (await client.list_tools()).tools:
                assert f"`{tool.name}(" in section, (name, tool.name)
