"""Configuration: defaults, YAML with env interpolation, overrides, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.agent import AgentConfigError, Orchestrator, default_config, extract_boxed, load_config

CONFIGS = Path(__file__).parents[2] / "gateway" / "configs"


def test_default_config() -> None:
    config = default_config()
    assert config.main_agent.llm.provider == "demo"
    assert config.main_agent.tool_config == ("calculator", "clock")
    assert config.main_agent.sub_agents == ("agent-worker",)
    assert config.sub_agents["agent-worker"].llm.provider == "demo"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.main_agent.llm.provider in {"demo", "openai", "anthropic"}
    assert "agent-worker" in config.sub_agents


def test_env_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MODEL", "gpt-test")
    monkeypatch.setenv("TEST_TURNS", "7")
    path = tmp_path / "c.yaml"
    path.write_text(
        "llm:\n  provider: openai\n  model_name: ${oc.env:TEST_MODEL,x}\n"
        "  api_key: ${oc.env:TEST_UNSET_KEY,null}\n"
        "main_agent:\n  max_turns: ${oc.env:TEST_TURNS,3}\n"
        "tools:\n  - name: tool-x\n    command: python\n    args: [-m, x]\n"
        "    env: {K: \"${oc.env:TEST_MODEL,''}\"}\n"
    )
    config = load_config(path)
    assert config.main_agent.llm.model_name == "gpt-test"
    assert config.main_agent.llm.api_key is None
    assert config.main_agent.max_turns == 7
    assert config.tools["tool-x"].env == {"K": "gpt-test"}


def test_overrides() -> None:
    config = default_config().with_overrides(model="other", max_turns=-1, chinese_context=True)
    assert config.main_agent.llm.model_name == "other"
    assert config.sub_agents["agent-worker"].llm.model_name == "other"  # inherited
    assert config.main_agent.max_turns == -1 and config.chinese_context
    assert default_config().with_overrides(max_turns=None).main_agent.max_turns == 10
    assert load_config(None, ["main_agent.keep_tool_result=2"]).main_agent.keep_tool_result == 2


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"main_agent.max_turns": "many"}, "main_agent.max_turns"),
        ({"main_agent.max_turns": 0}, "main_agent.max_turns"),
        ({"main_agent.tool_config": ["nope"]}, "main_agent.tool_config[0]"),
        ({"main_agent.colour": "red"}, "main_agent.colour"),
        ({"llm.provider": "gpt"}, "main_agent.llm.provider"),
        ({"sub_agents.worker": {}}, "sub_agents.worker"),
        ({"main_agent.sub_agents": ["agent-nope"]}, "main_agent.sub_agents[0]"),
        ({"tools": [{"name": "t"}]}, "tools[0].command"),
        ({"chinese_context": "maybe"}, "chinese_context"),
    ],
)
def test_invalid_config_names_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(AgentConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_missing_env_var_without_default(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("llm:\n  api_key: ${oc.env:SURELY_NOT_SET_ANYWHERE}\n")
    with pytest.raises(AgentConfigError, match="SURELY_NOT_SET_ANYWHERE"):
        load_config(path)


def test_task_guidance() -> None:
    plain = Orchestrator._get_task_guidance(False)
    chinese = Orchestrator._get_task_guidance(True)
    assert "candidate answer" in plain and "Chinese" not in plain
    assert chinese.startswith(plain) and "Chinese" in chinese


def test_extract_boxed() -> None:
    assert extract_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("no box") == ""
    assert extract_boxed("\\boxed{ok} then \\boxed{broken") == "ok"
