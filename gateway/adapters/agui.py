"""The AG-UI adapter: ``POST /agui`` takes a ``RunAgentInput`` and streams the run as AG-UI
events over SSE (the official ``ag-ui-protocol`` types and ``EventEncoder``; the encoder of
ag-ui-protocol 1.0 encodes SSE only — it names the protobuf media type but has no encoding for
it — so there is no binary encoding here).

A run is one of our tasks: ``runId`` is the task id (a retried POST with the same ``runId``
and input joins the same task), the input is the last user message's text, ``threadId`` is our
thread (the agent sees the thread's earlier turns; on a busy thread the run waits for the
unfinished turn, see :func:`~gateway.adapters.common.start_turn`). :class:`AGUITranslator` is
the one translation point from our events to AG-UI's.

Questions and approvals are AG-UI interrupts: at our ``input_required`` the run ends with
``RUN_FINISHED`` outcome ``interrupt`` (one :class:`~ag_ui.core.Interrupt`, its id
``<task id>~<request id>``) while the task waits; the next run on the thread carries
``resume: [{interruptId, status, payload}]``, which answers (``resolved``) or cancels
(``cancelled``) the task, and streams the rest of it under the new ``runId``. Until then the
interrupted run's subscription stays open (:class:`~gateway.adapters.common.Parked`), so the
task is not detached.

Resume after a drop: each SSE event carries ``id: <seq>`` (on the last AG-UI event made from
one of our events). A POST of the same input with ``Last-Event-ID: <seq>`` continues after that
seq without ``RUN_STARTED`` again, and loses nothing the task log still holds.

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
from datetime import UTC, datetime
from typing import Any

import msgspec
from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    Interrupt,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    SubagentFinishedEvent,
    SubagentFinishedSuspendedOutcome,
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
    Caller,
    Feed,
    Parked,
    Refusal,
    StartGate,
    asks,
    authorize,
    checked_id,
    open_stream,
    parse_last_event_id,
    read_body,
    start_options,
    start_turn,
)
from gateway.tasks import Delivery, Subscription, TaskError
from protocol import events as ours
from protocol.errors import ErrorCode
from protocol.events import Event, InputRequest
from protocol.frames import EventFrame, Gap, Input

__all__ = ["AGUITranslator", "agui_routes"]

RUN_PATH = "/agui"

INTERRUPT_SEPARATOR = "~"
"""Between the task id and the request id in an interrupt's id (no task id contains it)."""


@dataclass(slots=True)
class _Agent:
    """What is open for one agent path: a message (its stream key and id) and a step."""

    stream: tuple[str, str, int] | None = None
    message_id: str = ""
    channel: str = "text"
    step: str | None = None
    last_text_id: str | None = None
    agent_calls: list[str] = field(default_factory=list)


def _schema(request: InputRequest) -> dict[str, Any]:
    """The JSON Schema of a resume ``payload`` answering ``request``."""
    if request.kind == "approval":
        properties: dict[str, Any] = {
            "approved": {"type": "boolean"},
            "text": {"type": "string", "description": "why (optional)"},
        }
        required = ["approved"]
    elif request.kind == "choice":
        properties = {"choice": {"type": "string", "enum": list(request.options or [])}}
        required = ["choice"]
    else:
        properties = {"text": {"type": "string", "minLength": 1}}
        required = ["text"]
    return {"type": "object", "properties": properties, "required": required}


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
    ``input_required``                            ``RUN_FINISHED`` outcome ``interrupt`` (an
                                                  approval's tool call announced first:
                                                  ``TOOL_CALL_START/ARGS/END``; open
                                                  sub-agents ``SUBAGENT_FINISHED``
                                                  ``suspended``); a replayed one already
                                                  answered: ``CUSTOM`` ``ospark.input_required``
    other ``task_progress``, ``task_started``,    ``CUSTOM`` ``ospark.progress``,
    ``error``, ``input_received``,                ``ospark.started``, ``ospark.error``,
    ``user_message``, a ``gap``                   ``ospark.input_received``,
                                                  ``ospark.user_message``, ``ospark.gap``
    ``task_completed``                            ``RUN_FINISHED`` (outcome ``success``,
                                                  result ``{final_answer, summary}``)
    ``task_failed``                               ``RUN_ERROR`` (message, code)
    ``task_cancelled``                            ``RUN_FINISHED`` (outcome ``cancelled``)
    ===========================================  ===========================================

    Whatever is open (messages, steps, sub-agents) is closed before the run's last event.
    """

    def __init__(
        self,
        thread_id: str,
        run_id: str,
        *,
        task_id: str | None = None,
        settled_seq: int = 0,
        pending: str | None = None,
        announced: InputRequest | None = None,
    ) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.task_id = task_id or run_id
        """Our task: the run itself, or for a run that resumes an interrupt, the task it
        continues."""
        self.settled_seq = settled_seq
        self.pending = pending
        """See :func:`~gateway.adapters.common.asks`: which ``input_required`` is an interrupt."""
        self.interrupted = False
        """Whether the last event ended the run with an interrupt."""
        self._announced = announced
        """The approval whose tool call's ``TOOL_CALL_START/ARGS/END`` the interrupted run
        sent: here that call gets only its result."""
        self._agents: dict[str, _Agent] = {}
        self._subagents: list[str] = []  # started and not finished, in order
        self._ids = 0

    def started(self) -> RunStartedEvent:
        return RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id)

    def __call__(self, item: Delivery) -> list[BaseEvent]:
        self.interrupted = asks(item, self.settled_seq, self.pending)
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
    def call_id(path: str, call_id: str) -> str:
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

    def _finish_subagent(
        self, path: str, result: str, out: list[BaseEvent], suspended: list[str] | None = None
    ) -> None:
        self._close_agent(path, out)
        if path in self._subagents:
            self._subagents.remove(path)
            outcome = None
            if suspended is not None:
                outcome = SubagentFinishedSuspendedOutcome(interrupt_ids=suspended or None)
            out.append(
                SubagentFinishedEvent(subagent_run_id=path, result=result or None, outcome=outcome)
            )

    def _close_all(self, out: list[BaseEvent], interrupt: tuple[str, str] | None = None) -> None:
        """Close everything open; with ``interrupt`` (the asking agent's path and the
        interrupt's id), the open sub-agents end ``suspended``."""
        for path in reversed(self._subagents[:]):
            if interrupt is None:
                self._finish_subagent(path, "", out)
            else:
                ids = [interrupt[1]] if path == interrupt[0] else []
                self._finish_subagent(path, "", out, suspended=ids)
        self._close_agent("main", out)

    def _interrupt(self, path: str, agent: _Agent, request: InputRequest) -> list[BaseEvent]:
        """The run ends: the task waits for ``request``."""
        out: list[BaseEvent] = []
        sub = self._sub(path)
        self._close_message(path, agent, out)
        call_id = None
        if request.kind == "approval" and request.call_id is not None:
            call_id = self.call_id(path, request.call_id)
            name = f"{request.server}__{request.tool}" if request.server else request.tool
            out.append(
                ToolCallStartEvent(
                    tool_call_id=call_id,
                    tool_call_name=name or "",
                    parent_message_id=agent.last_text_id,
                    subagent_run_id=sub,
                )
            )
            args = json.dumps(request.arguments or {})
            out.append(ToolCallArgsEvent(tool_call_id=call_id, delta=args, subagent_run_id=sub))
            out.append(ToolCallEndEvent(tool_call_id=call_id, subagent_run_id=sub))
        interrupt_id = f"{self.task_id}{INTERRUPT_SEPARATOR}{request.request_id}"
        self._close_all(out, (path, interrupt_id))
        expires = None
        if request.expires_at is not None:
            expires = datetime.fromtimestamp(request.expires_at, UTC).isoformat()
        interrupt = Interrupt(
            id=interrupt_id,
            reason="tool_call" if call_id is not None else "input_required",
            message=request.prompt,
            tool_call_id=call_id,
            response_schema=_schema(request),
            expires_at=expires,
            metadata={"ospark": msgspec.to_builtins(request)},
            subagent_run_id=sub,
        )
        out.append(
            RunFinishedEvent(
                thread_id=self.thread_id,
                run_id=self.run_id,
                outcome=RunFinishedInterruptOutcome(interrupts=[interrupt]),
            )
        )
        return out

    # -- per kind

    def _translate(self, event: Event) -> list[BaseEvent]:
        out: list[BaseEvent] = []
        path = event.agent
        agent = self._agent(path, out)
        sub = self._sub(path)
        match event:
            case ours.LlmResponse(delta=delta, channel=channel, phase=phase, turn=turn):
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
            case ours.ToolCallStart(call_id=call_id, server=server, tool=tool, arguments=arguments):
                announced = self._announced
                if announced is not None and (call_id, server, tool) == (
                    announced.call_id,
                    announced.server,
                    announced.tool,
                ):
                    self._announced = None  # the interrupted run announced it
                    return out
                call_id = self.call_id(path, call_id)
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
            case ours.ToolCallComplete(call_id=call_id, result=result, error=error):
                call_id = self.call_id(path, call_id)
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
            case ours.TaskProgress(step="turn_started", turn=turn):
                self._close_message(path, agent, out)
                self._close_step(path, agent, out)
                agent.step = f"turn {turn}"
                out.append(StepStartedEvent(step_name=agent.step, subagent_run_id=sub))
            case ours.TaskProgress(step="summarising"):
                self._close_message(path, agent, out)
                self._close_step(path, agent, out)
                agent.step = "summary"
                out.append(StepStartedEvent(step_name=agent.step, subagent_run_id=sub))
            case ours.TaskProgress(step="subagent_started", message=message):
                self._start_subagent(path, message, out)
            case ours.TaskProgress(step="subagent_finished", message=message):
                self._finish_subagent(path, message, out)
            case ours.InputRequired(request=request) if self.interrupted:
                out.extend(self._interrupt(path, agent, request))
            case (
                ours.TaskProgress()
                | ours.TaskStarted()
                | ours.ErrorEvent()
                | ours.InputRequired()
                | ours.InputReceived()
                | ours.UserMessage()
            ):
                value = msgspec.to_builtins(event)
                name = f"ospark.{value['kind'].removeprefix('task_')}"
                out.append(CustomEvent(name=name, value=value, subagent_run_id=sub))
            case ours.TaskCompleted(final_answer=answer, summary=summary):
                self._close_all(out)
                out.append(
                    RunFinishedEvent(
                        thread_id=self.thread_id,
                        run_id=self.run_id,
                        result={"final_answer": answer, "summary": summary},
                        outcome=RunFinishedSuccessOutcome(),
                    )
                )
            case ours.TaskFailed(reason=reason, code=code):
                self._close_all(out)
                out.append(RunErrorEvent(message=reason, code=code))
            case ours.TaskCancelled(reason=reason):
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
    ErrorCode.INVALID_ANSWER: 400,
    ErrorCode.INPUT_TOO_LONG: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_MANY_TASKS: 429,
    ErrorCode.TASK_EXISTS: 409,
    ErrorCode.THREAD_BUSY: 409,
    ErrorCode.UNKNOWN_TASK: 404,
    ErrorCode.UNKNOWN_REQUEST: 409,
    ErrorCode.ALREADY_ANSWERED: 409,
    ErrorCode.TASK_FINISHED: 409,
}

_HOW_TO_ANSWER = ": run with resume (its interrupt), resolved or cancelled"


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


def _ours(run: RunAgentInput) -> Any:
    props = run.forwarded_props
    return props.get("ospark") if isinstance(props, dict) else None


def _resumed(task_id: str, request: InputRequest, payload: Any) -> Input:
    """Our ``input`` from a resume ``payload``: ``{"text"}`` (or a string) for a question,
    ``{"approved", "text"}`` (or a boolean) for an approval, ``{"choice"}`` (or a string) for a
    choice. What is missing or mistyped is refused by the task (``invalid_answer``)."""
    fields = payload if isinstance(payload, dict) else {}
    answer = Input(id="agui", task_id=task_id, request_id=request.request_id)
    text = payload if isinstance(payload, str) else fields.get("text")
    text = text if isinstance(text, str) else None
    if request.kind == "question":
        return msgspec.structs.replace(answer, text=text)
    if request.kind == "choice":
        choice = payload if isinstance(payload, str) else fields.get("choice")
        return msgspec.structs.replace(answer, choice=choice if isinstance(choice, str) else None)
    approved = payload if isinstance(payload, bool) else fields.get("approved")
    approved = approved if isinstance(approved, bool) else None
    return msgspec.structs.replace(answer, approved=approved, text=text)


@dataclass(slots=True)
class _Run:
    """What a request streams: its translator, feed and subscription."""

    translator: AGUITranslator
    feed: Feed
    sub: Subscription | None


def agui_routes(settings: Any) -> list[Route]:
    """The AG-UI route for a gateway's settings."""
    limits = settings.connection.limits
    gate = StartGate(limits.max_input_chars, limits.max_starts_per_second)
    max_body = limits.max_frame_bytes
    max_stream = settings.connection.max_outbox
    parked = Parked()

    async def start(caller: Caller, run_input: RunAgentInput) -> _Run:
        run_id = checked_id(run_input.run_id, "runId")
        thread_id = checked_id(run_input.thread_id, "threadId")
        options, if_busy = start_options(
            _ours(run_input), "forwardedProps.ospark", on_detach="cancel"
        )
        result, feed = await start_turn(
            caller,
            gate,
            _user_text(run_input),
            thread_id=thread_id,
            options=options,
            if_busy=if_busy,
            feed_limit=max_stream,
            task_id=run_id,
            how_to_answer=_HOW_TO_ANSWER,
        )
        translator = AGUITranslator(thread_id, run_id)
        if result.existing:  # a retry: the log is replayed, and its questions may be answered
            status = await caller.manager.status(caller.principal, run_id)
            translator.settled_seq = status.last_seq
            if status.state == "input_required" and status.pending_input is not None:
                translator.pending = status.pending_input.request_id
        return _Run(translator, feed, result.subscription)

    async def resume(caller: Caller, run_input: RunAgentInput, after: int | None) -> _Run:
        manager, owner = caller.manager, caller.principal
        entries = run_input.resume or []
        if len(entries) != 1:
            raise TaskError(
                ErrorCode.INVALID_FIELD,
                "resume must answer exactly one interrupt: this agent raises one per run",
            )
        entry = entries[0]
        task_id, _, request_id = entry.interrupt_id.partition(INTERRUPT_SEPARATOR)
        if not request_id:
            raise TaskError(
                ErrorCode.UNKNOWN_REQUEST,
                f"interrupt {entry.interrupt_id[:80]!r} is not one this agent raised",
            )
        run_id = checked_id(run_input.run_id, "runId")
        status = await manager.status(owner, task_id)
        if status.thread_id != run_input.thread_id:
            raise TaskError(
                ErrorCode.INVALID_FIELD,
                f"interrupt {entry.interrupt_id!r} belongs to thread {status.thread_id!r}: "
                "resume on the interrupted run's thread",
            )
        asked = status.pending_input if status.state == "input_required" else None
        feed = Feed(max_stream)
        cursor = status.last_seq if after is None else after
        sub = await manager.subscribe(owner, task_id, after_seq=cursor, deliver=feed.deliver)
        try:
            if entry.status == "cancelled":
                verdict = await manager.cancel(owner, task_id, "the interrupt was cancelled")
                if verdict != "accepted" and after is None:
                    raise TaskError(
                        ErrorCode.TASK_FINISHED,
                        f"task {task_id!r} has ended ({status.state}); nothing to cancel",
                        task_id=task_id,
                    )
            elif asked is not None and asked.request_id == request_id:
                answer = _resumed(task_id, asked, entry.payload)
                gate.check_length(answer.text)
                await manager.answer(owner, answer)
            elif after is None:  # not open (any more): the task says why
                await manager.answer(
                    owner, Input(id="agui", task_id=task_id, request_id=request_id)
                )
        except BaseException:
            sub.close()
            raise
        parked.release(owner, task_id)
        announced = asked if asked is not None and asked.kind == "approval" else None
        translator = AGUITranslator(
            run_input.thread_id,
            run_id,
            task_id=task_id,
            settled_seq=status.last_seq,
            announced=announced,
        )
        return _Run(translator, feed, sub)

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
        try:
            if run_input.resume:
                opened = await resume(caller, run_input, after)
            else:
                opened = await start(caller, run_input)
        except TaskError as exc:
            return _refuse(_STATUS.get(exc.code, 503), exc.code.value, exc.message)
        encoder = EventEncoder(accept=request.headers.get("accept", ""))
        return StreamingResponse(
            _stream(request, opened, encoder, after, parked),
            media_type=encoder.get_content_type(),
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return [Route(RUN_PATH, run, methods=["POST"])]


async def _stream(
    request: Request, opened: _Run, encoder: EventEncoder, after: int | None, parked: Parked
) -> AsyncIterator[str]:
    """The run's SSE body: ``RUN_STARTED`` (unless resuming after ``after``), then the task's
    events from the feed, until the run's last event."""
    translator, feed, sub = opened.translator, opened.feed, opened.sub
    try:
        with open_stream(request, "agui"):
            if after is None:
                yield encoder.encode(translator.started())
            async for item in feed:
                events = translator(item)  # always: it keeps what is open
                seq = item.seq if type(item) is EventFrame else None
                if after is None or seq is None or seq > after:
                    for i, event in enumerate(events):
                        text = encoder.encode(event)
                        if seq is not None and i == len(events) - 1:
                            text = f"id: {seq}\n{text}"
                        yield text
                if translator.interrupted:
                    return
    finally:
        if sub is not None:
            if translator.interrupted and not sub.closed:
                parked.park(sub, feed)  # the task waits for its resume: keep it watched
            else:
                sub.close()  # with the run's policy `cancel`, this cancels an aborted run
