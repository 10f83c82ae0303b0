"""The example of the README's "Testing your integration" section runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Testing your integration")
    end = text.find("\n## ", start + 1)
    (code,) = re.findall(r"```python\n(.*?)\n```", text[start:end], flags=re.S)
    return str(code)


def test_example_runs_the_agent_against_the_fake_openai_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exec(compile(example(), "README.md", "exec"), {"__name__": "__readme__"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "TaskStarted"
    assert "LlmResponse" in lines
    assert lines[-2] == "TaskCompleted"
    assert lines[-1] == "answer: 42 after 2 requests"
