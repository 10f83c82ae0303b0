"""LLM providers behind one streaming interface (see :mod:`gateway.agent.llm.base`).

One module per provider: :mod:`.openai` (also any OpenAI-compatible server via ``base_url``),
:mod:`.anthropic` and the offline :mod:`.demo` model. :func:`make_provider` picks one from an
``llm`` config section; the SDK modules are imported only when their provider is used.
"""

from __future__ import annotations

from ..config import LLMConfig
from .base import (
    TOOL_SEPARATOR,
    Delta,
    LLMProvider,
    LLMRequest,
    Message,
    ReasoningDelta,
    ReasoningSignature,
    Stop,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallArgs,
    ToolCallAssembler,
    ToolCallBegin,
    ToolCallEnd,
    ToolSpec,
)


def _make(config: LLMConfig) -> LLMProvider:
    if config.provider == "openai":
        from .openai import OpenAIProvider

        return OpenAIProvider(config)
    if config.provider == "anthropic":
        from .anthropic import AnthropicProvider

        return AnthropicProvider(config)
    from .demo import DemoProvider

    return DemoProvider(config)


def make_provider(config: LLMConfig) -> LLMProvider:
    """Create the provider named by ``config.provider``, with MiroThinker-style tool calling
    around it when ``config.tool_calling`` is ``mirothinker``."""
    provider = _make(config)
    if config.tool_calling == "mirothinker":
        from .mirothinker import PromptToolsProvider

        return PromptToolsProvider(provider)
    return provider


__all__ = [
    "TOOL_SEPARATOR",
    "Delta",
    "LLMProvider",
    "LLMRequest",
    "Message",
    "ReasoningDelta",
    "ReasoningSignature",
    "Stop",
    "TextDelta",
    "TokenUsage",
    "ToolCall",
    "ToolCallArgs",
    "ToolCallAssembler",
    "ToolCallBegin",
    "ToolCallEnd",
    "ToolSpec",
    "make_provider",
]
