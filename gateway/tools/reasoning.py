"""The reasoning tool: hand a hard sub-problem to a stronger model.

``python -m gateway.tools.reasoning`` serves ``reasoning(question)`` over stdio. The question
goes, alone with a short system prompt, to the model the agent config names in the server's
environment, through the project's own providers (:mod:`gateway.agent.llm`): any OpenAI or
OpenAI-compatible server, or Anthropic. The model's answer is the result; its hidden reasoning is
not returned.

Environment: ``OSPARK_REASONING_PROVIDER`` (``openai`` or ``anthropic``; default ``openai``),
``OSPARK_REASONING_MODEL`` (required, e.g. ``o3``), ``OSPARK_REASONING_API_KEY`` (default: the
provider's usual ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``), ``OSPARK_REASONING_BASE_URL``
(optional), ``OSPARK_REASONING_MAX_TOKENS`` (8192), ``OSPARK_REASONING_TIMEOUT_S`` (600),
``OSPARK_REASONING_MAX_CHARS`` (answer cut, 50,000). A missing model or key, or a provider error,
is a clear tool error.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from ..agent.config import LLMConfig
from ..agent.errors import LLMError
from ..agent.llm import LLMRequest, Message, TextDelta, make_provider
from ._common import ToolError, env_float, env_int, env_str, truncate

SYSTEM_PROMPT = (
    "You are a careful expert reasoner helping another agent. Solve the problem you are given "
    "step by step, check your work, and end with a clear, self-contained answer. You have no "
    "tools, no internet and no files: reason only from what the problem states."
)
MAX_QUESTION_CHARS = 100_000

server: MCPServer[None] = MCPServer(
    "reasoning",
    instructions="Send a hard, self-contained reasoning problem to a stronger model.",
    log_level="WARNING",
)


def reasoning_config() -> LLMConfig:
    """The model to ask, from the environment (see the module docstring)."""
    provider = env_str("OSPARK_REASONING_PROVIDER", "openai").lower()
    if provider not in ("openai", "anthropic"):
        raise ToolError(f"OSPARK_REASONING_PROVIDER must be openai or anthropic, got {provider!r}")
    model = env_str("OSPARK_REASONING_MODEL")
    if not model:
        raise ToolError("OSPARK_REASONING_MODEL is not set: name the model to reason with")
    usual = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
    key = env_str("OSPARK_REASONING_API_KEY") or env_str(usual)
    base_url = env_str("OSPARK_REASONING_BASE_URL") or None
    if not key and base_url is None:
        raise ToolError(
            f"no API key for the reasoning model: set OSPARK_REASONING_API_KEY or {usual}"
        )
    return LLMConfig(
        provider=provider,
        model_name=model,
        api_key=key or None,
        base_url=base_url,
        max_tokens=env_int("OSPARK_REASONING_MAX_TOKENS", 8192),
        timeout_s=env_float("OSPARK_REASONING_TIMEOUT_S", 600.0),
        max_retries=0,
    )


async def ask(question: str, config: LLMConfig) -> str:
    """The model's answer to ``question`` (streamed, collected)."""
    provider = make_provider(config)
    request = LLMRequest(
        messages=(Message("system", SYSTEM_PROMPT), Message("user", question)), tools=()
    )
    parts: list[str] = []
    try:
        async with provider.stream(request) as deltas:
            async for delta in deltas:
                if isinstance(delta, TextDelta):
                    parts.append(delta.text)
    except LLMError as exc:
        raise ToolError(f"the reasoning model ({config.model_name}) failed: {exc}") from None
    finally:
        await provider.aclose()
    return "".join(parts).strip()


@server.tool()
async def reasoning(question: str) -> str:
    """Ask a stronger model to reason through a hard problem (maths, logic, puzzles, careful
    analysis of facts you already gathered). It cannot search, read files or run code, so put
    everything it needs in the question.

    Args:
        question: the complete, self-contained problem.
    """
    if not question.strip():
        raise ToolError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise ToolError(f"the question is longer than {MAX_QUESTION_CHARS:,} characters")
    config = reasoning_config()
    answer = await ask(question, config)
    if not answer:
        raise ToolError(f"the reasoning model ({config.model_name}) returned no answer")
    return truncate(answer, env_int("OSPARK_REASONING_MAX_CHARS", 50_000), "answer")


def main() -> None:
    server.run("stdio")


if __name__ == "__main__":
    main()
