"""The AG-UI adapter: ``POST /agui`` takes a ``RunAgentInput`` and streams the run as AG-UI
events over SSE (the official ``ag-ui-protocol`` types and ``EventEncoder``; its encoder
offers SSE only, so there is no binary encoding here).

The run is one of our tasks: ``runId`` is the task id (a retried POST with the same ``runId``
and input joins the same task), the input is the last user message's text, ``threadId`` is
echoed (conversation threads are not on this branch's protocol). :class:`AGUITranslator` is
the one translation point from our events to AG-UI's.

Resume: each SSE event carries ``id: <seq>`` (on the last AG-UI event made from one of our
events). A POST of the same input with ``Last-Event-ID: <seq>`` continues after that seq
without ``RUN_STARTED`` again, and loses nothing the task log still holds.

Cancellation policy: a client that aborts its request (``HttpAgent.abortRun()``, a closed
page) cancels the run, exactly as our ``cancel`` does (the task's detach policy ``cancel``).
A run that should survive a dropped connection (to be resumed with ``Last-Event-ID``) asks
for it with ``forwardedProps: {"ospark": {"detach_ttl": <seconds>}}``: it then keeps running
that long with nobody connected.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    SubagentFinishedEvent,
    SubagentStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from ag_ui.encoder import EventEncoder
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.adapters.common import (
    Feed,
    Refusal,
    StartGate,
    authorize,
    open_stream,
    parse_last_event_id,
    read_body,
)
from gateway.tasks import Delivery, TaskError
from protocol.errors import ErrorCode
from protocol.events import (
    ErrorEvent,
    Event,
    LlmResponse,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    ToolCallComplete,
    ToolCallStart,
)
from protocol.frames import EventFrame, Gap, StartOptions

__all__ = ["AGUITranslator", "agui_routes"]

RUN_PATH = "/agui"


@dataclass(slots=True)
class _Agent:
    """What is open for one agent path: a message (its stream key and id) and a step."""

    stream: tuple[str, str, int] | None = None
    message_id: str = ""
    channel: str = "text"
    step: str | None = None
    last_text_id: str | None = None
    agent_calls: list[str] = field(default_factory=list)


class AGUITranslator:
    """The one place where our events become AG-UI events, for one run.

    ===========================================  ===========================================
    ours                                          AG-UI
    ===========================================  ===========================================
    (the stream begins)                           ``RUN_STARTED`` (threadId, runId)
    ``llm_response`` channel ``text``             ``TEXT_MESSAGE_START/CONTENT/END`` (one
                                                  message per agent, turn and phase)
    ``llm_response`` channel ``reasoning``        ``REASONING_START``, ``REASONING_MESSAGE_
                                                  START/CONTENT/END``, ``REASONING_END``
    ``tool_call_start``                           ``TOOL_CALL_START``, ``TOOL_CALL_ARGS`` (the
                                                  arguments as JSON), ``TOOL_CALL_END``; a
                                                  sub-agent's call ids get its path prefixed
    ``tool_call_complete``                        ``TOOL_CALL_RESULT`` (result or the error)
    ``task_progress`` ``turn_started``,           ``STEP_FINISHED`` of the open step, then
    ``summarising``                               ``STEP_STARTED`` (``turn N``, ``summary``)
    ``task_progress`` ``subagent_started/…ed``    ``SUBAGENT_STARTED`` / ``SUBAGENT_FINISHED``;
                                                  a sub-agent's events carry ``subagentRunId``
                                                  (its agent path)
    other ``task_progress``, ``task_started``,    ``CUSTOM`` ``ospark.progress``,
    ``error``, a ``gap``                          ``ospark.started``, ``ospark.error``,
                                                  ``ospark.gap``
    ``task_completed``                            ``RUN_FINISHED`` (outcome ``success``,
                                                  result ``{final_answer, summary}``)
    ``task_failed``                               ``RUN_ERROR`` (message, code)
    ``task_cancelled``                            ``RUN_FINISHED`` (outcome ``cancelled``)
    ===========================================  ===========================================

    Whatever is open (messages, steps, sub-agents) is closed before the run's last event.
    """

    def __init__(self, thread_id: str, run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self._agents: dict[str, _Agent] = {}
        self._subagents: list[str] = []  # started and not finished, in order
        self._ids = 0

    def started(self) -> RunStartedEvent:
        return RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id)

    def __call__(self, item: Delivery) -> list[BaseEvent]:
        if type(item) is Gap:
            return [
                CustomEvent(
                    name="ospark.gap",
                    value={
                        "after_seq": item.after_seq,
                        "first_available_seq": item.first_available_seq,
                    },
                )
            ]
        frame: EventFrame = item  # type: ignore[assignment]
        out = self._translate(frame.event)
        stamp = int(frame.ts * 1000)
        for event in out:
            event.timestamp = stamp
        return out

    # -- helpers

    def _new_id(self, kind: str) -> str:
        self._ids += 1
        return f"{self.run_id}-{kind}-{self._ids}"

    def _agent(self, path: str, out: list[BaseEvent]) -> _Agent:
        agent = self._agents.get(path)
        if agent is None:
            agent = self._agents[path] = _Agent()
            if path != "main":
                self._start_subagent(path, "", out)
        return agent

    @staticmethod
    def _call_id(path: str, call_id: str) -> str:
        """Tool call ids are unique per agent here, per run in AG-UI: a sub-agent's are
        prefixed with its path."""
        return call_id if path == "main" else f"{path}:{call_id}"

    @staticmethod
    def _sub(path: str) -> str | None:
        return None if path == "main" else path

    def _parent_call(self, path: str) -> str | None:
        parent = self._agents.get(path.rsplit("/", 1)[0]) if "/" in path else None
        return parent.agent_calls[-1] if parent is not None and parent.agent_calls else None

    def _start_subagent(self, path: str, description: str, out: list[BaseEvent]) -> None:
        if path in self._subagents:
            return
        self._subagents.append(path)
        out.append(
            SubagentStartedEvent(
                subagent_run_id=path,
                name=path.rsplit("/", 1)[-1],
                description=description or None,
                parent_subagent_run_id=self._sub(path.rsplit("/", 1)[0]) if "/" in path else None,
                parent_tool_call_id=self._parent_call(path),
            )
        )

    def _close_message(self, path: str, agent: _Agent, out: list[BaseEvent]) -> None:
        if agent.stream is None:
            return
        sub, mid = self._sub(path), agent.message_id
        if agent.channel == "reasoning":
            out.append(ReasoningMessageEndEvent(message_id=mid, subagent_run_id=sub))
            out.append(ReasoningEndEvent(message_id=mid, subagent_run_id=sub))
        else:
            out.append(TextMessageEndEvent(message_id=mid, subagent_run_id=sub))
        agent.stream = None

    def _close_step(self, path: str, agent: _Agent, out: list[BaseEvent]) -> None:
        if agent.step is not None:
            out.append(StepFinishedEvent(step_name=agent.step, subagent_run_id=self._sub(path)))
            agent.step = None

    def _close_agent(self, path: str, out: list[BaseEvent]) -> None:
        agent = self._agents.get(path)
        if agent is not None:
            self._close_message(path, agent, out)
            self._close_step(path, agent, out)

    def _finish_subagent(self, path: str, result: str, out: list[BaseEvent]) -> None:
        self._close_agent(path, out)
        if path in self._subagents:
            self._subagents.remove(path)
            out.append(SubagentFinishedEvent(subagent_run_id=path, result=result or None))

    def _close_all(self, out: list[BaseEvent]) -> None:
        for path in reversed(self._subagents[:]):
            self._finish_subagent(path, "", out)
        self._close_agent("main", out)

    # -- per kind

    def _translate(self, event: Event) -> list[BaseEvent]:
        out: list[BaseEvent] = []
        path = event.agent
        agent = self._agent(path, out)
        sub = self._sub(path)
        match event:
            case LlmResponse(delta=delta, channel=channel, phase=phase, turn=turn):
                key = (channel, phase, turn)
                if agent.stream != key:
                    self._close_message(path, agent, out)
                    mid = self._new_id("reasoning" if channel == "reasoning" else "msg")
                    agent.stream, agent.message_id, agent.channel = key, mid, channel
                    if channel == "reasoning":
                        out.append(ReasoningStartEvent(message_id=mid, subagent_run_id=sub))
                        out.append(ReasoningMessageStartEvent(message_id=mid, subagent_run_id=sub))
                    else:
                        agent.last_text_id = mid
                        out.append(
                            TextMessageStartEvent(
                                message_id=mid, role="assistant", subagent_run_id=sub
                            )
                        )
                if channel == "reasoning":
                    out.append(
                        ReasoningMessageContentEvent(
                            message_id=agent.message_id, delta=delta, subagent_run_id=sub
                        )
                    )
                elif delta:
                    out.append(
                        TextMessageContentEvent(
                            message_id=agent.message_id, delta=delta, subagent_run_id=sub
                        )
                    )
            case ToolCallStart(call_id=call_id, server=server, tool=tool, arguments=arguments):
                call_id = self._call_id(path, call_id)
                self._close_message(path, agent, out)
                if server == "agents":
                    agent.agent_calls.append(call_id)
                out.append(
                    ToolCallStartEvent(
                        tool_call_id=call_id,
                        tool_call_name=f"{server}__{tool}" if server else tool,
                        parent_message_id=agent.last_text_id,
                        subagent_run_id=sub,
                    )
                )
                out.append(
                    ToolCallArgsEvent(
                        tool_call_id=call_id, delta=json.dumps(arguments), subagent_run_id=sub
                    )
                )
                out.append(ToolCallEndEvent(tool_call_id=call_id, subagent_run_id=sub))
            case ToolCallComplete(call_id=call_id, result=result, error=error):
                call_id = self._call_id(path, call_id)
                self._close_message(path, agent, out)
                out.append(
                    ToolCallResultEvent(
                        message_id=f"{call_id}-result",
                        tool_call_id=call_id,
                        content=f"error: {error}" if error is not None else (result or ""),
                        role="tool",
                        subagent_run_id=sub,
                    )
                )
            case TaskProgress(step="turn_started", turn=turn):
                self._close_message(path, agent, out)
                self._close_step(path, agent, out)
                agent.step = f"turn {turn}"
                out.append(StepStartedEvent(step_name=agent.step, subagent_run_id=sub))
            case TaskProgress(step="summarising"):
                self._close_message(path, agent, out)
                self._close_step(path, agent, out)
                agent.step = "summary"
                out.append(StepStartedEvent(step_name=agent.step, subagent_run_id=sub))
            case TaskProgress(step="subagent_started", message=message):
                self._start_subagent(path, message, out)
            case TaskProgress(step="subagent_finished", message=message):
                self._finish_subagent(path, message, out)
            case TaskProgress():
                value = msgspec.to_builtins(event)
                out.append(CustomEvent(name="ospark.progress", value=value, subagent_run_id=sub))
            case TaskStarted():
                value = msgspec.to_builtins(event)
                out.append(CustomEvent(name="ospark.started", value=value))
            case ErrorEvent():
                value = msgspec.to_builtins(event)
                out.append(CustomEvent(name="ospark.error", value=value, subagent_run_id=sub))
            case TaskCompleted(final_answer=answer, summary=summary):
                self._close_all(out)
                out.append(
                    RunFinishedEvent(
                        thread_id=self.thread_id,
                        run_id=self.run_id,
                        result={"final_answer": answer, "summary": summary},
                        outcome=RunFinishedSuccessOutcome(),
                    )
                )
            case TaskFailed(reason=reason, code=code):
                self._close_all(out)
                out.append(RunErrorEvent(message=reason, code=code))
            case TaskCancelled(reason=reason):
                self._close_all(out)
                out.append(
                    RunFinishedEvent(
                        thread_id=self.thread_id,
                        run_id=self.run_id,
                        result={"cancelled": reason},
                        outcome=RunFinishedCancelledOutcome(),
                    )
                )
        return out


# --------------------------------------------------------------------------- the endpoint

_STATUS = {
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.INPUT_TOO_LONG: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_TASKS: 429,
    ErrorCode.TASK_EXISTS: 409,
}


def _refuse(status: int, code: str, message: str) -> Response:
    """A refused run: the HTTP status and, as the body, a ``RUN_ERROR`` event."""
    headers = {"WWW-Authenticate": 'Bearer realm="ospark"'} if status == 401 else None
    body = RunErrorEvent(message=message, code=code).model_dump(mode="json", by_alias=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _user_text(run: RunAgentInput) -> str:
    for message in reversed(run.messages):
        if message.role == "user":
            content = message.content
            if isinstance(content, str):
                return content
            return "\n".join(
                getattr(part, "text", "") for part in content if getattr(part, "type", "") == "text"
            )
    return ""


def _options(run: RunAgentInput) -> StartOptions:
    props = run.forwarded_props if isinstance(run.forwarded_props, dict) else {}
    ours = props.get("ospark")
    ttl = ours.get("detach_ttl") if isinstance(ours, dict) else None
    if ttl is None:
        return StartOptions(on_detach="cancel")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 <= ttl <= 86_400:
        raise TaskError(
            ErrorCode.INVALID_FIELD,
            "forwardedProps.ospark.detach_ttl must be a number of seconds from 0 to 86400",
        )
    return StartOptions(on_detach="keep", detach_ttl=float(ttl))


def agui_routes(settings: Any) -> list[Route]:
    """The AG-UI route for a gateway's settings."""
    limits = settings.connection.limits
    gate = StartGate(limits.max_input_chars, limits.max_starts_per_second)
    max_body = limits.max_frame_bytes
    max_stream = settings.connection.max_outbox

    async def run(request: Request) -> Response:
        caller = authorize(request, "agui")
        if isinstance(caller, Refusal):
            return _refuse(caller.status, caller.label, caller.reason)
        read = await read_body(request, max_body)
        if read is None:
            return _refuse(413, "invalid_input", f"request body over the limit of {max_body} bytes")
        body = await read.body()
        try:
            after = parse_last_event_id(request)
            run_input = RunAgentInput.model_validate_json(body)
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                message = f"not a RunAgentInput: {where}: {first['msg']}"
            else:
                message = str(exc)
            return _refuse(400, "invalid_input", message)
        text = _user_text(run_input)
        feed = Feed(max_stream)
        try:
            task_id = msgspec.convert(run_input.run_id, type=_task_id_type())
            options = _options(run_input)
            gate.check(caller.principal, text)
            result = await caller.manager.start(
                caller.principal, text, task_id=task_id, options=options, deliver=feed.deliver
            )
        except msgspec.ValidationError:
            return _refuse(
                400,
                "invalid_input",
                "runId must be 1-128 characters of letters, digits and . _ : -",
            )
        except TaskError as exc:
            return _refuse(_STATUS.get(exc.code, 503), exc.code.value, exc.message)
        translator = AGUITranslator(run_input.thread_id, result.task_id)
        encoder = EventEncoder(accept=request.headers.get("accept", ""))
        sub = result.subscription

        async def stream() -> AsyncIterator[str]:
            try:
                with open_stream(request, "agui"):
                    if after is None:
                        yield encoder.encode(translator.started())
                    async for item in feed:
                        events = translator(item)  # always: it keeps what is open
                        seq = item.seq if type(item) is EventFrame else None
                        if after is not None and seq is not None and seq <= after:
                            continue
                        for i, event in enumerate(events):
                            text = encoder.encode(event)
                            if seq is not None and i == len(events) - 1:
                                text = f"id: {seq}\n{text}"
                            yield text
            finally:
                if sub is not None:
                    sub.close()  # with the run's policy `cancel`, this cancels an aborted run

        return StreamingResponse(
            stream(),
            media_type=encoder.get_content_type(),
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return [Route(RUN_PATH, run, methods=["POST"])]


def _task_id_type() -> Any:
    from protocol.frames import TaskId

    return TaskId
