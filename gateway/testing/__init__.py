"""Test your own integration the way the gateway tests itself: no network, no key, real parts.

- :mod:`.llm` — a fake OpenAI and Anthropic server on 127.0.0.1 speaking their real streaming
  formats, so the real SDKs (and the gateway's providers) run end to end against scripted
  replies: :func:`fake_llm_server`, :class:`Stream`, :class:`ErrorReply`,
  :func:`openai_stream`, :func:`anthropic_stream`.
- :mod:`.config` — the offline demo configuration at a chosen pace, as an
  :class:`~gateway.agent.AgentConfig` (:func:`demo_config`) or a YAML file
  (:func:`write_demo_config`).
- :mod:`.client` — :class:`FrameClient`, a frame-level WebSocket client for testing the
  gateway's protocol itself (applications use :class:`gateway.client.GatewayClient`).
- :mod:`.runner` — :class:`ScriptedRunner`, the runner contract with scripted events, for
  testing what sits on top of the task manager.
- :mod:`.held` — the demo model held at named points until the test releases it (import it
  from there: it loads the agent stack).

The project's own tests and benchmarks use exactly these. Each part is imported when first
used (the fake server needs Starlette and uvicorn, the demo config the agent core), so a load
generator that only wants :class:`FrameClient` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import FrameClient
    from .config import demo_config, write_demo_config
    from .llm import (
        ANTHROPIC_CONTEXT_ERROR,
        OPENAI_CONTEXT_ERROR,
        OPENAI_DONE,
        ErrorReply,
        FakeLLMServer,
        Reply,
        Responder,
        Stream,
        anthropic_stream,
        fake_llm_server,
        openai_chunk,
        openai_stream,
        openai_text_pieces,
        sse,
    )
    from .runner import HOLD, Hold, ScriptedRun, ScriptedRunner, Step

_MODULES = {
    "FrameClient": "client",
    "demo_config": "config",
    "write_demo_config": "config",
    **dict.fromkeys(["HOLD", "Hold", "ScriptedRun", "ScriptedRunner", "Step"], "runner"),
    **dict.fromkeys(
        [
            "ANTHROPIC_CONTEXT_ERROR",
            "OPENAI_CONTEXT_ERROR",
            "OPENAI_DONE",
            "ErrorReply",
            "FakeLLMServer",
            "Reply",
            "Responder",
            "Stream",
            "anthropic_stream",
            "fake_llm_server",
            "openai_chunk",
            "openai_stream",
            "openai_text_pieces",
            "sse",
        ],
        "llm",
    ),
}

__all__ = [
    "ANTHROPIC_CONTEXT_ERROR",
    "HOLD",
    "OPENAI_CONTEXT_ERROR",
    "OPENAI_DONE",
    "ErrorReply",
    "FakeLLMServer",
    "FrameClient",
    "Hold",
    "Reply",
    "Responder",
    "ScriptedRun",
    "ScriptedRunner",
    "Step",
    "Stream",
    "anthropic_stream",
    "demo_config",
    "fake_llm_server",
    "openai_chunk",
    "openai_stream",
    "openai_text_pieces",
    "sse",
    "write_demo_config",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULES])
