"""Agent configuration: MiroFlow's YAML, composed with Hydra, validated into dataclasses.

:func:`load_config` takes a YAML file, composed with Hydra from its directory (so a MiroFlow
config directory's ``defaults:`` lists and config groups work as in MiroFlow), or a directory
(its default agent; :func:`load_agents` gives all of them). MiroFlow's own keys are mapped onto
ours by :mod:`gateway.agent.miroflow`, which also lists the keys we understand but do not use
(logged once, as a warning, per load) and refuses unknown keys with a did-you-mean suggestion.

Our format (every key optional; see ``gateway/configs/*.yaml``)::

    chinese_context: false          # add the Chinese-language task guidance
    max_depth: 3                    # how deep sub-agents may nest
    llm:                            # defaults shared by every agent's ``llm``
      provider: demo                # demo | openai | anthropic
      model_name: ospark-demo
    tools:                          # stdio MCP servers, MiroFlow's tool_config entries
      - name: tool-search
        command: python
        args: [-m, my_search_server]
        env: {API_KEY: "${oc.env:SEARCH_KEY,''}"}
        timeout_s: 60               # per-call deadline
    main_agent:
      llm: {provider: openai, model_name: gpt-4.1, api_key: "${oc.env:OPENAI_API_KEY,null}"}
      tool_config: [calculator, clock, tool-search]   # built-ins need no ``tools`` entry
      max_turns: 20                 # -1 = unlimited
      max_tool_calls_per_turn: 5
      keep_tool_result: -1          # keep only the last N tool results in the prompt; -1 = all
      sub_agents: [agent-worker]    # which sub-agents this agent may call (default: all)
    sub_agents:
      agent-worker:                 # names start with ``agent-``
        tool_config: [calculator]
        max_turns: 10
    output_dir: traces/             # write every task's trace there as JSON (default: nowhere)
    require_approval: [calculator]  # tool calls that wait for a person's approval
    input_timeout: 120              # seconds a question or approval waits (default: the server's)
    on_input_timeout: continue      # then: continue with "no answer", or fail (default: server's)

An agent's ``llm`` is merged over the top-level ``llm`` (and a sub-agent's over the main agent's),
so overriding the main agent's model also changes the sub-agents that do not name their own.
Any error names the offending key:
``AgentConfigError("main_agent.max_turns: expected an integer")``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from . import miroflow
from .errors import AgentConfigError

log = logging.getLogger("gateway.agent.config")

BUILTIN_TOOLS = ("calculator", "clock")
PROVIDERS = ("demo", "openai", "anthropic")
TOOL_CALLING = ("native", "mirothinker")
InputTimeoutPolicy = Literal["fail", "continue"]
INPUT_TIMEOUT_POLICIES: tuple[InputTimeoutPolicy, ...] = ("fail", "continue")
MAX_INPUT_TIMEOUT = 86_400.0
"""The longest ``input_timeout`` (a day, as for a task's own ``options.input_timeout``)."""

#: Short names accepted by :meth:`AgentConfig.with_overrides` and :func:`load_config`.
OVERRIDE_ALIASES = {
    "model": "main_agent.llm.model_name",
    "model_name": "main_agent.llm.model_name",
    "provider": "main_agent.llm.provider",
    "max_turns": "main_agent.max_turns",
    "chinese_context": "chinese_context",
}

_DEFAULT: dict[str, Any] = {
    "chinese_context": False,
    "max_depth": 3,
    "llm": {"provider": "demo", "model_name": "ospark-demo"},
    "tools": [],
    "main_agent": {
        "tool_config": ["calculator", "clock"],
        "max_turns": 10,
        "max_tool_calls_per_turn": 5,
        "keep_tool_result": -1,
    },
    "sub_agents": {
        "agent-worker": {"tool_config": ["calculator", "clock"], "max_turns": 5},
    },
}


@dataclass(frozen=True, slots=True)
class LLMConfig:
    """One agent's model. ``pace_ms`` only affects the demo provider (0 = never sleep)."""

    provider: str = "demo"
    model_name: str = "ospark-demo"
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int = 4096
    base_url: str | None = None
    api_key: str | None = None
    timeout_s: float = 600.0
    max_retries: int = 3
    retry_backoff_s: float = 1.0
    thinking_budget: int = 0
    pace_ms: float = 20.0
    strict_response_validation: bool = False
    tool_calling: str = "native"
    """``native``: the API's tool calling; ``mirothinker``: tools described in the system
    prompt and called with ``<use_mcp_tool>`` blocks in the text (MiroThinker models)."""
    reasoning_effort: str | None = None
    """OpenAI reasoning models' ``reasoning_effort`` (``low``, ``medium``, ``high``)."""


@dataclass(frozen=True, slots=True)
class ToolServerConfig:
    """An MCP server: a built-in one (``builtin`` set) or a stdio command."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 60.0
    builtin: str | None = None


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent (main or sub): its model, its tools and its limits."""

    name: str
    llm: LLMConfig
    tool_config: tuple[str, ...] = ()
    max_turns: int = 10
    max_tool_calls_per_turn: int = 5
    keep_tool_result: int = -1
    sub_agents: tuple[str, ...] = ()
    tool_blacklist: frozenset[tuple[str, str]] = frozenset()
    """``(server, tool)`` pairs never offered to this agent (MiroFlow's ``tool_blacklist``)."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole validated configuration (see :func:`load_config`, :func:`default_config`)."""

    main_agent: AgentSpec
    sub_agents: Mapping[str, AgentSpec]
    tools: Mapping[str, ToolServerConfig]
    chinese_context: bool = False
    max_depth: int = 3
    require_approval: tuple[str, ...] = ()
    """Tool calls that wait for a person's approval: server names, tool names,
    ``server/tool``, or ``*`` (asked only when the run has someone to ask)."""
    output_dir: Path | None = None
    """Where each task's trace is written as ``<task_id>.json`` (``None``: not written)."""
    input_timeout: float | None = None
    """Seconds a question or approval of this agent's tasks waits for an answer, unless the
    task says otherwise (``None``: the server's ``TaskManagerConfig.input_timeout``)."""
    on_input_timeout: InputTimeoutPolicy | None = None
    """What a timed-out wait does, unless the task says otherwise: ``continue`` with "no
    answer" or ``fail`` the task with code ``input_timeout`` (``None``: the server's)."""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    unused: tuple[str, ...] = field(default=(), compare=False)
    """MiroFlow keys of the loaded file that we understand but do not use."""
    tool_mapping: tuple[str, ...] = field(default=(), compare=False)
    """MiroFlow tool servers (``src.tool.mcp_servers.*``) run as ours, or left out."""
    source: str = field(default="", compare=False)
    """The file this configuration was loaded from (``""``: built in)."""

    def with_overrides(
        self, overrides: Mapping[str, Any] | Sequence[str] | None = None, **options: Any
    ) -> AgentConfig:
        """A copy with some values replaced, validated like a loaded file.

        ``overrides`` holds dotted keys (``{"main_agent.max_turns": 3}``) or a dotlist
        (``["main_agent.max_turns=3"]``); ``options`` takes the short per-task names the gateway
        passes: ``model`` / ``model_name``, ``provider``, ``max_turns``, ``chinese_context``.
        ``None`` values are ignored.
        """
        merged = _apply_overrides(copy.deepcopy(dict(self.raw)), overrides)
        merged = _apply_overrides(merged, {k: v for k, v in options.items() if v is not None})
        return replace(
            _build(merged), unused=self.unused, tool_mapping=self.tool_mapping, source=self.source
        )


def default_config() -> AgentConfig:
    """The built-in configuration: the offline demo model, calculator, clock, ``agent-worker``."""
    return _build(copy.deepcopy(_DEFAULT))


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None
) -> AgentConfig:
    """Load an agent config (``None``: the built-in default) and apply ``overrides``.

    ``path`` is a YAML file, composed with Hydra from its directory, or a config directory
    (its default agent, see :func:`load_agents`). ``${oc.env:VAR,default}`` interpolations are
    resolved with their defaults' YAML types. Raises :class:`AgentConfigError` naming the bad
    key; logs the keys understood but not used once, as a warning.
    """
    if path is None:
        return _build(_apply_overrides(copy.deepcopy(_DEFAULT), overrides))
    path = Path(path)
    if path.is_dir():
        default, agents = load_agents(path, overrides)
        return agents[default]
    if not path.is_file():
        raise AgentConfigError("", f"config file not found: {path}")
    (config,) = _load_files(path.parent, [path], overrides).values()
    _warn_unused(str(path), config.unused)
    _warn_mapped(str(path), config.tool_mapping)
    return config


def load_agents(
    directory: str | Path, overrides: Mapping[str, Any] | Sequence[str] | None = None
) -> tuple[str, dict[str, AgentConfig]]:
    """Every agent config at the top level of a (MiroFlow) config directory, by file stem.

    Returns ``(default name, {name: config})``; the default is ``config`` when the directory
    has a ``config.yaml`` (MiroFlow's default config name), else the first name in sorted order.
    Sub-directories are Hydra config groups (``benchmark/``, ``llm/``, …) and ``tool/`` holds
    the tool definitions that ``tool_config`` names.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.glob("*.yaml") if p.is_file())
    files += sorted(p for p in directory.glob("*.yml") if p.is_file())
    if not files:
        raise AgentConfigError("", f"{directory}: no agent config (*.yaml) at its top level")
    agents = _load_files(directory, files, overrides)
    unused = sorted({key for config in agents.values() for key in config.unused})
    _warn_unused(str(directory), tuple(unused))
    mapped = dict.fromkeys(note for config in agents.values() for note in config.tool_mapping)
    _warn_mapped(str(directory), tuple(mapped))
    default = "config" if "config" in agents else next(iter(agents))
    return default, agents


def _load_files(
    directory: Path, files: Sequence[Path], overrides: Mapping[str, Any] | Sequence[str] | None
) -> dict[str, AgentConfig]:
    composed = miroflow.compose(directory, [p.stem for p in files])
    tool_dir = directory / "tool"
    agents: dict[str, AgentConfig] = {}
    for path in files:
        try:
            data = miroflow.typed_container(composed[path.stem], "", miroflow.in_env)
            normal = miroflow.normalise(data, tool_dir if tool_dir.is_dir() else None)
            config = _build(_apply_overrides(normal.raw, overrides))
        except AgentConfigError as exc:
            raise AgentConfigError(exc.key, f"{exc.detail} (in {path})") from None
        agents[path.stem] = replace(
            config,
            unused=tuple(normal.unused),
            tool_mapping=tuple(normal.mapped),
            source=str(path),
        )
    return agents


def _warn_unused(source: str, unused: Sequence[str]) -> None:
    if unused:
        log.warning(
            "%s: keys understood but not used by this gateway: %s", source, ", ".join(unused)
        )


def _warn_mapped(source: str, mapped: Sequence[str]) -> None:
    if mapped:
        log.warning(
            "%s: MiroFlow tool servers run as the gateway's own: %s", source, "; ".join(mapped)
        )


def _apply_overrides(
    raw: dict[str, Any], overrides: Mapping[str, Any] | Sequence[str] | None
) -> dict[str, Any]:
    if not overrides:
        return raw
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for entry in overrides:
            key, sep, value = str(entry).partition("=")
            if not sep:
                raise AgentConfigError(key, "an override must look like key=value")
            items.append((key, yaml.safe_load(value) if value else value))
    for key, value in items:
        path = OVERRIDE_ALIASES.get(key, key)
        node: dict[str, Any] = raw
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


# --- validation ------------------------------------------------------------------------------

_TOP_KEYS = miroflow.TOP_KEYS
_AGENT_KEYS = miroflow.AGENT_KEYS
_TOOL_KEYS = miroflow.TOOL_KEYS


def _check_keys(data: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            full = f"{where}.{key}" if where else str(key)
            raise AgentConfigError(
                full, f"unknown key {key!r}{miroflow.did_you_mean(str(key), allowed)}"
            )


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AgentConfigError(key, f"expected a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def _decode(value: Any) -> Any:
    """Environment interpolations give strings: read ``"20"``, ``"0.5"``, ``"true"`` as YAML."""
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _int(value: Any, key: str, minimum: int | None = None) -> int:
    value = _decode(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AgentConfigError(key, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise AgentConfigError(key, f"must be at least {minimum}, got {value}")
    return value


def _limit(value: Any, key: str) -> int:
    """An integer limit where -1 means unlimited."""
    number = _int(value, key)
    if number < -1 or number == 0:
        raise AgentConfigError(key, f"must be a positive integer or -1 (unlimited), got {number}")
    return number


def _float(value: Any, key: str, minimum: float = 0.0) -> float:
    value = _decode(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AgentConfigError(key, f"expected a number, got {value!r}")
    if value < minimum:
        raise AgentConfigError(key, f"must be at least {minimum}, got {value}")
    return float(value)


def _bool(value: Any, key: str) -> bool:
    value = _decode(value)
    if not isinstance(value, bool):
        raise AgentConfigError(key, f"expected true or false, got {value!r}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise AgentConfigError(key, f"expected a non-empty string, got {value!r}")
    return value


def _opt_str(value: Any, key: str) -> str | None:
    # Empty strings come from ``${oc.env:VAR,''}`` with the variable unset, ``???`` is MiroFlow's
    # "required, not given": treat both as absent.
    if value is None or value == "" or value == "???":
        return None
    return _str(value, key)


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise AgentConfigError(key, f"expected a list of strings, got {value!r}")
    return tuple(_str(item, f"{key}[{i}]") for i, item in enumerate(value))


def _llm(data: Mapping[str, Any], key: str) -> LLMConfig:
    _check_keys(data, miroflow.LLM_KEYS, key)
    provider = _str(data.get("provider", "demo"), f"{key}.provider")
    if provider not in PROVIDERS:
        raise AgentConfigError(
            f"{key}.provider",
            f"unknown provider {provider!r} (expected one of: {', '.join(PROVIDERS)})",
        )
    d = LLMConfig()

    def opt_float(name: str, minimum: float = 0.0) -> float | None:
        value = data.get(name)
        return None if value is None else _float(value, f"{key}.{name}", minimum)

    return LLMConfig(
        provider=provider,
        model_name=_str(data.get("model_name", d.model_name), f"{key}.model_name"),
        temperature=opt_float("temperature"),
        top_p=opt_float("top_p"),
        max_tokens=_int(data.get("max_tokens", d.max_tokens), f"{key}.max_tokens", 1),
        base_url=_opt_str(data.get("base_url"), f"{key}.base_url"),
        api_key=_opt_str(data.get("api_key"), f"{key}.api_key"),
        timeout_s=_float(data.get("timeout_s", d.timeout_s), f"{key}.timeout_s"),
        max_retries=_int(data.get("max_retries", d.max_retries), f"{key}.max_retries", 0),
        retry_backoff_s=_float(
            data.get("retry_backoff_s", d.retry_backoff_s), f"{key}.retry_backoff_s"
        ),
        thinking_budget=_int(data.get("thinking_budget", 0), f"{key}.thinking_budget", 0),
        pace_ms=_float(data.get("pace_ms", d.pace_ms), f"{key}.pace_ms"),
        strict_response_validation=_bool(
            data.get("strict_response_validation", False), f"{key}.strict_response_validation"
        ),
        tool_calling=_choice(
            data.get("tool_calling", "native"), TOOL_CALLING, f"{key}.tool_calling"
        ),
        reasoning_effort=_opt_str(data.get("reasoning_effort"), f"{key}.reasoning_effort"),
    )


def _choice(value: Any, choices: Sequence[str], key: str) -> str:
    text = _str(value, key)
    if text not in choices:
        raise AgentConfigError(key, f"expected one of {', '.join(choices)}, got {text!r}")
    return text


def _blacklist(value: Any, key: str) -> frozenset[tuple[str, str]]:
    if value is None:
        return frozenset()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise AgentConfigError(key, f"expected a list of [server, tool] pairs, got {value!r}")
    pairs: set[tuple[str, str]] = set()
    for i, item in enumerate(value):
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise AgentConfigError(f"{key}[{i}]", f"expected [server, tool], got {item!r}")
        pairs.add((_str(item[0], f"{key}[{i}][0]"), _str(item[1], f"{key}[{i}][1]")))
    return frozenset(pairs)


def _tool_server(data: Any, key: str) -> ToolServerConfig:
    entry = _mapping(data, key)
    _check_keys(entry, _TOOL_KEYS, key)
    name = _str(entry.get("name"), f"{key}.name")
    if name in BUILTIN_TOOLS:
        raise AgentConfigError(f"{key}.name", f"{name!r} is a built-in tool; choose another name")
    env = _mapping(entry.get("env"), f"{key}.env")
    return ToolServerConfig(
        name=name,
        command=_str(entry.get("command"), f"{key}.command"),
        args=_str_list(entry.get("args"), f"{key}.args"),
        env={k: "" if v is None else str(v) for k, v in env.items()},
        timeout_s=_float(entry.get("timeout_s", 60.0), f"{key}.timeout_s"),
    )


def _agent(
    name: str,
    data: Mapping[str, Any],
    key: str,
    base_llm: Mapping[str, Any],
    tools: dict[str, ToolServerConfig],
) -> tuple[AgentSpec, dict[str, Any]]:
    _check_keys(data, _AGENT_KEYS, key)
    llm_raw = {**base_llm, **_mapping(data.get("llm"), f"{key}.llm")}
    tool_names: list[str] = []
    entries = data.get("tool_config", [])
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise AgentConfigError(f"{key}.tool_config", f"expected a list, got {entries!r}")
    for i, entry in enumerate(entries):
        entry_key = f"{key}.tool_config[{i}]"
        if isinstance(entry, Mapping):  # an inline stdio server definition
            server = _tool_server(entry, entry_key)
            tools.setdefault(server.name, server)
            tool_names.append(server.name)
            continue
        tool_name = _str(entry, entry_key)
        if tool_name not in tools:
            raise AgentConfigError(
                entry_key,
                f"unknown tool server {tool_name!r} (built-ins: {', '.join(BUILTIN_TOOLS)}; "
                "others must be defined under `tools`)",
            )
        tool_names.append(tool_name)
    spec = AgentSpec(
        name=name,
        llm=_llm(llm_raw, f"{key}.llm"),
        tool_config=tuple(tool_names),
        max_turns=_limit(data.get("max_turns", 10), f"{key}.max_turns"),
        max_tool_calls_per_turn=_limit(
            data.get("max_tool_calls_per_turn", 5), f"{key}.max_tool_calls_per_turn"
        ),
        keep_tool_result=_limit(data.get("keep_tool_result", -1), f"{key}.keep_tool_result"),
        sub_agents=_str_list(data.get("sub_agents"), f"{key}.sub_agents"),
        tool_blacklist=_blacklist(data.get("tool_blacklist"), f"{key}.tool_blacklist"),
    )
    return spec, llm_raw


def _build(raw: dict[str, Any]) -> AgentConfig:
    _check_keys(raw, _TOP_KEYS, "")
    tools: dict[str, ToolServerConfig] = {
        name: ToolServerConfig(name=name, builtin=name) for name in BUILTIN_TOOLS
    }
    entries = raw.get("tools") or []
    if isinstance(entries, Mapping):  # also accept ``tools: {name: {command: ...}}``
        entries = [
            {"name": name, **_mapping(value, f"tools.{name}")} for name, value in entries.items()
        ]
    if isinstance(entries, str) or not isinstance(entries, Sequence):
        raise AgentConfigError("tools", f"expected a list of tool servers, got {entries!r}")
    for i, entry in enumerate(entries):
        server = _tool_server(entry, f"tools[{i}]")
        if server.name in tools:
            raise AgentConfigError(
                f"tools[{i}].name", f"duplicate tool server name {server.name!r}"
            )
        tools[server.name] = server

    base_llm = _mapping(raw.get("llm"), "llm")
    main_raw = _mapping(raw.get("main_agent"), "main_agent")
    main, main_llm = _agent("main", main_raw, "main_agent", base_llm, tools)

    subs_raw = _mapping(raw.get("sub_agents"), "sub_agents")
    subs: dict[str, AgentSpec] = {}
    for name, value in subs_raw.items():
        key = f"sub_agents.{name}"
        if not name.startswith("agent-"):
            raise AgentConfigError(key, "sub-agent names must start with 'agent-'")
        spec, _ = _agent(name, _mapping(value, key), key, main_llm, tools)
        subs[name] = spec
    for spec, key in [(main, "main_agent"), *((s, f"sub_agents.{s.name}") for s in subs.values())]:
        for i, sub in enumerate(spec.sub_agents):
            if sub not in subs:
                raise AgentConfigError(f"{key}.sub_agents[{i}]", f"no sub-agent named {sub!r}")
    if "sub_agents" not in main_raw:
        # MiroFlow's shape: the main agent may call every configured sub-agent.
        main = replace(main, sub_agents=tuple(subs))
    return AgentConfig(
        main_agent=main,
        sub_agents=subs,
        tools=tools,
        chinese_context=_bool(raw.get("chinese_context", False), "chinese_context"),
        max_depth=_int(raw.get("max_depth", 3), "max_depth", 1),
        require_approval=_str_list(raw.get("require_approval"), "require_approval"),
        output_dir=_opt_path(raw.get("output_dir"), "output_dir"),
        input_timeout=_input_timeout(raw.get("input_timeout")),
        on_input_timeout=_input_policy(raw.get("on_input_timeout")),
        raw=raw,
    )


def _input_policy(value: Any) -> InputTimeoutPolicy | None:
    if value is None:
        return None
    text = _choice(value, INPUT_TIMEOUT_POLICIES, "on_input_timeout")
    return "fail" if text == "fail" else "continue"


def _input_timeout(value: Any) -> float | None:
    if value is None:
        return None
    seconds = _float(value, "input_timeout", minimum=float("-inf"))
    if not 0 < seconds <= MAX_INPUT_TIMEOUT:
        raise AgentConfigError(
            "input_timeout",
            f"must be more than 0 and at most {MAX_INPUT_TIMEOUT:g} seconds, got {seconds:g}",
        )
    return seconds


def _opt_path(value: Any, key: str) -> Path | None:
    text = _opt_str(value, key)
    return None if text is None else Path(text)
