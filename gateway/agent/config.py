"""Agent configuration: MiroFlow-shaped YAML, loaded with OmegaConf, validated into dataclasses.

The file format (every key optional; see ``gateway/configs/*.yaml``)::

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

An agent's ``llm`` is merged over the top-level ``llm`` (and a sub-agent's over the main agent's),
so overriding the main agent's model also changes the sub-agents that do not name their own.
Any error names the offending key: ``ConfigError("main_agent.max_turns: expected an integer")``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

BUILTIN_TOOLS = ("calculator", "clock")
PROVIDERS = ("demo", "openai", "anthropic")

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
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
        return _build(merged)


def default_config() -> AgentConfig:
    """The built-in configuration: the offline demo model, calculator, clock, ``agent-worker``."""
    return _build(copy.deepcopy(_DEFAULT))


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None
) -> AgentConfig:
    """Load a YAML config (``None``: the built-in default) and apply ``overrides``.

    ``${oc.env:VAR,default}`` interpolations are resolved. Raises :class:`ConfigError` naming
    the bad key.
    """
    if path is None:
        raw: dict[str, Any] = copy.deepcopy(_DEFAULT)
    else:
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(str(path)), resolve=True)
        except FileNotFoundError:
            raise ConfigError("", f"config file not found: {path}") from None
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", "") or ""
            raise ConfigError(str(key), str(exc).splitlines()[0]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("", f"{path}: the top level must be a mapping")
        raw = {str(k): v for k, v in loaded.items()}
    return _build(_apply_overrides(raw, overrides))


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
                raise ConfigError(key, "an override must look like key=value")
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

_TOP_KEYS = {
    "chinese_context",
    "max_depth",
    "llm",
    "tools",
    "main_agent",
    "sub_agents",
    "require_approval",
}
_AGENT_KEYS = {
    "llm",
    "tool_config",
    "max_turns",
    "max_tool_calls_per_turn",
    "keep_tool_result",
    "sub_agents",
}
_TOOL_KEYS = {"name", "command", "args", "env", "timeout_s"}


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            full = f"{where}.{key}" if where else str(key)
            raise ConfigError(full, f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping, got {value!r}")
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
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value}")
    return value


def _limit(value: Any, key: str) -> int:
    """An integer limit where -1 means unlimited."""
    number = _int(value, key)
    if number < -1 or number == 0:
        raise ConfigError(key, f"must be a positive integer or -1 (unlimited), got {number}")
    return number


def _float(value: Any, key: str, minimum: float = 0.0) -> float:
    value = _decode(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"expected a number, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value}")
    return float(value)


def _bool(value: Any, key: str) -> bool:
    value = _decode(value)
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"expected a non-empty string, got {value!r}")
    return value


def _opt_str(value: Any, key: str) -> str | None:
    # Empty strings come from ``${oc.env:VAR,''}`` with the variable unset: treat them as absent.
    if value is None or value == "":
        return None
    return _str(value, key)


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(key, f"expected a list of strings, got {value!r}")
    return tuple(_str(item, f"{key}[{i}]") for i, item in enumerate(value))


def _llm(data: Mapping[str, Any], key: str) -> LLMConfig:
    allowed = set(LLMConfig.__dataclass_fields__)
    _check_keys(data, allowed, key)
    provider = _str(data.get("provider", "demo"), f"{key}.provider")
    if provider not in PROVIDERS:
        raise ConfigError(
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
    )


def _tool_server(data: Any, key: str) -> ToolServerConfig:
    entry = _mapping(data, key)
    _check_keys(entry, _TOOL_KEYS, key)
    name = _str(entry.get("name"), f"{key}.name")
    if name in BUILTIN_TOOLS:
        raise ConfigError(f"{key}.name", f"{name!r} is a built-in tool; choose another name")
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
        raise ConfigError(f"{key}.tool_config", f"expected a list, got {entries!r}")
    for i, entry in enumerate(entries):
        entry_key = f"{key}.tool_config[{i}]"
        if isinstance(entry, Mapping):  # an inline stdio server definition
            server = _tool_server(entry, entry_key)
            tools.setdefault(server.name, server)
            tool_names.append(server.name)
            continue
        tool_name = _str(entry, entry_key)
        if tool_name not in tools:
            raise ConfigError(
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
        raise ConfigError("tools", f"expected a list of tool servers, got {entries!r}")
    for i, entry in enumerate(entries):
        server = _tool_server(entry, f"tools[{i}]")
        if server.name in tools:
            raise ConfigError(f"tools[{i}].name", f"duplicate tool server name {server.name!r}")
        tools[server.name] = server

    base_llm = _mapping(raw.get("llm"), "llm")
    main_raw = _mapping(raw.get("main_agent"), "main_agent")
    main, main_llm = _agent("main", main_raw, "main_agent", base_llm, tools)

    subs_raw = _mapping(raw.get("sub_agents"), "sub_agents")
    subs: dict[str, AgentSpec] = {}
    for name, value in subs_raw.items():
        key = f"sub_agents.{name}"
        if not name.startswith("agent-"):
            raise ConfigError(key, "sub-agent names must start with 'agent-'")
        spec, _ = _agent(name, _mapping(value, key), key, main_llm, tools)
        subs[name] = spec
    for spec, key in [(main, "main_agent"), *((s, f"sub_agents.{s.name}") for s in subs.values())]:
        for i, sub in enumerate(spec.sub_agents):
            if sub not in subs:
                raise ConfigError(f"{key}.sub_agents[{i}]", f"no sub-agent named {sub!r}")
    if "sub_agents" not in main_raw:
        # MiroFlow's shape: the main agent may call every configured sub-agent.
        main = AgentSpec(
            name=main.name,
            llm=main.llm,
            tool_config=main.tool_config,
            max_turns=main.max_turns,
            max_tool_calls_per_turn=main.max_tool_calls_per_turn,
            keep_tool_result=main.keep_tool_result,
            sub_agents=tuple(subs),
        )
    return AgentConfig(
        main_agent=main,
        sub_agents=subs,
        tools=tools,
        chinese_context=_bool(raw.get("chinese_context", False), "chinese_context"),
        max_depth=_int(raw.get("max_depth", 3), "max_depth", 1),
        require_approval=_str_list(raw.get("require_approval"), "require_approval"),
        raw=raw,
    )
