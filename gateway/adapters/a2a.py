"""The A2A adapter: the agent card and A2A's JSON-RPC (with SSE streaming) over our tasks.

Routes: ``GET /.well-known/agent-card.json`` (public, like ``/healthz``) and ``POST /a2a``
(JSON-RPC 2.0; the A2A 1.0 method names ``SendMessage``, ``SendStreamingMessage``, ``GetTask``,
``ListTasks``, ``CancelTask``, ``SubscribeToTask`` and the 0.3 names ``message/send``,
``message/stream``, ``tasks/get``, ``tasks/cancel``, ``tasks/resubscribe``). The official
``a2a-sdk`` does the JSON-RPC framing, validation, SSE and error shapes; this module is its
:class:`~a2a.server.request_handlers.RequestHandler` over the :class:`~gateway.tasks.TaskManager`
and the one translation point from our events to A2A's (:class:`A2ATranslator`).

Resume: every A2A event carries our ``seq`` in its ``metadata`` (``{"seq": n, "event": …}``).
A stream that dropped is resumed with ``SubscribeToTask`` / ``tasks/resubscribe`` and the HTTP
header ``Last-Event-ID: <last seq seen>``: the task's snapshot, then every event after that seq
from the task's log, then live ones; each event once. Without the header the snapshot stands
for the past and only events after it follow.

Cancellation policy: ``CancelTask`` is our ``cancel``: it stops the work and answers once the
task's ``task_cancelled`` is written (its state ``canceled``). A client that drops a stream does
not cancel the task: it keeps running under the detach policy (like a dropped WebSocket).

Conversations: ``contextId`` is our thread. A message with a ``contextId`` starts the thread's
next turn (the agent sees the earlier ones); one without gets a new thread whose id is the
task's ``contextId``. On a busy thread the new turn waits for the unfinished one
(:func:`~gateway.adapters.common.start_turn`), unless that one waits for an answer.

Questions and approvals: our ``input_required`` is A2A's ``input-required`` (the prompt as
text, the request as a data part); a stream ends there, as the standard's interrupted states
do, and a message with that ``taskId`` answers it (:func:`answer_of`) and streams the rest. A
message with the ``taskId`` of a task that waits for nothing is a steering message (our
``message``).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import Any

import msgspec
from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.request_handler import RequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Artifact,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    HTTPAuthSecurityScheme,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    Role,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StringList,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import (
    A2AError,
    ExtendedAgentCardNotConfiguredError,
    InvalidParamsError,
    InvalidRequestError,
    PushNotificationNotSupportedError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf import json_format
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import gateway
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
    terminal_event,
)
from gateway.tasks import Delivery, Subscription, TaskError
from protocol import events as ours
from protocol.errors import ErrorCode
from protocol.events import Event, InputRequest
from protocol.frames import EventFrame, Gap, Input
from protocol.frames import TaskStatus as OurStatus

__all__ = ["A2ATranslator", "OSparkRequestHandler", "a2a_routes", "agent_card"]

RPC_PATH = "/a2a"
CARD_PATH = "/.well-known/agent-card.json"

StreamItem = Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent

_STATES: dict[str, Any] = {
    "pending": TaskState.TASK_STATE_SUBMITTED,
    "running": TaskState.TASK_STATE_WORKING,
    "input_required": TaskState.TASK_STATE_INPUT_REQUIRED,
    "completed": TaskState.TASK_STATE_COMPLETED,
    "failed": TaskState.TASK_STATE_FAILED,
    "cancelled": TaskState.TASK_STATE_CANCELED,
}

_WAITING_STEPS = frozenset({"queued", "waiting_for_thread"})
"""Steps of a task that has not begun: its A2A state stays ``submitted``."""


def _text(text: str) -> Part:
    return Part(text=text)


def _data(value: dict[str, Any]) -> Part:
    part = Part()
    part.data.struct_value.update(value)
    return part


def _agent_message(task_id: str, context_id: str, *parts: Part) -> Message:
    return Message(
        message_id=uuid.uuid4().hex,
        role=Role.ROLE_AGENT,
        task_id=task_id,
        context_id=context_id,
        parts=parts,
    )


def _request_parts(request: InputRequest) -> tuple[Part, Part]:
    """What an ``input-required`` shows: the prompt as text, our request as data."""
    return _text(request.prompt), _data(msgspec.to_builtins(request))


class A2ATranslator:
    """The one place where our events become A2A events, for one task.

    ======================================  ================================================
    ours                                    A2A (every event: ``metadata {seq, event}``)
    ======================================  ================================================
    ``task_started``, ``task_progress``,    ``status-update`` ``working``, an agent message
    ``error``                               with the step (or error) as text (``submitted``
                                            for the steps ``queued``, ``waiting_for_thread``)
    ``llm_response`` (turn, both channels)  ``status-update`` ``working``, the delta as text
    ``llm_response`` (summary, text)        ``artifact-update`` ``summary`` (appended chunks)
    ``tool_call_start``/``_complete``,      ``status-update`` ``working``, a data part
    ``user_message``
    ``input_required``                      ``status-update`` ``input-required``: the prompt
                                            as text, the request as a data part
    ``input_received``                      ``status-update`` ``working``, a data part
    ``task_completed``                      ``artifact-update`` ``answer`` (the final answer),
                                            ``artifact-update`` ``summary`` (whole, last
                                            chunk), ``status-update`` ``completed``
    ``task_failed``                         ``status-update`` ``failed`` (reason as text)
    ``task_cancelled``                      ``status-update`` ``canceled`` (reason as text)
    ``gap`` (events lost to retention)      ``status-update`` with ``metadata {gap}``
    ======================================  ================================================
    """

    def __init__(
        self, task_id: str, context_id: str, settled_seq: int = 0, pending: str | None = None
    ) -> None:
        self.task_id = task_id
        self.context_id = context_id
        self.settled_seq = settled_seq
        """The ``last_seq`` of the status the stream began from: a replayed question up to
        there has been answered, unless it is the ``pending`` one."""
        self.pending = pending
        self._summary_started = False
        self.state: Any = TaskState.TASK_STATE_SUBMITTED
        self.interrupted = False
        """Whether the last event (or the snapshot) asks a question still open: a stream
        ends there."""

    # -- the snapshot (first event of a stream, tasks/get, tasks/cancel)

    def task(self, status: OurStatus, input: str, terminal: Event | None = None) -> Task:
        state = _STATES.get(status.state, TaskState.TASK_STATE_WORKING)
        self.state = state
        self.interrupted = status.state == "input_required"
        task = Task(
            id=self.task_id,
            context_id=self.context_id,
            status=TaskStatus(state=state),
            history=[
                Message(
                    message_id=f"{self.task_id}-input",
                    role=Role.ROLE_USER,
                    task_id=self.task_id,
                    context_id=self.context_id,
                    parts=[_text(input)],
                )
            ],
        )
        task.status.timestamp.FromSeconds(int(status.updated or 0))
        task.metadata.update({"last_seq": status.last_seq, "progress": status.progress or ""})
        if status.state == "input_required" and status.pending_input is not None:
            parts = _request_parts(status.pending_input)
            task.status.message.CopyFrom(_agent_message(self.task_id, self.context_id, *parts))
        if terminal is not None:
            message = self._terminal_message(terminal)
            if message is not None:
                task.status.message.CopyFrom(message)
            if type(terminal) is ours.TaskCompleted:
                task.artifacts.extend(self._final_artifacts(terminal))
        return task

    # -- events

    def __call__(self, item: Delivery) -> list[StreamItem]:
        self.interrupted = asks(item, self.settled_seq, self.pending)
        if type(item) is Gap:
            update = self._status(TaskState.TASK_STATE_WORKING)
            update.metadata.update(
                {
                    "gap": {
                        "after_seq": item.after_seq,
                        "first_available_seq": item.first_available_seq,
                    }
                }
            )
            return [update]
        frame: EventFrame = item  # type: ignore[assignment]
        meta = {"seq": frame.seq, "event": msgspec.to_builtins(frame.event)}
        out = self._translate(frame.event)
        for event in out:
            event.metadata.update(meta)
        return out

    def _translate(self, event: Event) -> list[StreamItem]:
        tid, cid = self.task_id, self.context_id
        working = TaskState.TASK_STATE_WORKING
        match event:
            case ours.LlmResponse(phase="summary", channel="text", delta=delta):
                append = self._summary_started
                self._summary_started = True
                return [
                    TaskArtifactUpdateEvent(
                        task_id=tid,
                        context_id=cid,
                        artifact=Artifact(
                            artifact_id="summary", name="summary", parts=[_text(delta)]
                        ),
                        append=append,
                        last_chunk=False,
                    )
                ]
            case ours.LlmResponse(delta=delta):
                return [self._status(working, _text(delta))]
            case ours.TaskStarted(agent_name=name, model=model):
                return [self._status(working, _text(f"started: agent {name}, model {model}"))]
            case ours.TaskProgress(step=step, message=message):
                state = TaskState.TASK_STATE_SUBMITTED if step in _WAITING_STEPS else working
                return [self._status(state, _text(message or step))]
            case ours.ErrorEvent(code=code, message=message):
                return [self._status(working, _text(f"error ({code}): {message}"))]
            case ours.InputRequired(request=request):
                state = TaskState.TASK_STATE_INPUT_REQUIRED
                return [self._status(state, *_request_parts(request))]
            case (
                ours.ToolCallStart()
                | ours.ToolCallComplete()
                | ours.InputReceived()
                | ours.UserMessage()
            ):
                return [self._status(working, _data(msgspec.to_builtins(event)))]
            case ours.TaskCompleted():
                artifacts: list[StreamItem] = [
                    TaskArtifactUpdateEvent(
                        task_id=tid, context_id=cid, artifact=a, append=False, last_chunk=True
                    )
                    for a in self._final_artifacts(event)
                ]
                return [*artifacts, self._final(TaskState.TASK_STATE_COMPLETED, event)]
            case ours.TaskFailed():
                return [self._final(TaskState.TASK_STATE_FAILED, event)]
            case ours.TaskCancelled():
                return [self._final(TaskState.TASK_STATE_CANCELED, event)]
        return []

    def _status(self, state: Any, *parts: Part) -> TaskStatusUpdateEvent:
        self.state = state
        status = TaskStatus(state=state)
        if parts:
            status.message.CopyFrom(_agent_message(self.task_id, self.context_id, *parts))
        status.timestamp.GetCurrentTime()
        return TaskStatusUpdateEvent(
            task_id=self.task_id, context_id=self.context_id, status=status
        )

    def _final(self, state: Any, event: Event) -> TaskStatusUpdateEvent:
        update = self._status(state)
        message = self._terminal_message(event)
        if message is not None:
            update.status.message.CopyFrom(message)
        return update

    def _terminal_message(self, event: Event) -> Message | None:
        match event:
            case ours.TaskCompleted(summary=summary, final_answer=answer):
                text = answer or summary
            case ours.TaskFailed(reason=reason, code=code):
                text = f"failed ({code}): {reason}"
            case ours.TaskCancelled(reason=reason):
                text = f"cancelled: {reason}"
            case _:
                return None
        return _agent_message(self.task_id, self.context_id, _text(text))

    @staticmethod
    def _final_artifacts(event: ours.TaskCompleted) -> list[Artifact]:
        return [
            Artifact(
                artifact_id="answer",
                name="answer",
                description="The final answer (from \\boxed{} in the report)",
                parts=[_text(event.final_answer)],
            ),
            Artifact(
                artifact_id="summary",
                name="summary",
                description="The agent's final report",
                parts=[_text(event.summary)],
            ),
        ]


# --------------------------------------------------------------------------- answers

_APPROVE = re.compile(
    r"^\s*(?:(yes|y|ok|approve|approved|allow)|(no|n|deny|denied|reject))\b[\s.,:;!-]*(.*)$",
    re.IGNORECASE | re.DOTALL,
)


def _texts(message: Message) -> str:
    return "\n".join(p.text for p in message.parts if p.WhichOneof("content") == "text")


def _data_of(message: Message) -> dict[str, Any]:
    """The message's data parts that are objects, merged."""
    data: dict[str, Any] = {}
    for part in message.parts:
        if part.WhichOneof("content") == "data":
            value = json_format.MessageToDict(part.data)
            if isinstance(value, dict):
                data.update(value)
    return data


def answer_of(task_id: str, request: InputRequest, message: Message) -> Input:
    """Our ``input`` for ``request`` from an A2A message.

    - a question: the message's text (or ``text`` of a data part);
    - an approval: a data part ``{"approved": true|false, "text": "why"}``, or a text that
      begins with ``approve``/``yes``/``ok`` or ``deny``/``no``/``reject`` (what follows is
      the reason);
    - a choice: a data part ``{"choice": "…"}``, or the text: one of the options.

    A data part's ``request_id`` names the request (the pending one by default). Raises
    ``invalid_answer``."""
    data = _data_of(message)
    text = _texts(message).strip()
    rid = data.get("request_id")
    answer = Input(
        id="a2a",
        task_id=task_id,
        request_id=rid if isinstance(rid, str) and rid else request.request_id,
    )
    given = data.get("text")
    if request.kind == "question":
        return msgspec.structs.replace(answer, text=given if isinstance(given, str) else text)
    if request.kind == "choice":
        choice = data.get("choice")
        return msgspec.structs.replace(answer, choice=choice if isinstance(choice, str) else text)
    approved = data.get("approved")
    if isinstance(approved, bool):
        return msgspec.structs.replace(
            answer, approved=approved, text=given if isinstance(given, str) else (text or None)
        )
    words = _APPROVE.match(text)
    if words is None:
        raise TaskError(
            ErrorCode.INVALID_ANSWER,
            f"task {task_id!r} waits for an approval of {request.server}/{request.tool}: answer "
            'with a data part {"approved": true} or {"approved": false, "text": "why"}, or a '
            'text beginning with "approve" or "deny"',
            task_id=task_id,
        )
    return msgspec.structs.replace(
        answer, approved=words.group(1) is not None, text=words.group(3).strip() or None
    )


# --------------------------------------------------------------------------- errors


def _required_id(task_id: str) -> str:
    if not task_id:
        raise InvalidParamsError("params.id is required: the task's id")
    return task_id


_INVALID_PARAMS = frozenset(
    {
        ErrorCode.INVALID_FIELD,
        ErrorCode.INPUT_TOO_LONG,
        ErrorCode.INVALID_ANSWER,
        ErrorCode.UNKNOWN_REQUEST,
        ErrorCode.ALREADY_ANSWERED,
    }
)


def _a2a_error(exc: TaskError) -> A2AError:
    data = {"code": exc.code.value}
    if exc.task_id is not None:
        data["task_id"] = exc.task_id
    if exc.code == ErrorCode.UNKNOWN_TASK:
        return TaskNotFoundError(exc.message, data)
    if exc.code in _INVALID_PARAMS:
        return InvalidParamsError(exc.message, data)
    if exc.code == ErrorCode.TASK_FINISHED:
        return UnsupportedOperationError(exc.message, data)
    return InvalidRequestError(f"{exc.code.value}: {exc.message}", data)


def _context_id(status: OurStatus) -> str:
    """A task's ``contextId``: its thread (a task started without one: its own id)."""
    return status.thread_id or status.task_id


_FINAL = frozenset({"completed", "failed", "cancelled"})


async def _until_asked(feed: Feed, translator: A2ATranslator) -> AsyncIterator[StreamItem]:
    """A stream's A2A events: until the task's end, or a question it asks (A2A's interrupted
    state ``input-required`` ends a stream)."""
    async for item in feed:
        for event in translator(item):
            yield event
        if translator.interrupted:
            return


_HOW_TO_ANSWER = ": send a message with its taskId (or cancel it with CancelTask)"


# --------------------------------------------------------------------------- the handler


class OSparkRequestHandler(RequestHandler):
    """A2A requests carried out by the task manager (the SDK's handler interface)."""

    def __init__(self, gate: StartGate, *, max_stream: int, cancel_wait: float) -> None:
        self._gate = gate
        self._max_stream = max_stream
        self._cancel_wait = cancel_wait
        self._parked = Parked()

    @staticmethod
    def _caller(context: ServerCallContext) -> Caller:
        caller = context.state.get("ospark.caller")
        if not isinstance(caller, Caller):  # every route authorizes first
            raise InvalidRequestError("not authenticated")
        return caller

    async def _snapshot(self, caller: Caller, task_id: str) -> Task:
        return (await self._look(caller, task_id))[1]

    async def _look(self, caller: Caller, task_id: str) -> tuple[OurStatus, Task]:
        """The task's status and its A2A snapshot."""
        try:
            status = await caller.manager.status(caller.principal, task_id)
            terminal = None
            if status.state in _FINAL:
                terminal = await terminal_event(
                    caller.manager, caller.principal, task_id, status.last_seq
                )
            record = await caller.manager.backend.get(caller.principal, task_id)
        except TaskError as exc:
            raise _a2a_error(exc) from None
        translator = A2ATranslator(task_id, _context_id(status))
        return status, translator.task(status, record.input if record else "", terminal)

    # -- message/send and message/stream

    async def _open(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> tuple[A2ATranslator, Feed, Subscription | None, Task]:
        """Start a task, or continue the one the message names: its translator, its feed (and
        subscription), and the task's snapshot to begin a stream with."""
        caller = self._caller(context)
        message = params.message
        try:
            if message.task_id:
                return await self._continue(caller, message)
            if not any(p.WhichOneof("content") == "text" for p in message.parts):
                raise InvalidParamsError(
                    "message.parts has no text part; this agent takes text (mode text/plain)"
                )
            text = _texts(message)
            context_id = checked_id(message.context_id or uuid.uuid4().hex, "message.contextId")
            metadata = json_format.MessageToDict(params.metadata)
            options, if_busy = start_options(metadata.get("ospark"), "metadata.ospark")
            result, feed = await start_turn(
                caller,
                self._gate,
                text,
                thread_id=context_id,
                options=options,
                if_busy=if_busy,
                feed_limit=self._max_stream,
                how_to_answer=_HOW_TO_ANSWER,
            )
        except TaskError as exc:
            raise _a2a_error(exc) from None
        translator = A2ATranslator(result.task_id, result.thread_id or context_id)
        now = time.time()
        status = OurStatus(task_id=result.task_id, state=result.state, created=now, updated=now)
        return translator, feed, result.subscription, translator.task(status, text)

    async def _continue(
        self, caller: Caller, message: Message
    ) -> tuple[A2ATranslator, Feed, Subscription | None, Task]:
        """A message to a task: the answer to what it waits for, else a steering message."""
        manager, owner, task_id = caller.manager, caller.principal, message.task_id
        status = await manager.status(owner, task_id)
        context_id = _context_id(status)
        if message.context_id and message.context_id != context_id:
            raise InvalidParamsError(
                f"task {task_id!r} belongs to context {context_id!r}, not {message.context_id!r}"
            )
        if status.state in _FINAL:
            raise TaskError(
                ErrorCode.TASK_FINISHED,
                f"task {task_id!r} has ended ({status.state}); to go on with the conversation, "
                f"send a message without taskId, with contextId {context_id!r}",
                task_id=task_id,
            )
        asked = status.pending_input if status.state == "input_required" else None
        text = _texts(message)
        self._gate.check_length(text)
        answer = answer_of(task_id, asked, message) if asked is not None else None
        if answer is not None:
            self._gate.check_length(answer.text)
        if answer is None and not text.strip():
            raise TaskError(ErrorCode.INVALID_FIELD, "the message has no text to send the task")
        feed = Feed(self._max_stream)
        sub = await manager.subscribe(
            owner, task_id, after_seq=status.last_seq, deliver=feed.deliver
        )
        try:
            if answer is not None:
                await manager.answer(owner, answer)
            else:
                await manager.message(owner, task_id, text)
        except BaseException:
            sub.close()
            raise
        self._parked.release(owner, task_id)
        record = await manager.backend.get(owner, task_id)
        translator = A2ATranslator(task_id, context_id, status.last_seq)
        snapshot = translator.task(status, record.input if record else "")
        if answer is not None:  # the answer was taken: the task works again
            snapshot.status.state = translator.state = TaskState.TASK_STATE_WORKING
            snapshot.status.ClearField("message")
            translator.interrupted = False
        return translator, feed, sub, snapshot

    def _close(self, sub: Subscription | None, feed: Feed, translator: A2ATranslator) -> None:
        """End a stream's subscription; one that ended at a question is parked."""
        if sub is None:
            return
        if translator.interrupted and not sub.closed:
            self._parked.park(sub, feed)
        else:
            sub.close()

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[StreamItem]:
        translator, feed, sub, snapshot = await self._open(params, context)
        try:
            yield snapshot
            async for event in _until_asked(feed, translator):
                yield event
        finally:
            self._close(sub, feed, translator)

    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        translator, feed, sub, snapshot = await self._open(params, context)
        try:
            if not params.configuration.return_immediately:
                async for _ in _until_asked(feed, translator):
                    pass
        finally:
            self._close(sub, feed, translator)
        return await self._snapshot(self._caller(context), snapshot.id)

    # -- tasks/get, tasks/list, tasks/cancel, tasks/resubscribe

    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task:
        return await self._snapshot(self._caller(context), _required_id(params.id))

    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        caller = self._caller(context)
        try:
            statuses = await caller.manager.list_tasks(caller.principal)
        except TaskError as exc:
            raise _a2a_error(exc) from None
        tasks = []
        for status in statuses:
            context_id = _context_id(status)
            if params.context_id and params.context_id != context_id:
                continue
            translator = A2ATranslator(status.task_id, context_id)
            tasks.append(translator.task(status, ""))
            tasks[-1].ClearField("history")
        return ListTasksResponse(tasks=tasks, page_size=len(tasks), total_size=len(tasks))

    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task:
        caller = self._caller(context)
        manager, owner = caller.manager, caller.principal
        _required_id(params.id)
        try:
            status = await manager.status(owner, params.id)
            feed = Feed(1_000_000)
            sub = await manager.subscribe(
                owner, params.id, after_seq=status.last_seq, deliver=feed.deliver
            )
            try:
                result = await manager.cancel(owner, params.id, "cancelled by an A2A client")
                if result == "unknown":
                    raise TaskNotFoundError(f"no task {params.id!r}")
                if result == "already_terminal":
                    raise TaskNotCancelableError(
                        f"task {params.id!r} has already ended ({status.state})"
                    )
                if not sub.closed:  # wait until the work has stopped and the end is written
                    async with asyncio.timeout(self._cancel_wait):
                        async for _ in feed:
                            pass
            finally:
                sub.close()
        except TaskError as exc:
            raise _a2a_error(exc) from None
        return await self._snapshot(caller, params.id)

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[StreamItem]:
        caller = self._caller(context)
        manager, owner = caller.manager, caller.principal
        after: int | None = context.state.get("ospark.last_event_id")
        _required_id(params.id)
        feed = Feed(self._max_stream)
        try:
            status, snapshot = await self._look(caller, params.id)
            last_seq = status.last_seq
            sub = await manager.subscribe(
                owner,
                params.id,
                after_seq=last_seq if after is None else after,
                deliver=feed.deliver,
            )
        except TaskError as exc:
            raise _a2a_error(exc) from None
        asked = status.pending_input if status.state == "input_required" else None
        pending = asked.request_id if asked is not None else None
        translator = A2ATranslator(params.id, snapshot.context_id, last_seq, pending)
        translator.state = snapshot.status.state
        try:
            yield snapshot
            if sub.closed and not feed.finished:
                return  # nothing after the cursor: the task had already ended there
            if pending is not None and (after is None or after >= last_seq):
                translator.interrupted = True
                return  # it waits for an answer, and the client has seen the question
            async for event in _until_asked(feed, translator):
                yield event
        finally:
            self._close(sub, feed, translator)

    # -- what this agent does not offer

    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError(
            "push notifications are not offered; stream with SendStreamingMessage or "
            "SubscribeToTask (resumable with Last-Event-ID)"
        )

    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        raise PushNotificationNotSupportedError("push notifications are not offered")

    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        raise PushNotificationNotSupportedError("push notifications are not offered")

    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        raise PushNotificationNotSupportedError("push notifications are not offered")

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        raise ExtendedAgentCardNotConfiguredError("this agent has no extended card")


# --------------------------------------------------------------------------- the card


@functools.lru_cache(maxsize=8)
def _main_agent(config_path: str | None) -> Any:
    """The agent config's main agent, loaded once (the card is served on every request)."""
    from gateway.agent.config import load_config

    return load_config(config_path).main_agent


def agent_card(base_url: str, config_path: str | None) -> AgentCard:
    """The agent card: the main agent, a skill per tool server and sub-agent of the agent
    config, streaming, and the bearer-token scheme of the gateway's tokens."""
    main = _main_agent(config_path)
    skills = [
        AgentSkill(
            id="task",
            name=f"{main.name}: answer a task",
            description=(
                "Give a question or an instruction; the agent reasons, calls its tools and "
                "sub-agents, and returns a report with a final answer."
            ),
            tags=["agent", "tools"],
            examples=["What is 17*23+4?"],
            input_modes=["text/plain"],
            output_modes=["text/plain"],
        )
    ]
    for name in main.tool_config:
        skills.append(
            AgentSkill(
                id=f"tool:{name}",
                name=name,
                description=f"Uses its {name} tools when a task needs them.",
                tags=["tool", name],
            )
        )
    for name in main.sub_agents:
        skills.append(
            AgentSkill(
                id=f"agent:{name}",
                name=name,
                description=f"Delegates parts of a task to the sub-agent {name}.",
                tags=["sub-agent", name],
            )
        )
    card = AgentCard(
        name="OSpark Gateway",
        description=(
            f"OSpark agent {main.name!r} ({main.llm.provider}/{main.llm.model_name})"
            + (" — the offline demo model" if main.llm.provider == "demo" else "")
        ),
        supported_interfaces=[
            AgentInterface(
                url=base_url.rstrip("/") + RPC_PATH,
                protocol_binding="JSONRPC",
                protocol_version="1.0",
            ),
        ],
        version=gateway.__version__,
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain", "application/json"],
        skills=skills,
    )
    card.security_schemes["bearer"].CopyFrom(
        SecurityScheme(
            http_auth_security_scheme=HTTPAuthSecurityScheme(
                scheme="Bearer",
                description="A gateway token (OSPARK_TOKENS); none on loopback without tokens",
            )
        )
    )
    card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList(list=[])}))
    return card


# --------------------------------------------------------------------------- routes


class _ContextBuilder(DefaultServerCallContextBuilder):
    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        headers = context.state.get("headers")
        if isinstance(headers, dict):  # the SDK reads A2A-Version there; the token stays here
            headers.pop("authorization", None)
        context.state["ospark.caller"] = request.scope.get("ospark.caller")
        context.state["ospark.last_event_id"] = request.scope.get("ospark.last_event_id")
        return context


def _rpc_error(status: int, message: str, code: int = -32600) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="ospark"'} if status == 401 else None
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _counted(body: AsyncIterable[Any], request: Request) -> AsyncIterator[Any]:
    with open_stream(request, "a2a"):
        async for chunk in body:
            yield chunk


def a2a_routes(settings: Any) -> list[Route]:
    """The A2A routes for a gateway's settings."""
    limits = settings.connection.limits
    handler = OSparkRequestHandler(
        StartGate(limits.max_input_chars, limits.max_starts_per_second),
        max_stream=settings.connection.max_outbox,
        cancel_wait=2 * settings.tasks.cancel_grace + 5.0,
    )
    dispatcher = JsonRpcDispatcher(handler, _ContextBuilder(), enable_v0_3_compat=True)
    max_body = limits.max_frame_bytes

    async def rpc(request: Request) -> Response:
        caller = authorize(request, "a2a")
        if isinstance(caller, Refusal):
            return _rpc_error(caller.status, caller.reason)
        read = await read_body(request, max_body)
        if read is None:
            return _rpc_error(413, f"request body over the limit of {max_body} bytes")
        request = read
        try:
            request.scope["ospark.last_event_id"] = parse_last_event_id(request)
        except ValueError as exc:
            return _rpc_error(400, str(exc))
        request.scope["ospark.caller"] = caller
        response = await dispatcher.handle_requests(request)
        if isinstance(response, StreamingResponse):  # SSE: counted while it is open
            response.body_iterator = _counted(response.body_iterator, request)
        return response

    async def card(request: Request) -> Response:
        base = f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"
        return JSONResponse(agent_card_to_dict(agent_card(base, settings.agent_config)))

    return [Route(CARD_PATH, card, methods=["GET"]), Route(RPC_PATH, rpc, methods=["POST"])]
