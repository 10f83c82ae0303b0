"""Small helpers shared by the agent tests."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.agent import AgentConfig, CoreEvent, load_config


def provider_config(provider: str, base_url: str, **main: Any) -> AgentConfig:
    """A config whose agents all use a fake server, with strict response validation on."""
    overrides: dict[str, Any] = {
        "llm.provider": provider,
        "llm.model_name": "fake-model",
        "llm.base_url": base_url,
        "llm.api_key": "test-key",
        "llm.strict_response_validation": True,
        "llm.retry_backoff_s": 0,
        "llm.max_retries": 2,
        "llm.timeout_s": 20,
    }
    overrides.update({f"main_agent.{k}": v for k, v in main.items()})
    return load_config(None, overrides)


class Recorder:
    """A sink that keeps every event."""

    def __init__(self, until: str | None = None) -> None:
        self.events: list[CoreEvent] = []
        self.until = until
        self.seen = asyncio.Event()  # set when a streamed text delta contains ``until``

    def __call__(self, event: CoreEvent) -> None:
        self.events.append(event)
        text = getattr(event, "text", None)
        if self.until is not None and isinstance(text, str) and self.until in text:
            self.seen.set()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def steps(self, agent: str = "main") -> list[str]:
        from gateway.agent import StepEvent

        return [e.step for e in self.events if isinstance(e, StepEvent) and e.agent == agent]

    def text(self, agent: str = "main", channel: str = "text", phase: str | None = None) -> str:
        from gateway.agent import LLMDelta

        return "".join(
            e.text
            for e in self.events
            if isinstance(e, LLMDelta)
            and e.agent == agent
            and e.channel == channel
            and (phase is None or e.phase == phase)
        )
