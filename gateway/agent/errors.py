"""The agent core's exception tree.

::

    AgentError                      root; every error has a stable ``code``
    ├── ConfigError                 invalid configuration; ``key`` names the bad key
    ├── LLMError                    a provider call failed (``provider``, ``message`` kept verbatim)
    │   ├── ContextLimitError       the prompt is longer than the model's context window
    │   ├── RateLimitError          HTTP 429 / overloaded; retried with backoff
    │   ├── AuthError               bad or missing API key (401/403)
    │   ├── NetworkError            connection failed, dropped mid-stream or timed out; retried
    │   └── BadRequestError         the provider rejected the request (other 4xx, bad response)
    ├── ToolError                   a tool call failed; reported to the model, never fatal
    └── TaskFailedError             the run ended but must be treated as failed
                                    (``reason``; ``summary`` holds what could be produced)

``retryable`` says whether repeating the same call may succeed.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error raised by :mod:`gateway.agent`."""

    code: str = "agent_error"
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AgentError):
    """The configuration is invalid; ``key`` is the dotted path of the offending key."""

    code = "invalid_config"

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class LLMError(AgentError):
    """A call to a language-model provider failed. ``message`` is the provider's own text."""

    code = "llm_error"

    def __init__(self, message: str, *, provider: str = "", status_code: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code


class ContextLimitError(LLMError):
    """The prompt does not fit in the model's context window."""

    code = "context_limit"


class RateLimitError(LLMError):
    """The provider is rate limiting or overloaded."""

    code = "rate_limited"
    retryable = True


class AuthError(LLMError):
    """The provider refused the credentials."""

    code = "auth"


class NetworkError(LLMError):
    """The connection failed, timed out or dropped in the middle of a stream."""

    code = "network"
    retryable = True


class BadRequestError(LLMError):
    """The provider rejected the request or sent a response we cannot read."""

    code = "bad_request"


class ToolError(AgentError):
    """A tool call failed. The loop reports it to the model as the tool's result."""

    code = "tool_error"

    def __init__(self, message: str, *, server: str, tool: str) -> None:
        super().__init__(message)
        self.server = server
        self.tool = tool


class TaskFailedError(AgentError):
    """The task ran to its end but its result cannot be trusted.

    Raised by :meth:`Orchestrator.run_main_agent` when the summary could only be produced after
    dropping part of the history (``summary`` is that summary), or could not be produced at all
    (``summary`` is an explanatory text). ``failure_code`` is the ``task_failed`` event's code
    (``context_limit`` when the context window was the cause).
    """

    code = "task_failed"

    def __init__(self, reason: str, summary: str = "", *, failure_code: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.summary = summary
        self.failure_code = failure_code
