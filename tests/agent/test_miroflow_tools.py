"""MiroFlow's own tool server modules (``src.tool.mcp_servers.*``) run as the gateway's."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.agent import Orchestrator, ToolEnd, load_agents, load_config
from gateway.testing import Stream, fake_llm_server, openai_stream
from tests.tools.support import fake_service

from .helpers import Recorder

LAYOUT = Path(__file__).with_name("miroflow_config")
AGENT = LAYOUT / "agent_tools_openrouter.yaml"
KEYS = (
    "OPENROUTER_API_KEY",
    "OPENROUTER_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_MODEL_NAME",
    "REASONING_MODEL_NAME",
    "REASONING_API_KEY",
    "REASONING_BASE_URL",
    "SERPER_API_KEY",
    "SERPER_BASE_URL",
    "JINA_API_KEY",
    "JINA_BASE_URL",
    "E2B_API_KEY",
    "REMOVE_SNIPPETS",
    "REMOVE_ANSWER_BOX",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)


def test_miroflow_modules_become_ours_with_their_env_mapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "or-key")
    monkeypatch.setenv("SERPER_API_KEY", "serper-key")
    config = load_config(AGENT)
    tools = config.tools
    for name, module in (
        ("tool-searching", "gateway.tools.search"),
        ("tool-reading", "gateway.tools.reading"),
        ("tool-code", "gateway.tools.code"),
        ("tool-reasoning", "gateway.tools.reasoning"),
        ("tool-reasoning-os", "gateway.tools.reasoning"),
    ):
        assert (tools[name].command, tools[name].args) == (sys.executable, ("-m", module))
    assert dict(tools["tool-searching"].env) == {
        "SERPER_API_KEY": "serper-key",
        "SERPER_BASE_URL": "https://google.serper.dev",
        "JINA_BASE_URL": "https://r.jina.ai",  # JINA_API_KEY unset: not passed
        "REMOVE_SNIPPETS": "false",
        "REMOVE_ANSWER_BOX": "false",
    }
    assert dict(tools["tool-reading"].env) == {}  # its SERPER/JINA keys are not used by ours
    assert dict(tools["tool-code"].env) == {
        "OSPARK_E2B_TEMPLATE": "my-template",
        "OSPARK_E2B_SANDBOX_TIMEOUT_S": "900",
    }  # E2B_API_KEY unset: not passed, so the local sandbox; LOGS_DIR dropped
    assert dict(tools["tool-reasoning"].env) == {
        "OSPARK_REASONING_PROVIDER": "openai",
        "OSPARK_REASONING_MODEL": "some/thinking-model",
        "OSPARK_REASONING_API_KEY": "or-key",
        "OSPARK_REASONING_BASE_URL": "https://openrouter.ai/api/v1",
    }
    assert dict(tools["tool-reasoning-os"].env) == {
        "OSPARK_REASONING_PROVIDER": "openai",
        "OSPARK_REASONING_MODEL": "local-thinker",
        "OSPARK_REASONING_API_KEY": "local-key",
        "OSPARK_REASONING_BASE_URL": "http://localhost:8001/v1",  # the chat URL's base
    }
    # No equivalent of MiroFlow's vision server: left out, for every agent that names it.
    assert "tool-image-video" not in tools
    assert config.main_agent.tool_config == (
        "tool-searching",
        "tool-reading",
        "tool-code",
        "tool-reasoning",
    )
    assert config.sub_agents["agent-worker"].tool_config == ("tool-reasoning-os",)


def test_reasoning_falls_back_to_anthropic_as_in_miroflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "an-key")
    env = dict(load_config(AGENT).tools["tool-reasoning"].env)
    assert env == {
        "OSPARK_REASONING_PROVIDER": "anthropic",
        "OSPARK_REASONING_MODEL": "some-claude",
        "OSPARK_REASONING_API_KEY": "an-key",
    }


def test_each_mapping_is_listed_once_in_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERPER_API_KEY", "serper-key")
    monkeypatch.setenv("JINA_API_KEY", "jina-key")
    with caplog.at_level(logging.WARNING, logger="gateway.agent.config"):
        load_agents(LAYOUT)
    (record,) = [r for r in caplog.records if "MiroFlow tool servers" in r.getMessage()]
    message = record.getMessage()
    # tool-reading and tool-searching are used by four agents: each mapping is named once.
    for line in (
        "tool-searching: src.tool.mcp_servers.searching_mcp_server → gateway.tools.search",
        "tool-reading: src.tool.mcp_servers.reading_mcp_server → gateway.tools.reading "
        "(env not used: JINA_API_KEY, SERPER_API_KEY)",
        "tool-code: src.tool.mcp_servers.python_server → gateway.tools.code (env "
        "DEFAULT_TEMPLATE_ID → OSPARK_E2B_TEMPLATE, DEFAULT_TIMEOUT → "
        "OSPARK_E2B_SANDBOX_TIMEOUT_S; env not used: LOGS_DIR; tools not here: create_sandbox",
        "tool-reasoning: src.tool.mcp_servers.reasoning_mcp_server → gateway.tools.reasoning",
        "OPENAI_MODEL_NAME → OSPARK_REASONING_MODEL",
        "tool-image-video (src.tool.mcp_servers.vision_mcp_server): left out, no equivalent here",
    ):
        assert message.count(line) == 1, (line, message)
    assert "tools not here: wiki_get_page_content" in message


def test_a_full_interpreter_path_runs_miroflow_s_own_server(tmp_path: Path) -> None:
    """The escape hatch: with its interpreter named by path, a MiroFlow checkout's server is
    run as it is."""
    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "tool-audio.yaml").write_text(
        'name: tool-audio\ntool_command: /opt/miroflow/bin/python\nargs: ["-m", '
        '"src.tool.mcp_servers.audio_mcp_server"]\nenv: {OPENAI_API_KEY: x}\n'
    )
    (tmp_path / "agent.yaml").write_text("main_agent:\n  tool_config: [tool-audio]\n")
    config = load_config(tmp_path / "agent.yaml")
    audio = config.tools["tool-audio"]
    assert (audio.command, audio.args) == (
        "/opt/miroflow/bin/python",
        ("-m", "src.tool.mcp_servers.audio_mcp_server"),
    )
    assert dict(audio.env) == {"OPENAI_API_KEY": "x"}
    assert config.tool_mapping == ()


def test_our_own_format_maps_miroflow_modules_too(tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text(
        "tools:\n"
        "  - {name: web, command: python, env: {SERPER_API_KEY: k},\n"
        "     args: [-m, src.tool.mcp_servers.miroapi_serper_mcp_server]}\n"
        "  - {name: eyes, command: python3,\n"
        "     args: [-m, src.tool.mcp_servers.vision_mcp_server_os]}\n"
        "main_agent:\n  tool_config: [calculator, web, eyes]\n"
    )
    config = load_config(tmp_path / "agent.yaml")
    assert config.tools["web"].args == ("-m", "gateway.tools.search")
    assert dict(config.tools["web"].env) == {"SERPER_API_KEY": "k"}
    assert "eyes" not in config.tools
    assert config.main_agent.tool_config == ("calculator", "web")
    assert config.tool_mapping == (
        "web: src.tool.mcp_servers.miroapi_serper_mcp_server → gateway.tools.search",
        "eyes (src.tool.mcp_servers.vision_mcp_server_os): left out, no equivalent here",
    )


def _serper(request: Request, body: bytes) -> Response:
    if request.headers.get("x-api-key") != "serper-key":
        return JSONResponse({"message": "Unauthorized."}, status_code=403)
    query = json.loads(body)["q"]
    return JSONResponse(
        {
            "answerBox": {"answer": "hidden by REMOVE_ANSWER_BOX"},
            "organic": [{"title": f"About {query}", "link": "https://example.org/1"}],
        }
    )


async def test_the_agent_calls_our_servers_through_a_miroflow_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The MiroFlow-shaped agent (OpenRouter, fake server on loopback) calls the four servers
    its ``tool/`` files name as MiroFlow modules: search against a fake Serper, reading a file,
    code in the local sandbox, reasoning through the (fake) model its env names."""
    monkeypatch.chdir(tmp_path)  # the reading tool's root, and where the trace goes
    (tmp_path / "notes.txt").write_text("The secret number is 41.\n")
    monkeypatch.setenv("OPENROUTER_API_KEY", "or-key")
    monkeypatch.setenv("SERPER_API_KEY", "serper-key")
    monkeypatch.setenv("REMOVE_ANSWER_BOX", "true")
    monkeypatch.setenv("REASONING_MODEL_NAME", "fake/thinker")
    calls = [
        ("c1", "tool-searching__google_search", json.dumps({"q": "ospark"})),
        ("c2", "tool-reading__read_file", json.dumps({"uri": str(tmp_path / "notes.txt")})),
        ("c3", "tool-code__run_python_code", json.dumps({"code_block": "print(41 + 1)"})),
        ("c4", "tool-reasoning__reasoning", json.dumps({"question": "Is 42 even?"})),
    ]
    async with fake_service() as serper, fake_llm_server() as llm:
        monkeypatch.setenv("SERPER_BASE_URL", serper.url)
        monkeypatch.setenv("OPENROUTER_BASE_URL", llm.openai_url)
        serper.routes = {"/search": _serper}
        llm.add(
            Stream(openai_stream(text="Using every tool.", tool_calls=calls)),
            Stream(openai_stream(text="Yes, 42 is even.")),  # the reasoning tool's model
            Stream(openai_stream(text="All done.")),
            Stream(openai_stream(text="Report. \\boxed{42}")),
        )
        config = load_config(AGENT)
        rec = Recorder()
        _, answer = await Orchestrator(config, sink=rec).run_main_agent(
            "Use the tools.", task_id="tools-1"
        )
    assert answer == "42"
    results = {(e.server, e.tool): (e.result, e.error) for e in rec.of(ToolEnd)}
    search, error = results[("tool-searching", "google_search")]
    assert error is None and "1. About ospark" in search and "hidden" not in search
    notes, error = results[("tool-reading", "read_file")]
    assert error is None and "The secret number is 41." in notes
    code, error = results[("tool-code", "run_python_code")]
    assert error is None and code.startswith("exit code 0") and "42" in code
    reasoning, error = results[("tool-reasoning", "reasoning")]
    assert (reasoning, error) == ("Yes, 42 is even.", None)
    thinker = llm.requests[1]
    assert thinker["model"] == "fake/thinker"  # REASONING_MODEL_NAME via OPENAI_MODEL_NAME
    assert llm.headers[1]["authorization"] == "Bearer or-key"
    assert serper.requests[0][2]["x-api-key"] == "serper-key"
