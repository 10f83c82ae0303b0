"""The README's conversation example runs (in a fresh interpreter, as a user would run it)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split("\n## Conversations, questions and steering\n", 1)[1].split("\n## ", 1)[0]


async def test_the_python_client_example_runs() -> None:
    (code,) = re.findall(r"```python\n(.*?)```", section(), re.S)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=ROOT,
        env={**os.environ, "OSPARK_DEMO_PACE_MS": "0"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[:2] == ["395", "400"]
    assert lines[2] == 'Allow calculator/calculate with {"expression": "6*7"}?'
    assert lines[3] == "42"
