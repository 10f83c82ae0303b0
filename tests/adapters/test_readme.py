"""The README's A2A and AG-UI examples, run as written (official clients) against a real
gateway."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest

from gateway.server import Settings, serve_in_background
from gateway.testing.held import Held

README = Path(__file__).resolve().parents[2] / "README.md"
NODE_DIR = Path(__file__).parent / "node"
DOCUMENTED = "http://127.0.0.1:8000"


def _example(section: str, language: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    block = re.search(rf"```{language}\n(.*?)\n```", text[start:], flags=re.S)
    assert block is not None
    assert DOCUMENTED in block.group(1)
    return block.group(1)


async def _run(*argv: str, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_a2a_example() -> None:
    code = _example("A2A", "python")
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        out = await _run(sys.executable, "-c", code.replace(DOCUMENTED, gw.http_url))
    assert out.splitlines() == ["answer: 395"]


@pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@ag-ui" / "client").is_dir(),
    reason="node and @ag-ui/client (make test installs them with npm ci)",
)
async def test_agui_example() -> None:
    code = _example("AG-UI", "js")
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        script = code.replace(DOCUMENTED, gw.http_url)
        out = await _run("node", "--input-type=module", "-e", script, cwd=NODE_DIR)
    assert out.splitlines() == ["[tool] calculator__calculate", "[result] 395", "answer: 395"]
