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
