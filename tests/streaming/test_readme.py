"""The Python examples of the README's "Tasks and streaming" section run as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Tasks and streaming")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    return re.findall(r"```python\n(.*?)\n```", section, flags=re.S)


def test_there_are_two_examples() -> None:
    assert len(examples()) == 2


def test_streaming_example(capsys: pytest.CaptureFixture[str]) -> None:
    code = examples()[0]
    assert len(code.splitlines()) <= 20
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["main", "TaskStarted"]
    assert lines[-2].split() == ["main", "TaskCompleted"]
    assert lines[-1] == "answer: 395"
    assert any(line.startswith("main/agent-worker#1 ") for line in lines)


def test_task_manager_example(capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(examples()[1], "README.md", "exec"), {"__name__": "__readme__"})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 TaskStarted"
    assert lines[-2].endswith(" TaskCompleted")
    assert lines[-1] == "completed"
    assert [int(line.split()[0]) for line in lines[:-1]] == list(range(1, len(lines)))
