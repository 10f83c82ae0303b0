"""Anthropic Messages streaming: text, thinking and ``tool_use`` with ``input_json_delta``.

The 2.x SDK takes no ``temperature``/``top_p``, so those config keys are ignored here. With
``thinking_budget > 0`` extended thinking is turned on; its signed blocks are sent back with the
tool calls they led to, as the API requires.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anthropic

from .. import errors
from ..config import LLMConfig
from .base import (
    Delta,
    LLMRequest,
    Message,
    ReasoningDelta,
    ReasoningSignature,
    Stop,
    StopReason,
    TextDelta,
    TokenUsage,
    ToolCallArgs,
    ToolCallBegin,
    ToolCallEnd,
    shared_ssl_context,
    with_url,
)

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "context_limit",
}


def map_error(exc: Exception, url: str = "") -> errors.LLMError:
    """Translate an ``anthropic`` exception into the core's error tree, keeping its message;
    a network error names the URL tried."""
    status = getattr(exc, "status_code", None)
    message = getattr(exc, "api_message", None) or str(exc)
    kind = getattr(exc, "type", None) or ""
    kwargs: dict[str, Any] = {"provider": "anthropic", "status_code": status}
    if isinstance(exc, anthropic.APIConnectionError):
        return errors.NetworkError(with_url(message, exc, url), **kwargs)
    lowered = message.lower()
    if "prompt is too long" in lowered or "context window" in lowered:
        return errors.ContextLimitError(message, **kwargs)
    if isinstance(exc, anthropic.ContentTooLargeError):
        return errors.ContextLimitError(message, **kwargs)
    if isinstance(exc, anthropic.RateLimitError) or kind in (
        "rate_limit_error",
        "overloaded_error",
    ):
        return errors.RateLimitError(message, **kwargs)
    if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        return errors.AuthError(message, **kwargs)
    if isinstance(exc, anthropic.InternalServerError) or kind == "api_error":
        return errors.NetworkError(with_url(message, exc, url), **kwargs)
    return errors.BadRequestError(message, **kwargs)


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def to_anthropic_messages(
    messages: Sequence[Message],
) -> tuple[str, list[dict[str, Any]]]:
    """Split out the system prompt and merge consecutive same-role messages (tool results are
    user content in the Messages API, and roles must alternate)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            system.append(m.content)
            continue
        blocks: list[dict[str, Any]] = []
        role = "assistant" if m.role == "assistant" else "user"
        if m.role == "tool":
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id,
                    "content": m.content,
                    "is_error": m.is_error,
                }
            )
        else:
            if m.role == "assistant" and m.reasoning_signature and m.tool_calls:
                blocks.append(
                    {
                        "type": "thinking",
                        "thinking": m.reasoning,
                        "signature": m.reasoning_signature,
                    }
                )
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for call in m.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": _arguments(call.arguments),
                    }
                )
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system), out


class AnthropicProvider:
    """Streaming Messages with the ``anthropic`` SDK."""

    name = "anthropic"

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        try:
            self._client = anthropic.AsyncAnthropic(
                api_key=config.api_key,
                base_url=config.base_url,
                timeout=config.timeout_s,
                max_retries=0,  # the agent loop owns retries, so they are visible as events
                _strict_response_validation=config.strict_response_validation,
                # The SDK's own client, but with the process's TLS context (see base.py).
                http_client=anthropic.DefaultAsyncHttpxClient(
                    timeout=config.timeout_s, verify=shared_ssl_context()
                ),
            )
        except anthropic.AnthropicError as exc:
            raise errors.AuthError(str(exc), provider="anthropic") from None
        self.endpoint = f"{str(self._client.base_url).rstrip('/')}/v1/messages"

    async def aclose(self) -> None:
        await self._client.close()

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        cfg = self.config
        system, messages = to_anthropic_messages(request.messages)
        params: dict[str, Any] = {
            "model": cfg.model_name,
            "max_tokens": cfg.max_tokens,
            "messages": messages,
            "stream": True,
        }
        if system:
            params["system"] = system
        if cfg.thinking_budget > 0:
            params["thinking"] = {"type": "enabled", "budget_tokens": cfg.thinking_budget}
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
        return params

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        try:
            response = await self._client.messages.create(**self._params(request))
        except anthropic.AnthropicError as exc:
            raise map_error(exc, self.endpoint) from exc
        async with response:  # closes the HTTP stream on every exit path, cancellation included
            yield self._deltas(response)

    async def _deltas(self, response: Any) -> AsyncIterator[Delta]:
        tool_blocks: set[int] = set()
        input_tokens = 0
        try:
            async for event in response:
                kind = event.type
                if kind == "message_start":
                    input_tokens = event.message.usage.input_tokens
                elif kind == "content_block_start":
                    block = event.content_block
                    if block.type == "tool_use":
                        tool_blocks.add(event.index)
                        yield ToolCallBegin(event.index, block.id, block.name)
                    elif block.type == "text" and block.text:
                        yield TextDelta(block.text)
                    elif block.type == "thinking" and block.thinking:
                        yield ReasoningDelta(block.thinking)
                elif kind == "content_block_delta":
                    delta = event.delta
                    if delta.type == "text_delta":
                        yield TextDelta(delta.text)
                    elif delta.type == "thinking_delta":
                        yield ReasoningDelta(delta.thinking)
                    elif delta.type == "input_json_delta":
                        yield ToolCallArgs(event.index, delta.partial_json)
                    elif delta.type == "signature_delta":
                        yield ReasoningSignature(delta.signature)
                elif kind == "content_block_stop":
                    if event.index in tool_blocks:
                        yield ToolCallEnd(event.index)
                elif kind == "message_delta":
                    usage = event.usage
                    yield TokenUsage(usage.input_tokens or input_tokens, usage.output_tokens)
                    if event.delta.stop_reason is not None:
                        yield Stop(_STOP_REASONS.get(event.delta.stop_reason, "other"))
        except anthropic.AnthropicError as exc:
            raise map_error(exc, self.endpoint) from exc
        except json.JSONDecodeError as exc:
            raise errors.BadRequestError(
                f"malformed stream event: {exc}", provider="anthropic"
            ) from exc
