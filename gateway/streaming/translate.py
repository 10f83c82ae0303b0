"""The one place where core events (:mod:`gateway.agent.events`) become wire events
(:mod:`protocol.events`), and where a run's outcome becomes its terminal event.

============================  ================================================================
core                          protocol
============================  ================================================================
``StepEvent``                 ``task_progress`` (step, message, turn, agent)
``LLMDelta``                  ``llm_response`` (delta, channel, phase; turn 0 in the summary)
``ToolStart``                 ``tool_call_start``
``ToolEnd``                   ``tool_call_complete`` (``duration_ms``; result cut to a preview)
``AgentErrorEvent``           ``error`` (non-terminal)
``UsageEvent``                a ``Usage`` report (the sum so far; not a wire event), and summed
                              into the terminal event's ``usage``
returned ``(summary, answer)``  ``task_completed``
``TaskFailedError``           ``task_failed`` (its ``failure_code``: ``context_limit``, ``failed``;
                              with the summary)
``LLMError``                  ``task_failed`` (``provider_error``)
other ``AgentError``          ``task_failed`` (its own code, e.g. ``invalid_config``)
anything else                 ``task_failed`` (``internal``)
============================  ================================================================

Cancellation is not translated here: the run's caller turns a requested cancel into
``task_cancelled`` (:func:`gateway.streaming.runner.outcome`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.agent import (
    AgentError,
    AgentErrorEvent,
    CoreEvent,
    LLMDelta,
    LLMError,
    StepEvent,
    TaskFailedError,
    ToolEnd,
    ToolStart,
    UsageEvent,
)
from protocol.events import (
    ErrorEvent,
    Event,
    LlmResponse,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    ToolCallComplete,
    ToolCallStart,
    Usage,
)

__all__ = ["DEFAULT_RESULT_PREVIEW_CHARS", "Translator"]

DEFAULT_RESULT_PREVIEW_CHARS = 4000
"""Longest tool result sent in ``tool_call_complete``; longer ones are cut with a marker."""


class Translator:
    """Translates the events of one run; keeps the run's token usage."""

    __slots__ = ("_dispatch", "input_tokens", "output_tokens", "preview_chars")

    def __init__(self, *, preview_chars: int = DEFAULT_RESULT_PREVIEW_CHARS) -> None:
        self.preview_chars = preview_chars
        self.input_tokens = 0
        self.output_tokens = 0
        # Exact-type dispatch: one dict lookup per event on the hot path.
        self._dispatch: dict[type, Callable[[Any], Event | Usage | None]] = {
            LLMDelta: self._delta,
            StepEvent: self._step,
            ToolStart: self._tool_start,
            ToolEnd: self._tool_end,
            UsageEvent: self._usage,
            AgentErrorEvent: self._error,
        }

    @property
    def usage(self) -> Usage:
        return Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens)

    def __call__(self, event: CoreEvent) -> Event | Usage | None:
        """The wire event for a core event, the usage so far for a usage report, or ``None``
        for a core event with no wire form."""
        handler = self._dispatch.get(type(event))
        return handler(event) if handler is not None else None

    # -- per kind

    @staticmethod
    def _delta(e: LLMDelta) -> Event:
        summary = e.phase == "summary"
        return LlmResponse(
            agent=e.agent,
            delta=e.text,
            channel=e.channel,
            phase=e.phase,
            turn=0 if summary else e.turn,
        )

    @staticmethod
    def _step(e: StepEvent) -> Event:
        return TaskProgress(agent=e.agent, step=e.step, message=e.message, turn=e.turn)

    @staticmethod
    def _tool_start(e: ToolStart) -> Event:
        return ToolCallStart(
            agent=e.agent, call_id=e.call_id, server=e.server, tool=e.tool, arguments=e.arguments
        )

    def _tool_end(self, e: ToolEnd) -> Event:
        result = e.result
        if result is not None and len(result) > self.preview_chars:
            cut = len(result) - self.preview_chars
            result = f"{result[: self.preview_chars]}… [{cut} more characters]"
        return ToolCallComplete(
            agent=e.agent,
            call_id=e.call_id,
            server=e.server,
            tool=e.tool,
            result=result,
            error=e.error,
            duration_ms=round(e.duration_s * 1000.0, 3),
        )

    def _usage(self, e: UsageEvent) -> Usage:
        self.input_tokens += e.input_tokens
        self.output_tokens += e.output_tokens
        return self.usage

    @staticmethod
    def _error(e: AgentErrorEvent) -> Event:
        return ErrorEvent(agent=e.agent, code=e.code, message=e.message, retryable=e.retryable)

    # -- start and end of a run

    @staticmethod
    def started(task: str, agent_name: str, model: str, provider: str = "") -> TaskStarted:
        return TaskStarted(input=task, agent_name=agent_name, model=model, provider=provider)

    def failure(self, exc: BaseException) -> TaskFailed:
        """``task_failed`` for an exception that ended a run."""
        if isinstance(exc, TaskFailedError):
            return TaskFailed(
                reason=exc.reason, code=exc.failure_code, summary=exc.summary, usage=self.usage
            )
        if isinstance(exc, LLMError):
            provider = f"{exc.provider}: " if exc.provider else ""
            return TaskFailed(
                reason=f"the model failed ({exc.code}): {provider}{exc.message}",
                code="provider_error",
                usage=self.usage,
            )
        if isinstance(exc, AgentError):
            return TaskFailed(reason=exc.message, code=exc.code, usage=self.usage)
        return TaskFailed(
            reason=f"internal error: {type(exc).__name__}: {exc}", code="internal", usage=self.usage
        )
