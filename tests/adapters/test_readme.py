"""The README's A2A and AG-UI examples, run as written (official clients) against a real
gateway."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.server import Settings, serve_in_background
from gateway.testing.held import Held

README = Path(__file__).resolve().parents[2] / "README.md"
NODE_DIR = Path(__file__).parent / "node"
DOCUMENTED = "http://127.0.0.1:8000"


def _examples(section: str, language: str) -> list[str]:
    """The section's code blocks in ``language`` (a block inside a list item dedented)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(rf"^( *)```{language}\n(.*?)\n\1```", text[start:end], flags=re.S | re.M)
    assert blocks
    for _, block in blocks:
        assert DOCUMENTED in block
    return [textwrap.dedent(block) for _, block in blocks]


async def _run(*argv: str, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


A2A_PRINTS = [
    ["answer: 395"],
    ["asked: Which number should I use?", "answer: 42", "answer: 47"],
]


async def test_a2a_examples() -> None:
    examples = _examples("A2A", "python")
    assert len(examples) == len(A2A_PRINTS)
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        for code, prints in zip(examples, A2A_PRINTS, strict=True):
            out = await _run(sys.executable, "-c", code.replace(DOCUMENTED, gw.http_url))
            assert out.splitlines() == prints


AGUI_PRINTS = [
    ["[tool] calculator__calculate", "[result] 395", "answer: 395"],
    ["asked: Which number should I use?", "answer: 42", "answer: 47"],
]


@pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@ag-ui" / "client").is_dir(),
    reason="node and @ag-ui/client (make test installs them with npm ci)",
)
async def test_agui_examples() -> None:
    examples = _examples("AG-UI", "js")
    assert len(examples) == len(AGUI_PRINTS)
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        for code, prints in zip(examples, AGUI_PRINTS, strict=True):
            script = code.replace(DOCUMENTED, gw.http_url)
            out = await _run("node", "--input-type=module", "-e", script, cwd=NODE_DIR)
            assert out.splitlines() == prints
