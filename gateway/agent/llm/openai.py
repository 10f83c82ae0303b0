"""OpenAI Chat Completions, and any OpenAI-compatible server through ``base_url``.

Tool-call arguments arrive as fragments keyed by ``index``; usage comes in a last chunk thanks to
``stream_options={"include_usage": True}``; reasoning from compatible servers (vLLM, DeepSeek,
OpenRouter) is read from ``delta.reasoning_content`` or ``delta.reasoning``. The official API
gets ``max_completion_tokens``; a custom ``base_url`` gets the widely supported ``max_tokens``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import openai

from .. import errors
from ..config import LLMConfig
from .base import (
    Delta,
    LLMRequest,
    Message,
    ReasoningDelta,
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
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
}


def map_error(exc: Exception, url: str = "") -> errors.LLMError:
    """Translate an ``openai`` exception into the core's error tree, keeping its message.

    A network error names the URL that was tried (``url``, the endpoint the provider called,
    when the exception carries no request of its own)."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    message = str(body.get("message") or exc) if isinstance(body, dict) else str(exc)
    code = str(getattr(exc, "code", "") or "")
    kwargs: dict[str, Any] = {"provider": "openai", "status_code": status}
    if isinstance(exc, openai.APIConnectionError):
        return errors.NetworkError(with_url(message, exc, url), **kwargs)
    if code == "context_length_exceeded" or "maximum context length" in message.lower():
        return errors.ContextLimitError(message, **kwargs)
    if isinstance(exc, openai.RateLimitError):
        return errors.RateLimitError(message, **kwargs)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return errors.AuthError(message, **kwargs)
    if isinstance(exc, openai.InternalServerError):
        return errors.NetworkError(with_url(message, exc, url), **kwargs)
    return errors.BadRequestError(message, **kwargs)


def to_openai_messages(messages: list[Message] | tuple[Message, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content})
        elif m.role == "assistant" and m.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": m.content or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in m.tool_calls
                    ],
                }
            )
        else:
            out.append({"role": m.role, "content": m.content})
    return out


class OpenAIProvider:
    """Streaming Chat Completions with the ``openai`` SDK."""

    name = "openai"

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        api_key = config.api_key
        if api_key is None and config.base_url is not None:
            api_key = "not-needed"  # local OpenAI-compatible servers usually ignore the key
        try:
            self._client = openai.AsyncOpenAI(
                api_key=api_key,
                base_url=config.base_url,
                timeout=config.timeout_s,
                max_retries=0,  # the agent loop owns retries, so they are visible as events
                _strict_response_validation=config.strict_response_validation,
                # The SDK's own client, but with the process's TLS context (see base.py).
                http_client=openai.DefaultAsyncHttpxClient(
                    timeout=config.timeout_s, verify=shared_ssl_context()
                ),
            )
        except openai.OpenAIError as exc:
            raise errors.AuthError(str(exc), provider="openai") from None
        self.endpoint = f"{str(self._client.base_url).rstrip('/')}/chat/completions"

    async def aclose(self) -> None:
        await self._client.close()

    def _params(self, request: LLMRequest) -> dict[str, Any]:
        cfg = self.config
        params: dict[str, Any] = {
            "model": cfg.model_name,
            "messages": to_openai_messages(tuple(request.messages)),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if cfg.base_url is None:
            params["max_completion_tokens"] = cfg.max_tokens
        else:
            params["max_tokens"] = cfg.max_tokens
        if cfg.temperature is not None:
            params["temperature"] = cfg.temperature
        if cfg.top_p is not None:
            params["top_p"] = cfg.top_p
        if cfg.reasoning_effort is not None:
            params["reasoning_effort"] = cfg.reasoning_effort
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        return params

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        try:
            response = await self._client.chat.completions.create(**self._params(request))
        except openai.OpenAIError as exc:
            raise map_error(exc, self.endpoint) from exc
        async with response:  # closes the HTTP stream on every exit path, cancellation included
            yield self._deltas(response)

    async def _deltas(self, response: Any) -> AsyncIterator[Delta]:
        started: set[int] = set()
        ended = False
        try:
            async for chunk in response:
                if chunk.usage is not None:
                    yield TokenUsage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices[:1]:
                    delta = choice.delta
                    reasoning = getattr(delta, "reasoning_content", None) or getattr(
                        delta, "reasoning", None
                    )
                    if isinstance(reasoning, str) and reasoning:
                        yield ReasoningDelta(reasoning)
                    if delta.content:
                        yield TextDelta(delta.content)
                    for call in delta.tool_calls or ():
                        if call.index not in started:
                            started.add(call.index)
                            name = call.function.name if call.function else None
                            yield ToolCallBegin(
                                call.index, call.id or f"call_{call.index}", name or ""
                            )
                        if call.function is not None and call.function.arguments:
                            yield ToolCallArgs(call.index, call.function.arguments)
                    if choice.finish_reason is not None and not ended:
                        ended = True
                        for index in sorted(started):
                            yield ToolCallEnd(index)
                        yield Stop(_STOP_REASONS.get(choice.finish_reason, "other"))
        except openai.OpenAIError as exc:
            raise map_error(exc, self.endpoint) from exc
        except json.JSONDecodeError as exc:
            raise errors.BadRequestError(
                f"malformed stream chunk: {exc}", provider="openai"
            ) from exc
