"""Input timeouts in the agent config: ``input_timeout`` and ``on_input_timeout`` (defaults,
validation, and the documented outcome over a real server; a task's own options win)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.agent import AgentConfigError, load_config
from gateway.server import Settings, serve_in_background
from gateway.testing import FrameClient
from protocol import (
    Accepted,
    InputReceived,
    InputRequired,
    StartOptions,
    TaskCompleted,
    TaskFailed,
    ToolCallComplete,
)

ASK = "Please ask me for a number to double"  # the demo model asks a question


def write_config(directory: Path, **top: Any) -> Path:
    lines = ["llm: {provider: demo, model_name: ospark-demo, pace_ms: 0}"]
    lines += [f"{key}: {value}" for key, value in top.items()]
    path = directory / "agent.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_defaults_leave_the_server_s_settings(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert (config.input_timeout, config.on_input_timeout) == (None, None)
    config = load_config(write_config(tmp_path, input_timeout=90, on_input_timeout="fail"))
    assert (config.input_timeout, config.on_input_timeout) == (90.0, "fail")


@pytest.mark.parametrize(
    ("top", "key", "message"),
    [
        ({"input_timeout": 0}, "input_timeout", "must be more than 0 and at most 86400 seconds"),
        ({"input_timeout": -5}, "input_timeout", "more than 0 and at most 86400 seconds, got -5"),
        ({"input_timeout": 100000}, "input_timeout", "at most 86400 seconds, got 100000"),
        ({"input_timeout": "soon"}, "input_timeout", "expected a number, got 'soon'"),
        ({"on_input_timeout": "wait"}, "on_input_timeout", "expected one of fail, continue"),
        ({"on_input_timout": "fail"}, "on_input_timout", "did you mean 'on_input_timeout'?"),
    ],
)
def test_bad_values_are_clear_errors(
    tmp_path: Path, top: dict[str, Any], key: str, message: str
) -> None:
    path = write_config(tmp_path, **top)
    with pytest.raises(AgentConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert message in str(info.value) and str(path) in str(info.value)


def test_a_miroflow_config_takes_them_too(tmp_path: Path) -> None:
    (tmp_path / "agent_x.yaml").write_text(
        "defaults:\n  - _self_\nmain_agent:\n  llm:\n    provider_class: GPT5OpenAIClient\n"
        "    model_name: gpt-5\n    top_k: -1\ninput_timeout: 30\non_input_timeout: fail\n"
    )
    config = load_config(tmp_path / "agent_x.yaml")
    assert (config.input_timeout, config.on_input_timeout) == (30.0, "fail")


async def _run(config: Path, options: StartOptions | None = None) -> list[Any]:
    settings = Settings(port=0, agent_config=str(config), web_root=None)
    async with serve_in_background(settings) as gw:
        client = await FrameClient.connect(gw.url)
        rid = await client.start(ASK, options=options) if options else await client.start(ASK)
        task_id = (await client.reply(rid, Accepted)).task_id
        await client.until_finished([task_id])
        events = [frame.event for frame in client.events[task_id]]
        await client.close()
    return events


@pytest.mark.parametrize("policy", ["fail", "continue"])
async def test_a_short_config_timeout_has_the_documented_outcome(
    tmp_path: Path, policy: str
) -> None:
    """The server's default wait is 300 s: the task ends at once only because the agent config
    says 0.05 s, and then does what ``on_input_timeout`` says."""
    events = await _run(write_config(tmp_path, input_timeout=0.05, on_input_timeout=policy))
    (asked,) = [e for e in events if isinstance(e, InputRequired)]
    (received,) = [e for e in events if isinstance(e, InputReceived)]
    assert received == InputReceived(request_id=asked.request.request_id, timed_out=True)
    final = events[-1]
    if policy == "fail":
        assert isinstance(final, TaskFailed) and final.code == "input_timeout"
        assert "within 0.05s" in final.reason
    else:
        assert isinstance(final, TaskCompleted)
        done = [e.result for e in events if isinstance(e, ToolCallComplete)]
        assert done == ["no answer: nobody answered in time"]


async def test_the_task_s_own_options_win(tmp_path: Path) -> None:
    config = write_config(tmp_path, input_timeout=0.05, on_input_timeout="fail")
    events = await _run(config, StartOptions(on_input_timeout="continue"))
    assert isinstance(events[-1], TaskCompleted)  # the task's policy, the config's timeout


def test_the_readme_example_loads(tmp_path: Path) -> None:
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Agent configuration (MiroFlow configs)\n")
    section = readme[start : readme.index("\n## ", start + 1)]
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "input_" in b]
    (tmp_path / "agent.yaml").write_text(example, encoding="utf-8")
    config = load_config(tmp_path / "agent.yaml")
    assert (config.input_timeout, config.on_input_timeout) == (120.0, "fail")
    assert config.require_approval == ("calculator",)
