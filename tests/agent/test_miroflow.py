"""MiroFlow config directories load as they are: Hydra composition, key mapping, typed env."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

from gateway.agent import AgentConfigError, Orchestrator, ToolEnd, load_agents, load_config
from gateway.streaming import runner_factory
from gateway.testing import Stream, fake_llm_server, openai_stream
from protocol.frames import StartOptions

from .helpers import Recorder

LAYOUT = Path(__file__).with_name("miroflow_config")
AGENTS = sorted(LAYOUT.glob("agent_*.yaml"))
MCP_SERVER = str(Path(__file__).with_name("mcp_server.py"))


@pytest.mark.parametrize("path", AGENTS, ids=lambda p: p.stem)
def test_every_agent_config_of_the_layout_loads(path: Path) -> None:
    config = load_config(path)
    assert config.source == str(path)
    assert config.main_agent.llm.provider in {"openai", "anthropic"}
    assert config.main_agent.tool_config  # every tool name was found in tool/
    for name in config.main_agent.tool_config:
        assert config.tools[name].command == sys.executable  # tool_command: python
    assert "benchmark" in config.unused  # the `benchmark: sample_tasks` group was composed


def test_the_directory_loads_every_agent() -> None:
    default, agents = load_agents(LAYOUT)
    assert sorted(agents) == [p.stem for p in AGENTS]
    assert default == AGENTS[0].stem  # no config.yaml: the first by name
    assert load_config(LAYOUT) == agents[default]


def test_provider_classes_map_onto_our_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_BASE_URL", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    _, agents = load_agents(LAYOUT)
    openrouter = agents["agent_single_openrouter"].main_agent.llm
    assert (openrouter.provider, openrouter.base_url) == ("openai", "https://openrouter.ai/api/v1")
    assert openrouter.api_key is None  # ${oc.env:OPENROUTER_API_KEY,???}: not given
    assert (openrouter.temperature, openrouter.top_p, openrouter.max_tokens) == (0.3, 0.95, 16000)
    claude = agents["agent_multi_anthropic"]
    assert claude.main_agent.llm.provider == "anthropic"
    assert claude.main_agent.llm.base_url == "https://api.anthropic.com"
    assert claude.main_agent.keep_tool_result == 5  # from its llm section
    assert claude.main_agent.sub_agents == ("agent-worker",)
    assert claude.sub_agents["agent-worker"].tool_config == (
        "tool-searching",
        "tool-reading",
        "tool-code",
    )
    thinker = agents["agent_mirothinker"].main_agent.llm
    assert (thinker.provider, thinker.tool_calling) == ("openai", "mirothinker")
    assert (thinker.base_url, thinker.api_key) == ("http://localhost:61005/v1", "dummy_key")
    gpt5 = agents["agent_gpt5"]
    assert gpt5.main_agent.llm.reasoning_effort == "high"
    assert gpt5.sub_agents["agent-worker"].llm.reasoning_effort is None  # not inherited
    assert agents["agent_deepseek_openrouter"].sub_agents == {}  # sub_agents: null
    assert gpt5.output_dir == Path("logs")


def test_unused_keys_are_listed_once_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.agent.config"):
        load_agents(LAYOUT)
    (record,) = [r for r in caplog.records if "keys understood but not used" in r.getMessage()]
    message = record.getMessage()
    for key in (
        "benchmark",
        "data_dir",
        "main_agent.prompt_class",
        "main_agent.input_process",
        "main_agent.output_process",
        "main_agent.add_message_id",
        "main_agent.llm.async_client",
        "main_agent.llm.top_k",
        "main_agent.llm.min_p",
        "main_agent.llm.openrouter_provider",
        "main_agent.llm.disable_cache_control",
        "main_agent.llm.oai_tool_thinking",
        "sub_agents.agent-worker.prompt_class",
    ):
        assert key in message
    assert message.count("main_agent.llm.top_k") == 1


def _copy_layout(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(LAYOUT, target)
    return target


@pytest.mark.parametrize(
    ("find", "replace", "key", "hint"),
    [
        ("  max_turns: 8", "  max_turn: 8", "main_agent.max_turn", "max_turns"),
        ("    top_k: -1", "    top_kk: -1", "main_agent.llm.top_kk", "top_k"),
        (
            '"ClaudeOpenRouterClient"',
            '"ClaudeOpenRoutrClient"',
            "main_agent.llm.provider_class",
            "ClaudeOpenRouterClient",
        ),
        ("output_dir: logs/", "output_dirs: logs/", "output_dirs", "output_dir"),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(
    tmp_path: Path, find: str, replace: str, key: str, hint: str
) -> None:
    path = _copy_layout(tmp_path) / "agent_single_openrouter.yaml"
    path.write_text(path.read_text().replace(find, replace, 1))
    with pytest.raises(AgentConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert f"did you mean {hint!r}" in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_tool_key_is_refused(tmp_path: Path) -> None:
    directory = _copy_layout(tmp_path)
    tool = directory / "tool" / "tool-reading.yaml"
    tool.write_text(tool.read_text().replace("tool_command:", "tool_comand:"))
    with pytest.raises(AgentConfigError, match="did you mean 'tool_command'"):
        load_config(directory / "agent_single_openrouter.yaml")


def test_config_groups_compose_as_in_hydra(tmp_path: Path) -> None:
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "small.yaml").write_text("provider: openai\nmodel_name: small-model\n")
    (tmp_path / "llm" / "large.yaml").write_text("provider: openai\nmodel_name: large-model\n")
    (tmp_path / "agent.yaml").write_text(
        "defaults:\n  - llm: small\n  - _self_\nmain_agent:\n  max_turns: 3\n"
    )
    config = load_config(tmp_path / "agent.yaml")
    assert config.main_agent.llm.model_name == "small-model"
    assert config.main_agent.max_turns == 3
    (tmp_path / "agent.yaml").write_text(
        "defaults:\n  - llm: small\n  - _self_\nllm:\n  model_name: mine\n"
    )
    assert load_config(tmp_path / "agent.yaml").main_agent.llm.model_name == "mine"  # _self_ last


def test_env_defaults_keep_their_type(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHINESE_CONTEXT", "OSPARK_TEST_REMOVE_SNIPPETS", "OSPARK_TEST_SEARCH_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(LAYOUT / "agent_single_openrouter.yaml")
    assert config.chinese_context is False
    env = config.tools["tool-echo"].env
    assert env["REMOVE_SNIPPETS"] == "false"  # the YAML default, not Python's "False"
    assert env["LIMIT"] == "20"
    assert "SEARCH_API_KEY" not in env  # unset, no default: not passed to the tool
    monkeypatch.setenv("CHINESE_CONTEXT", "true")
    monkeypatch.setenv("OSPARK_TEST_REMOVE_SNIPPETS", "True")
    config = load_config(LAYOUT / "agent_single_openrouter.yaml")
    assert config.chinese_context is True  # main_agent.chinese_context as an env string
    assert config.tools["tool-echo"].env["REMOVE_SNIPPETS"] == "True"  # a set value is kept


async def test_a_miroflow_config_runs_end_to_end(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The OpenRouter agent, pointed at a fake server, calls a tool from ``tool/`` whose env
    default reaches the subprocess as written; ``chinese_context`` comes from the env; the
    trace lands in ``output_dir`` (``logs/``, relative to the working directory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OSPARK_TEST_MCP_SERVER", MCP_SERVER)
    monkeypatch.setenv("OPENROUTER_API_KEY", "test-key")
    monkeypatch.setenv("CHINESE_CONTEXT", "true")
    monkeypatch.delenv("OSPARK_TEST_REMOVE_SNIPPETS", raising=False)
    call = ("call_1", "tool-echo__env", json.dumps({"name": "REMOVE_SNIPPETS"}))
    async with fake_llm_server() as server:
        monkeypatch.setenv("OPENROUTER_BASE_URL", server.openai_url)
        server.add(
            Stream(openai_stream(text="Checking.", tool_calls=[call])),
            Stream(openai_stream(text="It is false.")),
            Stream(openai_stream(text="Report. \\boxed{false}")),
        )
        config = load_config(LAYOUT / "agent_single_openrouter.yaml")
        rec = Recorder()
        _, answer = await Orchestrator(config, sink=rec).run_main_agent(
            "What is the flag?", task_id="flag-1"
        )
    assert answer == "false"
    assert (tmp_path / "logs" / "task_flag-1.json").is_file()
    (end,) = rec.of(ToolEnd)
    assert (end.server, end.tool, end.result) == ("tool-echo", "env", "false")
    first = server.requests[0]
    assert first["model"] == "anthropic/claude-sonnet"
    assert server.headers[0]["authorization"] == "Bearer test-key"
    assert "Chinese" in first["messages"][1]["content"]


def test_serve_loads_a_config_directory() -> None:
    """What ``ospark serve --config DIR`` does: every agent of the directory, by name."""
    factory = runner_factory(LAYOUT)
    streaming = factory.__self__  # type: ignore[attr-defined]
    assert streaming.config == load_config(LAYOUT)
    name, config = streaming.resolve(StartOptions(agent="agent_mirothinker"))
    assert (name, config.main_agent.llm.tool_calling) == ("agent_mirothinker", "mirothinker")


def test_broken_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "group.yaml").write_text("defaults:\n  - benchmark: nope\n  - _self_\n")
    with pytest.raises(AgentConfigError, match="Could not find 'benchmark/nope'"):
        load_config(tmp_path / "group.yaml")
    (tmp_path / "syntax.yaml").write_text("main_agent: {max_turns: [\n")
    with pytest.raises(AgentConfigError, match=r"syntax\.yaml.*line 2"):
        load_config(tmp_path / "syntax.yaml")
    with pytest.raises(AgentConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
