"""The demo configuration for tests and benchmarks: the offline demo model at a chosen pace.

:func:`demo_config` gives the validated :class:`~gateway.agent.AgentConfig` (for the core, the
streaming layer or a task manager in-process); :func:`write_demo_config` writes the same
configuration to a YAML file (for a gateway server, a subprocess or ``ospark``). Both start
from the built-in default (demo model, calculator and clock tools, one ``agent-worker``
sub-agent; ``gateway/configs/demo.yaml`` is the same as a file), set ``llm.pace_ms`` (the
demo model's delay per streamed word; 0 never sleeps) and apply ``overrides`` exactly as
:func:`gateway.agent.load_config` does: dotted keys (``**{"main_agent.max_turns": 3}``) or the
short per-task names (``max_turns=3``, ``provider="openai"``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from gateway.agent import AgentConfig

__all__ = ["demo_config", "write_demo_config"]


def demo_config(pace_ms: float = 0.0, **overrides: Any) -> AgentConfig:
    """The built-in demo configuration with the demo model at ``pace_ms`` per word."""
    from gateway.agent import load_config  # the agent core loads only when a config is made

    return load_config(None, {"llm.pace_ms": pace_ms, **overrides})


def write_demo_config(
    directory: str | Path, pace_ms: float = 0.0, name: str | None = None, **overrides: Any
) -> str:
    """Write :func:`demo_config` as YAML into ``directory``; return the file's path.

    The file is named ``name``, or after the pace and the overrides, so configurations that
    differ never share a file.
    """
    config = demo_config(pace_ms, **overrides)
    if name is None:
        digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode())
        name = f"demo-{pace_ms:g}" + (f"-{digest.hexdigest()[:8]}" if overrides else "") + ".yaml"
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(_plain(config.raw), sort_keys=False), encoding="utf-8")
    return str(path)


def _plain(value: Any) -> Any:
    """Mappings and sequences as the dicts and lists YAML's safe dumper accepts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
