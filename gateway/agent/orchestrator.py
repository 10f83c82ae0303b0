"""The Orchestrator: MiroFlow's agent loop with streaming hooks.

See the package docstring (:mod:`gateway.agent`) for the public contract; this module holds the
loop itself: turns, tool calls, sub-agents, the summary with its context-limit retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .config import AgentConfig, AgentSpec, LLMConfig, default_config
from .errors import (
    AgentError,
    ContextLimitError,
    LLMError,
    NetworkError,
    RateLimitError,
    TaskFailedError,
    ToolError,
)
from .events import AgentErrorEvent, CoreEvent, LLMDelta, StepEvent, ToolEnd, ToolStart, UsageEvent
from .files import TaskFile, describe_files, local_file, task_env
from .llm import (
    TOOL_SEPARATOR,
    LLMProvider,
    LLMRequest,
    Message,
    ReasoningDelta,
    ReasoningSignature,
    Stop,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallAssembler,
    ToolSpec,
    make_provider,
)
from .prompts import SUMMARY_PROMPT, SYSTEM_PROMPT, _get_task_guidance, extract_boxed, task_message
from .tools import ToolManager
from .trace import TraceRecorder, write_trace

log = logging.getLogger("gateway.agent")

if TYPE_CHECKING:
    from gateway.streaming.runner import Interaction

Sink = Callable[[CoreEvent], None]

USER_SERVER = "user"
"""The pseudo-server of the built-in ``ask_user`` tool (offered when someone can be asked)."""
DENIED = "denied by the user"
NO_ANSWER = "no answer: nobody answered in time"

_ASK_USER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "description": "What to ask the user."},
        "options": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Optional: the answers to choose from.",
        },
    },
    "required": ["question"],
}

AGENTS_SERVER = "agents"
OMITTED_RESULT = "[older tool result omitted to save context]"

_SUBAGENT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "task": {
            "type": "string",
            "description": "A self-contained description of what the sub-agent should do.",
        }
    },
    "required": ["task"],
}


@dataclass(frozen=True, slots=True)
class _Reply:
    text: str
    reasoning: str
    signature: str | None
    tool_calls: tuple[ToolCall, ...]


@dataclass(slots=True)
class _Run:
    """State of one ``run_main_agent`` call, shared by the main agent and its sub-agents."""

    task_id: str
    tools: ToolManager
    providers: dict[LLMConfig, LLMProvider]
    subagent_counts: dict[tuple[str, str], int]
    history: list[tuple[str, str]] = field(default_factory=list)
    interaction: Interaction | None = None
    require_approval: tuple[str, ...] = field(default_factory=tuple)

    def needs_approval(self, server: str, tool: str) -> bool:
        if server == USER_SERVER:
            return False
        names = {"*", server, tool, f"{server}/{tool}"}
        return any(entry in names for entry in self.require_approval)


def _ignore(event: CoreEvent) -> None:
    """The sink of an Orchestrator nobody listens to."""


class Orchestrator:
    """Runs one task: the main agent loop, its tools and sub-agents, and the final summary.

    ``sink`` is called synchronously with every :mod:`~gateway.agent.events` event, in order.
    It must be cheap and must not block; an exception it raises ends the run.
    ``trace`` (:class:`~gateway.agent.trace.TraceRecorder`) records the run as it goes, fed by
    the same hooks; with ``config.output_dir`` set it is also written there when the run ends.
    """

    def __init__(self, config: AgentConfig | None = None, *, sink: Sink | None = None) -> None:
        self.config = config if config is not None else default_config()
        self.trace = TraceRecorder()
        # Bound once: the per-delta path goes to the sink alone (the trace has the text in the
        # messages), every other event to the sink and the trace.
        trace = self.trace
        if sink is None:
            self._emit_delta: Sink = _ignore
            self._emit: Sink = trace
        else:

            def emit(event: CoreEvent) -> None:
                sink(event)
                trace(event)

            self._emit_delta = sink
            self._emit = emit
        self.task_id: str | None = None
        self.failed_reason: str | None = None
        self.input_tokens = 0
        self.output_tokens = 0

    @staticmethod
    def _get_task_guidance(chinese_context: bool) -> str:
        """The guidance appended to every task (:func:`.prompts._get_task_guidance`)."""
        return _get_task_guidance(chinese_context)

    async def run_main_agent(
        self,
        task_description: str,
        task_file_name: str | Path | None = None,
        task_id: str | None = None,
        *,
        files: Sequence[TaskFile] = (),
        history: Sequence[tuple[str, str]] = (),
        interaction: Interaction | None = None,
        require_approval: Sequence[str] = (),
    ) -> tuple[str, str]:
        """Run the task to its end and return ``(summary, final_answer)``.

        ``task_file_name`` (a local path, as in MiroFlow) and ``files`` are the task's files:
        the agent is told their paths, names, types and sizes, and opens them with its tools.
        ``history`` holds earlier turns of the conversation (``(user input, answer)``, oldest
        first), given to the main agent before the task; when a turn's call does not fit the
        model's context, the oldest is dropped (a ``history_trimmed`` step) and the call made
        again. With ``interaction`` the main agent may ask the user (the ``user__ask_user``
        tool), tool calls named by ``require_approval`` (and the config's) wait for an
        approval, and steering messages are taken at each turn boundary.
        ``final_answer`` is the content of the last ``\\boxed{...}`` in the summary (``""`` if
        none). Raises :class:`TaskInputError` for a task file that does not exist,
        :class:`TaskFailedError` when the summary needed part of the history to be dropped or
        could not be produced, :class:`LLMError` subclasses when the model cannot be used
        (after retries), and lets ``CancelledError`` propagate.
        """
        self.task_id = task_id or uuid.uuid4().hex
        self.failed_reason = None
        all_files = list(files)
        if task_file_name is not None and str(task_file_name):
            all_files.append(local_file(task_file_name))
        self.trace.begin(self.task_id, task_description, all_files)
        task = task_description + describe_files(all_files)
        run = _Run(
            self.task_id,
            ToolManager(self.config.tools, task_env(all_files)),
            {},
            {},
            history=list(history),
            interaction=interaction,
            require_approval=(*self.config.require_approval, *require_approval),
        )
        status, summary, answer, error = "failed", "", "", ""
        try:
            cancelled = False
            try:
                summary, failed = await self._run_agent(
                    run, self.config.main_agent, task, "main", depth=0
                )
            except asyncio.CancelledError:
                cancelled = True
                raise
            finally:
                try:
                    if cancelled:
                        # The run ends as soon as its work has stopped (the HTTP stream closed,
                        # the tool call cancelled): its stdio servers shut down in the
                        # background, each in its own host task (see gateway.agent.tools).
                        run.tools.close()
                    else:
                        await run.tools.aclose()
                finally:
                    for provider in run.providers.values():
                        await provider.aclose()
            if failed is not None:
                self.failed_reason = error = failed
                # Every failure the loop itself reports comes from the context window.
                raise TaskFailedError(failed, summary, failure_code="context_limit")
            answer = extract_boxed(summary)
            status = "completed"
            return summary, answer
        except asyncio.CancelledError:
            status, error = "cancelled", "cancelled"
            raise
        except Exception as exc:
            error = error or f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.trace.finish(status, summary=summary, final_answer=answer, error=error)
            if self.config.output_dir is not None:
                await self._write_trace(self.config.output_dir)

    async def _write_trace(self, directory: Path) -> None:
        trace = self.trace.to_dict()
        try:
            # A thread: encoding a long history and writing it must not hold up other tasks.
            await asyncio.shield(asyncio.to_thread(write_trace, directory, trace))
        except OSError as exc:
            log.warning("cannot write the trace of task %s to %s: %s", self.task_id, directory, exc)
        except asyncio.CancelledError:  # cancelled while writing: the thread still finishes it
            pass

    # --- one agent ---------------------------------------------------------------------------

    def _provider(self, run: _Run, config: LLMConfig) -> LLMProvider:
        provider = run.providers.get(config)
        if provider is None:
            provider = run.providers[config] = make_provider(config)
        return provider

    async def _tool_specs(
        self, run: _Run, spec: AgentSpec, path: str, depth: int
    ) -> tuple[list[ToolSpec], dict[str, tuple[str, str]]]:
        specs: list[ToolSpec] = []
        names: dict[str, tuple[str, str]] = {}
        for server in spec.tool_config:
            try:
                infos = await run.tools.list_tools(server)
            except ToolError as exc:
                self._emit(AgentErrorEvent(path, "tool_server_failed", f"{server}: {exc}", False))
                continue
            for info in infos:
                if (server, info.name) in spec.tool_blacklist:
                    continue
                name = f"{server}{TOOL_SEPARATOR}{info.name}"
                specs.append(ToolSpec(name, info.description, info.parameters))
                names[name] = (server, info.name)
        if depth < self.config.max_depth:
            for sub in spec.sub_agents:
                name = f"{AGENTS_SERVER}{TOOL_SEPARATOR}{sub}"
                description = (
                    f"Run the sub-agent {sub!r}: a full agent with its own tools. Give it a "
                    "self-contained task; it returns its final report."
                )
                specs.append(ToolSpec(name, description, _SUBAGENT_PARAMETERS))
                names[name] = (AGENTS_SERVER, sub)
        if depth == 0 and run.interaction is not None:
            name = f"{USER_SERVER}{TOOL_SEPARATOR}ask_user"
            description = (
                "Ask the user a question and wait for the answer (with options: a choice). Use "
                "it when you need a decision or a fact only the user has."
            )
            specs.append(ToolSpec(name, description, _ASK_USER_PARAMETERS))
            names[name] = (USER_SERVER, "ask_user")
        return specs, names

    async def _run_agent(
        self, run: _Run, spec: AgentSpec, task: str, path: str, depth: int
    ) -> tuple[str, str | None]:
        """One agent loop then its summary: returns ``(summary, failed_reason or None)``."""
        provider = self._provider(run, spec.llm)
        tools, names = await self._tool_specs(run, spec, path, depth)
        self._emit(
            StepEvent(
                path,
                "tools_listed",
                f"{len(tools)} tools: {', '.join(t.name for t in tools) or 'none'}",
                None,
            )
        )
        main = depth == 0
        messages: list[Message] = [Message("system", SYSTEM_PROMPT)]
        history = run.history if main else []
        for asked, answered in history:
            messages += [Message("user", asked), Message("assistant", answered)]
        messages.append(Message("user", task_message(task, self.config.chinese_context)))
        self.trace.agent_started(path, spec.name, task, messages)
        initial = len(messages)
        interaction = run.interaction if main else None
        turn = 0
        while spec.max_turns == -1 or turn < spec.max_turns:
            turn += 1
            self._emit(StepEvent(path, "turn_started", f"turn {turn}", turn))
            if interaction is not None:
                for text in interaction.take_messages(turn):
                    messages.append(Message("user", text))
            try:
                reply = await self._call_llm(provider, spec, path, messages, tools, "turn", turn)
            except ContextLimitError as exc:
                if history and _drop_oldest_turn(messages):
                    history.pop(0)
                    initial -= 2
                    self._emit(
                        StepEvent(
                            path,
                            "history_trimmed",
                            "dropped the oldest earlier turn of the conversation to fit the "
                            f"model's context ({len(history)} left)",
                            turn,
                        )
                    )
                    turn -= 1
                    continue
                self._emit(
                    StepEvent(path, "context_limit", f"{exc.message} — going to the summary", turn)
                )
                break
            messages.append(
                Message(
                    "assistant",
                    reply.text,
                    reply.tool_calls,
                    reasoning=reply.reasoning,
                    reasoning_signature=reply.signature,
                )
            )
            if not reply.tool_calls:
                if interaction is not None and interaction.has_messages():
                    continue  # the user said more: another turn sees it
                break
            await self._run_tool_calls(run, spec, path, depth, reply.tool_calls, names, messages)
        else:
            self._emit(
                StepEvent(path, "max_turns_reached", f"stopped after {spec.max_turns} turns", turn)
            )
        if interaction is not None:
            interaction.close_messages()
        try:
            return await self._summarise(provider, spec, path, messages, initial, turn)
        finally:
            self.trace.agent_finished(path)

    async def _run_tool_calls(
        self,
        run: _Run,
        spec: AgentSpec,
        path: str,
        depth: int,
        calls: Sequence[ToolCall],
        names: dict[str, tuple[str, str]],
        messages: list[Message],
    ) -> None:
        limit = spec.max_tool_calls_per_turn
        allowed = list(calls) if limit == -1 else list(calls[:limit])
        skipped = [] if limit == -1 else list(calls[limit:])
        for call in allowed:
            messages.append(await self._run_tool_call(run, path, depth, call, names))
        if skipped:
            self._emit(
                StepEvent(
                    path,
                    "tool_calls_skipped",
                    f"{len(skipped)} tool calls not run: at most {limit} per turn",
                    None,
                )
            )
        for call in skipped:
            messages.append(
                Message(
                    "tool",
                    f"Not run: at most {limit} tool calls are run per turn. Call it again in a "
                    "later turn if you still need it.",
                    tool_call_id=call.id,
                    is_error=True,
                )
            )

    async def _run_tool_call(
        self, run: _Run, path: str, depth: int, call: ToolCall, names: dict[str, tuple[str, str]]
    ) -> Message:
        server, tool = names.get(call.name, ("unknown", call.name))
        try:
            arguments = json.loads(call.arguments or "{}")
            bad_arguments = None if isinstance(arguments, dict) else "arguments must be an object"
        except json.JSONDecodeError as exc:
            arguments, bad_arguments = {}, f"invalid JSON arguments: {exc}"
        if not isinstance(arguments, dict):
            arguments = {}
        denied: str | None = None
        if call.name in names and bad_arguments is None and run.needs_approval(server, tool):
            denied = await self._approve(run, call.id, server, tool, arguments)
        self._emit(ToolStart(path, call.id, server, tool, arguments))
        started = time.perf_counter()
        result: str | None = None
        error: str | None = None
        try:
            if call.name not in names:
                raise ToolError(f"unknown tool {call.name!r}", server=server, tool=tool)
            if bad_arguments is not None:
                raise ToolError(bad_arguments, server=server, tool=tool)
            if denied is not None:
                error = denied
            elif server == USER_SERVER:
                result = await self._ask_user(run, arguments)
            elif server == AGENTS_SERVER:
                result = await self._run_subagent(run, tool, arguments, path, depth)
            else:
                result = await run.tools.call_tool(server, tool, arguments)
        except ToolError as exc:
            error = exc.message
            self._emit(AgentErrorEvent(path, exc.code, f"{server}/{tool}: {error}", False))
        except asyncio.CancelledError:
            self._emit(
                ToolEnd(
                    path, call.id, server, tool, None, "cancelled", time.perf_counter() - started
                )
            )
            raise
        self._emit(
            ToolEnd(path, call.id, server, tool, result, error, time.perf_counter() - started)
        )
        if error is not None:
            return Message("tool", f"Error: {error}", tool_call_id=call.id, is_error=True)
        return Message("tool", result or "", tool_call_id=call.id)

    async def _approve(
        self, run: _Run, call_id: str, server: str, tool: str, arguments: dict[str, Any]
    ) -> str | None:
        """Ask for the approval of a tool call: ``None`` when approved, else what the model is
        told instead of the result."""
        interaction = run.interaction
        if interaction is None:
            return f"{DENIED}: approval is required and nobody can be asked"
        prompt = f"Allow {server}/{tool} with {json.dumps(arguments, ensure_ascii=False)}?"
        received = await interaction.ask(
            "approval", prompt, server=server, tool=tool, arguments=arguments, call_id=call_id
        )
        if received.approved:
            return None
        if received.timed_out:
            return f"{DENIED} ({NO_ANSWER})"
        return f"{DENIED}: {received.text}" if received.text else DENIED

    async def _ask_user(self, run: _Run, arguments: dict[str, Any]) -> str:
        question = arguments.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ToolError(
                "ask_user needs a non-empty 'question'", server=USER_SERVER, tool="ask_user"
            )
        options = arguments.get("options")
        interaction = run.interaction
        assert interaction is not None  # the tool is offered only with an interaction
        if isinstance(options, list) and options and all(isinstance(o, str) for o in options):
            received = await interaction.ask("choice", question, options=list(options))
        else:
            received = await interaction.ask("question", question)
        if received.timed_out:
            return NO_ANSWER
        return received.choice if received.choice is not None else received.text or ""

    async def _run_subagent(
        self, run: _Run, name: str, arguments: dict[str, Any], parent: str, depth: int
    ) -> str:
        task = arguments.get("task")
        if not isinstance(task, str) or not task.strip():
            raise ToolError(
                "the sub-agent needs a non-empty 'task' string", server=AGENTS_SERVER, tool=name
            )
        key = (parent, name)
        run.subagent_counts[key] = run.subagent_counts.get(key, 0) + 1
        path = f"{parent}/{name}#{run.subagent_counts[key]}"
        self._emit(StepEvent(path, "subagent_started", task, None))
        try:
            summary, failed = await self._run_agent(
                run, self.config.sub_agents[name], task, path, depth + 1
            )
        except AgentError as exc:
            # A sub-agent's model failing is the parent's tool failing, not the task failing.
            self._emit(StepEvent(path, "subagent_finished", f"failed: {exc}", None))
            raise ToolError(f"sub-agent failed: {exc}", server=AGENTS_SERVER, tool=name) from exc
        self._emit(StepEvent(path, "subagent_finished", failed or "done", None))
        if failed is not None:
            return f"{summary}\n\n(Note: this report is incomplete: {failed}.)"
        return summary

    # --- LLM calls ---------------------------------------------------------------------------

    async def _call_llm(
        self,
        provider: LLMProvider,
        spec: AgentSpec,
        path: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        phase: Literal["turn", "summary"],
        turn: int,
    ) -> _Reply:
        """One LLM call, retried with exponential backoff on network errors and rate limits."""
        visible = _trim_tool_results(messages, spec.keep_tool_result)
        request = LLMRequest(visible, tools, phase)
        attempt = 0
        while True:
            try:
                return await self._stream(provider, path, request, phase, turn)
            except (NetworkError, RateLimitError) as exc:
                if attempt >= spec.llm.max_retries:
                    raise
                attempt += 1
                delay = spec.llm.retry_backoff_s * 2 ** (attempt - 1)
                self._emit(AgentErrorEvent(path, exc.code, exc.message, True))
                self._emit(
                    StepEvent(
                        path,
                        "retrying",
                        f"{exc.code}: retry {attempt} of {spec.llm.max_retries} in {delay:g}s",
                        turn,
                    )
                )
                await asyncio.sleep(delay)

    async def _stream(
        self,
        provider: LLMProvider,
        path: str,
        request: LLMRequest,
        phase: Literal["turn", "summary"],
        turn: int,
    ) -> _Reply:
        text: list[str] = []
        reasoning: list[str] = []
        signature: str | None = None
        calls = ToolCallAssembler()
        stop = "end_turn"
        async with provider.stream(request) as deltas:
            async for delta in deltas:
                if isinstance(delta, TextDelta):
                    text.append(delta.text)
                    self._emit_delta(LLMDelta(path, delta.text, "text", phase, turn))
                elif isinstance(delta, ReasoningDelta):
                    reasoning.append(delta.text)
                    self._emit_delta(LLMDelta(path, delta.text, "reasoning", phase, turn))
                elif isinstance(delta, ReasoningSignature):
                    signature = delta.signature
                elif isinstance(delta, TokenUsage):
                    self.input_tokens += delta.input_tokens
                    self.output_tokens += delta.output_tokens
                    self._emit(UsageEvent(path, delta.input_tokens, delta.output_tokens))
                elif isinstance(delta, Stop):
                    stop = delta.reason
                else:
                    calls.feed(delta)
        if stop == "context_limit":
            raise ContextLimitError("the model ran out of context window", provider=provider.name)
        return _Reply("".join(text), "".join(reasoning), signature, calls.calls())

    async def _summarise(
        self,
        provider: LLMProvider,
        spec: AgentSpec,
        path: str,
        messages: list[Message],
        initial: int,
        turn: int,
    ) -> tuple[str, str | None]:
        """The summary call; on a context error drop the latest exchange and retry."""
        dropped = 0
        while True:
            self._emit(StepEvent(path, "summarising", "writing the final report", turn))
            request = [*messages, Message("user", SUMMARY_PROMPT)]
            try:
                reply = await self._call_llm(provider, spec, path, request, (), "summary", turn)
            except ContextLimitError as exc:
                if len(messages) <= initial:
                    reason = (
                        "context limit: the summary does not fit in the model's context window "
                        "even with only the task left"
                    )
                    text = (
                        f"No summary could be produced: {exc.message}. Every intermediate step "
                        f"was dropped ({dropped} exchanges) and the task description alone is "
                        "still too long for the model."
                    )
                    return text, reason
                last = max(
                    (i for i in range(initial, len(messages)) if messages[i].role == "assistant"),
                    default=initial,
                )
                removed = len(messages) - last
                del messages[last:]
                dropped += 1
                self._emit(
                    StepEvent(
                        path,
                        "context_limit",
                        f"summary too long for the context window: dropped the latest exchange "
                        f"({removed} messages) and retrying",
                        turn,
                    )
                )
                continue
            # Kept in the history for the trace: the request and the report.
            messages.extend((request[-1], Message("assistant", reply.text)))
            failed = None
            if dropped:
                failed = (
                    f"context limit: {dropped} exchange(s) were dropped from the history to fit "
                    "the summary, so information was lost"
                )
            return reply.text, failed


def _drop_oldest_turn(messages: list[Message]) -> bool:
    """Drop the oldest earlier turn (a user and an assistant message after the system
    prompt); False when there is none."""
    if len(messages) >= 4 and messages[1].role == "user" and messages[2].role == "assistant":
        del messages[1:3]
        return True
    return False


def _trim_tool_results(messages: Sequence[Message], keep: int) -> Sequence[Message]:
    """``keep_tool_result``: only the last ``keep`` tool results are shown to the model."""
    if keep == -1:
        return messages
    positions = [i for i, m in enumerate(messages) if m.role == "tool"]
    if len(positions) <= keep:
        return messages
    hidden = set(positions[: len(positions) - keep])
    return [
        Message("tool", OMITTED_RESULT, tool_call_id=m.tool_call_id) if i in hidden else m
        for i, m in enumerate(messages)
    ]


__all__ = ["LLMError", "Orchestrator", "Sink"]
