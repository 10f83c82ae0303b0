"""MiroFlow agent configs as they are: Hydra composition, typed env defaults, key mapping.

A MiroFlow config directory holds agent configs at its top level (``agent_*.yaml``) and config
groups in sub-directories (``benchmark/``, ``tool/``, …). An agent config is composed with
Hydra's own compose API from its directory, so ``defaults:`` lists, ``_self_`` and
``override hydra/...`` entries behave exactly as in MiroFlow. Then:

1. **Typed env defaults.** A value that is exactly ``${oc.env:VAR,default}`` takes the value of
   ``VAR`` when it is set (a string, read later as YAML where a number or a boolean is expected),
   otherwise ``default`` *as written in YAML*: ``false`` stays the boolean ``False`` and reaches a
   tool subprocess as ``false``, never as the string ``"False"`` that OmegaConf's resolver makes
   of it. ``???`` (MiroFlow's "required") counts as unset. A variable that is unset and has no
   default is an error naming the key, except in a tool's ``env``, where the variable is simply
   not passed (the tool then reports the missing key itself).
2. **Key mapping** (:func:`normalise`) onto our schema (:mod:`gateway.agent.config`):
   ``llm.provider_class`` picks our provider (see :data:`PROVIDER_CLASSES`), the provider's
   ``*_api_key`` / ``*_base_url`` become ``api_key`` / ``base_url``, ``tool_config`` names are
   looked up in ``tool/<name>.yaml`` (``tool_command``, ``args``, ``env``), an ``llm``'s
   ``keep_tool_result`` applies to its agent, ``main_agent.chinese_context`` is the task-wide
   switch, and ``output_dir`` is where task traces are written. Keys we understand but do not
   use (:data:`UNUSED_AGENT_KEYS`, :data:`UNUSED_LLM_KEYS`, :data:`UNUSED_TOP_KEYS`) are
   collected so that the loader lists them once in a warning; any other key is refused with a
   did-you-mean suggestion.
3. **MiroFlow's own tool servers** (:func:`miroflow_server`). A tool entry that runs one of
   MiroFlow's modules (``tool_command: python``, ``args: [-m, src.tool.mcp_servers.<name>]``)
   runs the gateway's equivalent (:data:`MIROFLOW_SERVERS`) with its environment mapped onto
   ours; a MiroFlow module we have no equivalent of is left out of the agent's tools. Both are
   collected (:attr:`Normalised.mapped`) so that the loader lists each once in a warning. An
   entry whose ``tool_command`` is an interpreter's full path is left as it is, so a MiroFlow
   checkout's own servers can still be run.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import AgentConfigError

__all__ = [
    "MIROFLOW_SERVERS",
    "PROVIDER_CLASSES",
    "ProviderClass",
    "compose",
    "did_you_mean",
    "miroflow_server",
    "normalise",
    "typed_container",
]


@dataclass(frozen=True, slots=True)
class ProviderClass:
    """How one of MiroFlow's ``provider_class`` values maps onto our providers."""

    provider: str
    """Our provider: ``openai`` (any OpenAI-compatible server) or ``anthropic``."""
    key_prefix: str
    """Its ``<prefix>_api_key`` / ``<prefix>_base_url`` keys."""
    base_url: str | None = None
    """The base URL when the config gives none."""
    tool_calling: str = "native"
    """``mirothinker``: tools described in the system prompt, calls as ``<use_mcp_tool>``."""


OPENROUTER_URL = "https://openrouter.ai/api/v1"

PROVIDER_CLASSES: dict[str, ProviderClass] = {
    "ClaudeOpenRouterClient": ProviderClass("openai", "openrouter", OPENROUTER_URL),
    "DeepSeekOpenRouterClient": ProviderClass("openai", "openrouter", OPENROUTER_URL),
    "GPTOpenAIClient": ProviderClass("openai", "openai"),
    "GPT5OpenAIClient": ProviderClass("openai", "openai"),
    "ClaudeAnthropicClient": ProviderClass("anthropic", "anthropic"),
    "MiroThinkerSGLangClient": ProviderClass("openai", "oai_mirothinker", None, "mirothinker"),
}
"""MiroFlow's provider classes: OpenRouter and OpenAI-compatible servers go through our OpenAI
provider with their base URL, Claude through our Anthropic provider."""

#: Our own keys, per section (kept in step with :mod:`gateway.agent.config`).
TOP_KEYS = frozenset(
    {
        "chinese_context",
        "input_timeout",
        "on_input_timeout",
        "max_depth",
        "llm",
        "tools",
        "main_agent",
        "sub_agents",
        "output_dir",
        "require_approval",
    }
)
AGENT_KEYS = frozenset(
    {
        "llm",
        "tool_config",
        "max_turns",
        "max_tool_calls_per_turn",
        "keep_tool_result",
        "sub_agents",
        "tool_blacklist",
    }
)
LLM_KEYS = frozenset(
    {
        "provider",
        "model_name",
        "temperature",
        "top_p",
        "max_tokens",
        "base_url",
        "api_key",
        "timeout_s",
        "max_retries",
        "retry_backoff_s",
        "thinking_budget",
        "pace_ms",
        "strict_response_validation",
        "tool_calling",
        "reasoning_effort",
    }
)
TOOL_KEYS = frozenset({"name", "command", "args", "env", "timeout_s"})

#: MiroFlow keys we understand and deliberately do not use (listed in the start-up warning).
UNUSED_TOP_KEYS = frozenset({"data_dir", "benchmark", "hydra"})
UNUSED_AGENT_KEYS = frozenset(
    {"prompt_class", "input_process", "output_process", "openai_api_key", "add_message_id"}
)
UNUSED_LLM_KEYS = frozenset(
    {
        "async_client",
        "top_k",
        "min_p",
        "disable_cache_control",
        "oai_tool_thinking",
        "openrouter_provider",
    }
)
_KEY_PREFIXES = frozenset(p.key_prefix for p in PROVIDER_CLASSES.values())
_PREFIXED_LLM_KEYS = frozenset(
    f"{prefix}_{kind}" for prefix in _KEY_PREFIXES for kind in ("api_key", "base_url")
)


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known key, or ``""``."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(key: str, name: str, known: Iterable[str]) -> AgentConfigError:
    return AgentConfigError(key, f"unknown key {name!r}{did_you_mean(name, known)}")


# --- Hydra composition and typed env defaults ---------------------------------------------------


def compose(directory: Path, names: Iterable[str]) -> dict[str, Any]:
    """Compose the configs ``names`` (file stems) of a Hydra config ``directory``; returns the
    unresolved ``DictConfig`` of each (resolve them with :func:`typed_container`).

    A file without a ``defaults:`` list composes to exactly its own content, so it is read
    directly (milliseconds instead of Hydra's set-up); the others go through Hydra."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    out: dict[str, Any] = {}
    with_defaults: list[str] = []
    for name in names:
        path = directory / f"{name}.yaml"
        if not path.is_file():
            path = directory / f"{name}.yml"
        try:
            plain = OmegaConf.load(str(path))
        except (OmegaConfBaseException, yaml.YAMLError) as exc:
            raise AgentConfigError("", f"{path}: {_yaml_message(exc)}") from None
        if not isinstance(plain, DictConfig):
            raise AgentConfigError("", f"{path}: the top level must be a mapping")
        if "defaults" in plain:
            with_defaults.append(name)
        else:
            out[name] = plain
    if with_defaults:
        out.update(_hydra_compose(directory, with_defaults))
    return {name: out[name] for name in names}


def _yaml_message(exc: BaseException) -> str:
    """An error's message; a YAML error with where in the file it is, on one line."""
    cause: BaseException = exc
    while cause.__cause__ is not None and not isinstance(cause, yaml.YAMLError):
        cause = cause.__cause__
    if isinstance(cause, yaml.YAMLError):
        return " ".join(line.strip() for line in str(cause).splitlines())
    return _first_line(exc)


def _hydra_compose(directory: Path, names: Sequence[str]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if GlobalHydra.instance().is_initialized():
        raise AgentConfigError(
            "", "Hydra is already initialised in this process; load agent configs before it is"
        )
    out: dict[str, Any] = {}
    with initialize_config_dir(config_dir=str(directory.resolve()), version_base=None):
        for name in names:
            try:
                out[name] = hydra_compose(config_name=name)
            except (HydraException, OmegaConfBaseException, yaml.YAMLError) as exc:
                raise AgentConfigError(
                    "", f"{directory / name}.yaml: {_yaml_message(exc)}"
                ) from None
    return out


_ENV = re.compile(r"^\$\{oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:,(.*))?\}$", re.S)
_UNSET = object()


def _env_value(text: str) -> Any:
    """A pure ``${oc.env:VAR,default}`` → its typed value, :data:`_UNSET`, or ``text`` itself
    when it is not one."""
    match = _ENV.match(text.strip())
    if match is None:
        return text
    name, default = match.group(1), match.group(2)
    value = os.environ.get(name)
    if value is not None:
        return value
    if default is None:
        return _UNSET
    try:
        typed = yaml.safe_load(default.strip())
    except yaml.YAMLError:
        typed = default.strip()
    return None if typed == "???" else typed


def typed_container(
    cfg: Any, where: str = "", lenient: Callable[[tuple[str, ...]], bool] | None = None
) -> dict[str, Any]:
    """Resolve an OmegaConf config into plain containers, env defaults keeping their YAML type.

    ``lenient(path)`` says where an unset variable without a default is dropped (``None``)
    instead of refused."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    OmegaConf.set_struct(cfg, False)
    OmegaConf.set_readonly(cfg, False)

    def walk(node: Any, raw_node: Any, path: tuple[str, ...]) -> None:
        """``raw_node`` is ``node`` unresolved, as plain containers (read), ``node`` is where a
        typed value is written back."""
        items: Iterable[tuple[Any, Any]]
        if isinstance(raw_node, dict):
            items = raw_node.items()
        elif isinstance(raw_node, list):
            items = enumerate(raw_node)
        else:
            return
        for key, raw in items:
            child_path = (*path, str(key))
            if isinstance(raw, dict | list):
                walk(node[key], raw, child_path)
                continue
            if not isinstance(raw, str) or "${" not in raw:
                continue
            value = _env_value(raw)
            if value is _UNSET:
                if lenient is not None and lenient(child_path):
                    value = None
                else:
                    variable = _ENV.match(raw.strip())
                    assert variable is not None
                    raise AgentConfigError(
                        _dotted(where, child_path),
                        f"environment variable {variable.group(1)} is not set and has no default",
                    )
            if value is not raw:
                node[key] = value

    try:
        walk(cfg, OmegaConf.to_container(cfg, resolve=False), ())
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "")
        raise AgentConfigError(_dotted(where, (key,) if key else ()), _first_line(exc)) from None
    if container is None:
        return {}
    if not isinstance(container, dict):
        raise AgentConfigError(where, "the top level must be a mapping")
    return {str(k): v for k, v in container.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dotted(where: str, path: Iterable[str]) -> str:
    parts = [where] if where else []
    parts.extend(p for p in path if p)
    return ".".join(parts)


def load_yaml_file(path: Path, lenient: Callable[[tuple[str, ...]], bool] | None = None) -> Any:
    """One YAML file (no composition), resolved like :func:`typed_container`."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = OmegaConf.load(str(path))
    except FileNotFoundError:
        raise AgentConfigError("", f"config file not found: {path}") from None
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise AgentConfigError("", f"{path}: {_first_line(exc)}") from None
    if not isinstance(cfg, DictConfig):
        raise AgentConfigError("", f"{path}: the top level must be a mapping")
    return typed_container(cfg, str(path), lenient)


def in_env(path: tuple[str, ...]) -> bool:
    """Lenient paths: a tool's environment variables."""
    return "env" in path[:-1]


# --- MiroFlow's tool server modules -------------------------------------------------------------

MIROFLOW_PACKAGE = "src.tool.mcp_servers"
"""Where MiroFlow's tool servers live (``python -m src.tool.mcp_servers.<name>``)."""


@dataclass(frozen=True, slots=True)
class MiroFlowServer:
    """What runs here in place of one of MiroFlow's tool server modules."""

    module: str | None
    """Our module (``None``: we ship no equivalent; the tool is left out)."""
    env: Callable[[Mapping[str, str]], tuple[dict[str, str], list[str], list[str]]] | None = None
    """Maps the entry's environment onto ours: ``(env, renamed, not used)``."""
    missing: tuple[str, ...] = ()
    """MiroFlow's tools of that server that ours does not offer."""


def _keep(
    *names: str,
) -> Callable[[Mapping[str, str]], tuple[dict[str, str], list[str], list[str]]]:
    """An environment mapping that passes ``names`` as they are and drops the rest."""

    def mapped(env: Mapping[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
        kept = {k: v for k, v in env.items() if k in names}
        return kept, [], sorted(k for k in env if k not in names)

    return mapped


def _rename(
    renames: Mapping[str, str], keep: Iterable[str] = (), fixed: Mapping[str, str] | None = None
) -> Callable[[Mapping[str, str]], tuple[dict[str, str], list[str], list[str]]]:
    """An environment mapping: ``renames`` (theirs → ours), ``keep`` as they are, ``fixed``
    settings added; anything else is dropped."""
    kept_names = frozenset(keep)

    def mapped(env: Mapping[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
        out = dict(fixed or {})
        renamed: list[str] = []
        unused: list[str] = []
        for name, value in env.items():
            if name in renames:
                out[renames[name]] = value
                renamed.append(f"{name} → {renames[name]}")
            elif name in kept_names:
                out[name] = value
            else:
                unused.append(name)
        return out, renamed, sorted(unused)

    return mapped


def _reasoning_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    """MiroFlow's ``reasoning_mcp_server``: OpenAI (any compatible server) when
    ``OPENAI_API_KEY`` is given, else Anthropic when ``ANTHROPIC_API_KEY`` is; the model names
    default as in MiroFlow (``o3``, ``claude-3-7-sonnet-20250219``)."""
    use = "OPENAI" if env.get("OPENAI_API_KEY") or not env.get("ANTHROPIC_API_KEY") else "ANTHROPIC"
    out = {"OSPARK_REASONING_PROVIDER": use.lower()}
    renamed = [f"OSPARK_REASONING_PROVIDER={use.lower()}"]
    if not env.get(f"{use}_MODEL_NAME"):
        out["OSPARK_REASONING_MODEL"] = "o3" if use == "OPENAI" else "claude-3-7-sonnet-20250219"
        renamed.append(f"OSPARK_REASONING_MODEL={out['OSPARK_REASONING_MODEL']} (its default)")
    for kind, ours in (("MODEL_NAME", "MODEL"), ("API_KEY", "API_KEY"), ("BASE_URL", "BASE_URL")):
        if env.get(f"{use}_{kind}"):
            out[f"OSPARK_REASONING_{ours}"] = env[f"{use}_{kind}"]
            renamed.append(f"{use}_{kind} → OSPARK_REASONING_{ours}")
    unused = sorted(k for k in env if not k.startswith(f"{use}_"))
    return out, renamed, unused


def _reasoning_os_env(env: Mapping[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    """MiroFlow's ``reasoning_mcp_server_os``: an OpenAI-compatible server whose
    ``REASONING_BASE_URL`` is the full chat completions URL (ours is the API's base)."""
    out, renamed, unused = _rename(
        {
            "REASONING_API_KEY": "OSPARK_REASONING_API_KEY",
            "REASONING_BASE_URL": "OSPARK_REASONING_BASE_URL",
            "REASONING_MODEL_NAME": "OSPARK_REASONING_MODEL",
        },
        fixed={"OSPARK_REASONING_PROVIDER": "openai"},
    )(env)
    url = out.get("OSPARK_REASONING_BASE_URL", "").rstrip("/")
    if url.endswith("/chat/completions"):
        out["OSPARK_REASONING_BASE_URL"] = url[: -len("/chat/completions")]
    return out, renamed, unused


_SEARCH_ENV = (
    "SERPER_API_KEY",
    "SERPER_BASE_URL",
    "JINA_API_KEY",
    "JINA_BASE_URL",
    "REMOVE_SNIPPETS",
    "REMOVE_KNOWLEDGE_GRAPH",
    "REMOVE_ANSWER_BOX",
)

MIROFLOW_SERVERS: dict[str, MiroFlowServer] = {
    "searching_mcp_server": MiroFlowServer(
        "gateway.tools.search",
        _keep(*_SEARCH_ENV),
        ("wiki_get_page_content", "search_wiki_revision", "search_archived_webpage"),
    ),
    "miroapi_serper_mcp_server": MiroFlowServer("gateway.tools.search", _keep(*_SEARCH_ENV)),
    "reading_mcp_server": MiroFlowServer("gateway.tools.reading", _keep()),
    "python_server": MiroFlowServer(
        "gateway.tools.code",
        _rename(
            {
                "DEFAULT_TEMPLATE_ID": "OSPARK_E2B_TEMPLATE",
                "DEFAULT_TIMEOUT": "OSPARK_E2B_SANDBOX_TIMEOUT_S",
            },
            keep=("E2B_API_KEY",),
        ),
        (
            "create_sandbox",
            "upload_file_from_local_to_sandbox",
            "download_file_from_internet_to_sandbox",
            "download_file_from_sandbox_to_local",
        ),
    ),
    "reasoning_mcp_server": MiroFlowServer("gateway.tools.reasoning", _reasoning_env),
    "reasoning_mcp_server_os": MiroFlowServer("gateway.tools.reasoning", _reasoning_os_env),
}
"""MiroFlow's tool server modules (under :data:`MIROFLOW_PACKAGE`) that have an equivalent
here. Any other module of that package (audio, vision, browsing, …) has none."""


@dataclass(frozen=True, slots=True)
class Replaced:
    """A tool entry naming a MiroFlow module, after :func:`miroflow_server`."""

    entry: dict[str, Any] | None
    """The entry running our server (``None``: left out)."""
    note: str
    """What was done, for the start-up warning."""


def miroflow_server(entry: Mapping[str, Any]) -> Replaced | None:
    """``entry`` (a tool definition, ``command`` already in place) rewritten to run our
    equivalent of the MiroFlow module it names; ``None`` when it names none (or names its
    interpreter by a full path: then it is run as it is)."""
    command = entry.get("command")
    args = entry.get("args")
    if command not in ("python", "python3") or not isinstance(args, list):
        return None
    module = next(
        (
            str(args[i + 1])
            for i in range(len(args) - 1)
            if args[i] == "-m" and str(args[i + 1]).startswith(MIROFLOW_PACKAGE + ".")
        ),
        None,
    )
    if module is None:
        return None
    name = str(entry.get("name", "?"))
    ours = MIROFLOW_SERVERS.get(module[len(MIROFLOW_PACKAGE) + 1 :])
    if ours is None or ours.module is None:
        return Replaced(None, f"{name} ({module}): left out, no equivalent here")
    env = entry.get("env")
    given = {str(k): v for k, v in env.items()} if isinstance(env, Mapping) else {}
    mapped, renamed, unused = ours.env(given) if ours.env is not None else (given, [], [])
    parts = [f"{name}: {module} → {ours.module}"]
    if renamed:
        parts.append("env " + ", ".join(renamed))
    if unused:
        parts.append("env not used: " + ", ".join(unused))
    if ours.missing:
        parts.append("tools not here: " + ", ".join(ours.missing))
    replaced = {k: v for k, v in entry.items() if k not in ("args", "env")}
    replaced["args"] = ["-m", ours.module]
    replaced["env"] = mapped
    return Replaced(replaced, parts[0] + (f" ({'; '.join(parts[1:])})" if parts[1:] else ""))


# --- key mapping ------------------------------------------------------------------------------


@dataclass(slots=True)
class Normalised:
    """A config in our schema, plus what was understood but not used."""

    raw: dict[str, Any]
    unused: list[str] = field(default_factory=list)
    mapped: list[str] = field(default_factory=list)
    """MiroFlow tool servers replaced by ours or left out (:func:`miroflow_server`)."""
    left_out: set[str] = field(default_factory=set)
    """Names of the tool servers left out: dropped from every ``tool_config`` too."""


def normalise(data: Mapping[str, Any], tool_dir: Path | None) -> Normalised:
    """Map a composed MiroFlow (or our own) config onto our schema.

    ``tool_dir`` is where ``tool_config`` names are looked up as ``<name>.yaml`` (a MiroFlow
    directory's ``tool/``). Refuses unknown keys with a did-you-mean suggestion."""
    out = Normalised({})
    known_top = TOP_KEYS | UNUSED_TOP_KEYS
    for key, value in data.items():
        if key in UNUSED_TOP_KEYS:
            out.unused.append(key)
        elif key not in TOP_KEYS:
            raise _unknown(key, key, known_top)
        elif key in ("main_agent", "sub_agents", "tools"):
            continue
        else:
            out.raw[key] = value
    tools: list[Any] = list(_tool_entries(data.get("tools"), out))
    defined = {str(t.get("name")) for t in tools if isinstance(t, Mapping)}
    main = data.get("main_agent")
    if main is not None:
        if not isinstance(main, Mapping):
            raise AgentConfigError("main_agent", f"expected a mapping, got {main!r}")
        out.raw["main_agent"] = _agent(main, "main_agent", out, tools, defined, tool_dir)
    subs = data.get("sub_agents")
    if subs is not None:
        if not isinstance(subs, Mapping):
            raise AgentConfigError("sub_agents", f"expected a mapping, got {subs!r}")
        out.raw["sub_agents"] = {
            str(name): _agent(
                value if value is not None else {},
                f"sub_agents.{name}",
                out,
                tools,
                defined,
                tool_dir,
            )
            for name, value in subs.items()
        }
    else:
        out.raw["sub_agents"] = {}
    if tools:
        out.raw["tools"] = tools
    return out


def _tool_entries(value: Any, out: Normalised) -> Iterable[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping):  # ``tools: {name: {command: ...}}``
        value = [
            {"name": name, **(entry if isinstance(entry, Mapping) else {})}
            for name, entry in value.items()
        ]
    if isinstance(value, list):
        entries = [
            _tool_entry(e, f"tools[{i}]", out) if isinstance(e, Mapping) else e
            for i, e in enumerate(value)
        ]
        return [e for e in entries if e is not None]
    raise AgentConfigError("tools", f"expected a list of tool servers, got {value!r}")


def _tool_entry(entry: Mapping[str, Any], key: str, out: Normalised) -> dict[str, Any] | None:
    """A tool server definition: ``tool_command`` is MiroFlow's ``command``; ``python`` means
    the gateway's own interpreter, as in MiroFlow; one of MiroFlow's own modules becomes ours
    (``None``: left out)."""
    result: dict[str, Any] = {}
    for name, value in entry.items():
        if name == "tool_command":
            if "command" in entry:
                raise AgentConfigError(f"{key}.tool_command", "give `command` or `tool_command`")
            name = "command"
        elif name not in TOOL_KEYS:
            raise _unknown(f"{key}.{name}", str(name), TOOL_KEYS | {"tool_command"})
        result[str(name)] = value
    env = result.get("env")
    if isinstance(env, Mapping):
        result["env"] = {str(k): _env_text(v) for k, v in env.items() if v is not None}
    replaced = miroflow_server(result)
    if replaced is not None:
        if replaced.note not in out.mapped:
            out.mapped.append(replaced.note)
        if replaced.entry is None:
            out.left_out.add(str(result.get("name")))
            return None
        result = replaced.entry
    if result.get("command") in ("python", "python3"):
        result["command"] = sys.executable
    return result


def _env_text(value: Any) -> str:
    """An environment value as its YAML spelling (``false``, not ``False``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _agent(
    data: Mapping[str, Any],
    key: str,
    out: Normalised,
    tools: list[Any],
    defined: set[str],
    tool_dir: Path | None,
) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise AgentConfigError(key, f"expected a mapping, got {data!r}")
    agent: dict[str, Any] = {}
    known = AGENT_KEYS | UNUSED_AGENT_KEYS | {"chinese_context"}
    for name, value in data.items():
        full = f"{key}.{name}"
        if name in UNUSED_AGENT_KEYS:
            out.unused.append(full)
        elif name == "chinese_context":
            if key == "main_agent":
                out.raw.setdefault("chinese_context", value)
            else:
                out.unused.append(full)
        elif name not in AGENT_KEYS:
            raise _unknown(full, str(name), known)
        elif name == "llm":
            agent["llm"], keep = _llm(value, f"{full}", out)
            if keep is not None and "keep_tool_result" not in data:
                agent["keep_tool_result"] = keep
        elif name == "tool_config":
            agent["tool_config"] = _tool_config(value, full, out, tools, defined, tool_dir)
        else:
            agent[str(name)] = value
    return agent


def _llm(data: Any, key: str, out: Normalised) -> tuple[dict[str, Any], Any]:
    if data is None:
        return {}, None
    if not isinstance(data, Mapping):
        raise AgentConfigError(key, f"expected a mapping, got {data!r}")
    llm: dict[str, Any] = {}
    keep = data.get("keep_tool_result")
    cls: ProviderClass | None = None
    provider_class = data.get("provider_class")
    if provider_class is not None:
        cls = PROVIDER_CLASSES.get(str(provider_class))
        if cls is None:
            raise AgentConfigError(
                f"{key}.provider_class",
                f"unknown provider_class {provider_class!r}"
                f"{did_you_mean(str(provider_class), PROVIDER_CLASSES)} (known: "
                f"{', '.join(PROVIDER_CLASSES)}; or give `provider` and `base_url`)",
            )
        given = data.get("provider")
        if given is not None and given != cls.provider:
            raise AgentConfigError(
                f"{key}.provider",
                f"{given!r} contradicts provider_class {provider_class!r} ({cls.provider})",
            )
        # A MiroFlow llm section is complete in itself: what it leaves out is not inherited
        # from the main agent's.
        llm["provider"] = cls.provider
        llm["tool_calling"] = cls.tool_calling
        llm["reasoning_effort"] = None
    known = LLM_KEYS | UNUSED_LLM_KEYS | _PREFIXED_LLM_KEYS | {"provider_class", "keep_tool_result"}
    for name, value in data.items():
        full = f"{key}.{name}"
        if name in ("provider_class", "keep_tool_result"):
            continue
        if name in UNUSED_LLM_KEYS:
            out.unused.append(full)
        elif name in _PREFIXED_LLM_KEYS:
            kind = "api_key" if name.endswith("_api_key") else "base_url"
            prefix = str(name)[: -len(kind) - 1]
            if cls is not None and prefix == cls.key_prefix:
                if kind not in data:
                    llm[kind] = value
            else:
                out.unused.append(full)
        elif name not in LLM_KEYS:
            raise _unknown(full, str(name), known)
        else:
            llm[str(name)] = value
    if cls is not None and cls.base_url is not None and llm.get("base_url") in (None, ""):
        llm["base_url"] = cls.base_url
    return llm, keep


def _tool_config(
    value: Any,
    key: str,
    out: Normalised,
    tools: list[Any],
    defined: set[str],
    tool_dir: Path | None,
) -> Any:
    """Names stay names; a name defined nowhere else is read from ``tool_dir/<name>.yaml``; a
    server left out (:func:`miroflow_server`) is dropped."""
    from .config import BUILTIN_TOOLS

    if not isinstance(value, list):
        return value
    entries: list[Any] = []
    for i, entry in enumerate(value):
        if isinstance(entry, Mapping):
            inline = _tool_entry(entry, f"{key}[{i}]", out)
            if inline is not None:
                entries.append(inline)
            continue
        name = entry
        if isinstance(name, str) and name in out.left_out:
            continue
        if (
            isinstance(name, str)
            and name not in BUILTIN_TOOLS
            and name not in defined
            and tool_dir is not None
        ):
            path = tool_dir / f"{name}.yaml"
            if path.is_file():
                loaded = load_yaml_file(path, in_env)
                if not isinstance(loaded, Mapping):
                    raise AgentConfigError(f"{key}[{i}]", f"{path}: expected a mapping")
                definition = _tool_entry({"name": name, **loaded}, str(path), out)
                if definition is None:
                    out.left_out.add(name)
                    continue
                tools.append(definition)
                defined.add(str(definition["name"]))
                name = definition["name"]
        entries.append(name)
    return entries
