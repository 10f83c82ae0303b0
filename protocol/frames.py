"""Frames: the messages of the wire protocol, one tagged union per direction.

Every frame is an object with a ``type`` tag. Fields not listed here are ignored when
decoding (forward compatibility), and every field added in a later version has a default.
A request's ``id`` is chosen by the client and echoed in the reply so replies can be matched.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from protocol.events import Event, InputRequest, Usage

__all__ = [
    "PROTOCOL_NAME",
    "PROTOCOL_VERSION",
    "Accepted",
    "Batch",
    "Cancel",
    "CancelAck",
    "ClientFrame",
    "Closing",
    "ErrorFrame",
    "EventFrame",
    "Gap",
    "Hello",
    "IfBusy",
    "Input",
    "InputAck",
    "Limits",
    "Message",
    "MessageAck",
    "Ping",
    "Pong",
    "RequestId",
    "Seq",
    "ServerFrame",
    "Start",
    "StartOptions",
    "StatusReply",
    "StatusRequest",
    "Subscribe",
    "Subscribed",
    "TaskId",
    "TaskState",
    "TaskStatus",
    "ThreadId",
    "ThreadReply",
    "ThreadRequest",
    "ThreadSummary",
    "ThreadTask",
    "ThreadsReply",
    "ThreadsRequest",
    "Unsubscribe",
    "Unsubscribed",
]

PROTOCOL_NAME = "ospark"
PROTOCOL_VERSION = 1

RequestId = (
    Annotated[str, msgspec.Meta(max_length=256)]
    | Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)]
)
"""A client-chosen request id (string of at most 256 characters, or an integer that JSON
numbers represent exactly), echoed in the reply."""

TaskId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$(?!\n)")
]
"""A task id: 1-128 characters of letters, digits and ``. _ : -``. (In Python's ``re`` a ``$``
also matches before a final newline, so ``(?!\n)`` refuses ``"job-1\n"``; the pattern means
the same in the JSON Schema's ECMAScript dialect.)"""
FileId = Annotated[
    str, msgspec.Meta(min_length=6, max_length=80, pattern=r"^file_[A-Za-z0-9_-]+$(?!\n)")
]
"""The id ``POST /files`` returned for an upload."""

Seq = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
"""A per-task sequence number."""

ThreadId = TaskId
"""A thread (conversation) id: the same alphabet and length as a task id."""

TaskState = Literal["pending", "running", "input_required", "completed", "failed", "cancelled"]
"""``pending → running ⇄ input_required → completed | failed | cancelled``. A client should
treat a state it does not know as not final."""

DetachPolicy = Literal["keep", "cancel"]

IfBusy = Literal["reject", "enqueue", "interrupt"]
"""Double-texting policy of ``start`` on a thread whose previous task has not ended:
``reject`` it (error ``thread_busy``), ``enqueue`` it (it runs when the thread's earlier tasks
have ended), or ``interrupt`` (cancel the thread's running task, then start)."""

InputTimeoutPolicy = Literal["fail", "continue"]
"""What happens when nobody answers an ``input_required`` in time: the task ``fail``s with
code ``input_timeout``, or it will ``continue`` with "no answer" (an approval counts as
denied)."""


class _Frame(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    pass


# --------------------------------------------------------------------------- client → server


class StartOptions(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Per-task options of ``start``. Every one is optional; the server's config decides
    what is left unset."""

    agent: str | None = None
    """Name of the agent configuration to run (the server's default when unset)."""
    model: str | None = None
    """Override of the main agent's model name."""
    max_turns: Annotated[int, msgspec.Meta(ge=-1, le=10_000)] | None = None
    """Override of the main agent's turn limit (-1 = unlimited)."""
    chinese_context: bool | None = None
    """Add the guidance for Chinese-language tasks."""
    on_detach: DetachPolicy | None = None
    """What happens when no connection is subscribed: ``keep`` running until the detach TTL
    expires, or ``cancel`` at once."""
    detach_ttl: Annotated[float, msgspec.Meta(ge=0, le=86_400)] | None = None
    """Seconds a task with no subscriber keeps running before it is cancelled."""
    require_approval: list[Annotated[str, msgspec.Meta(min_length=1, max_length=256)]] | None = None
    """Tool calls that wait for the owner's approval, added to the agent config's: each
    entry names a server (``calculator``), a tool (``evaluate``) or both
    (``calculator/evaluate``); ``*`` means every tool call."""
    input_timeout: Annotated[float, msgspec.Meta(gt=0, le=86_400)] | None = None
    """Seconds a question or approval waits for an answer (the server's default when unset)."""
    on_input_timeout: InputTimeoutPolicy | None = None
    """What a timed-out wait does: ``fail`` or ``continue`` (the server's default when unset)."""
    files: Annotated[list[FileId], msgspec.Meta(max_length=16)] | None = None
    """Files uploaded with ``POST /files`` that come with the task: the agent is told their
    paths and opens them with its reading and code tools."""


class Start(_Frame, tag="start"):
    """Start a task. Replied to by ``accepted`` (then events, when subscribed) or ``error``."""

    id: RequestId
    """Request id, echoed in ``accepted``/``error``."""
    input: str
    """The task for the agent (a question or instruction)."""
    task_id: TaskId | None = None
    """Client-chosen task id; retrying a ``start`` with the same id and input returns the
    existing task (idempotent). The server chooses one when unset."""
    options: StartOptions | None = None
    """Per-task options."""
    subscribe: bool = True
    """Subscribe this connection to the task's events."""
    thread_id: ThreadId | None = None
    """The conversation this task continues (created by its first task): the agent sees the
    thread's earlier turns. Threads are per principal."""
    if_busy: IfBusy = "reject"
    """Double-texting policy when the thread's previous task has not ended."""


class Cancel(_Frame, tag="cancel"):
    """Cancel a task. Replied to by ``cancel_ack``; the terminal event follows."""

    id: RequestId
    """Request id, echoed in ``cancel_ack``."""
    task_id: TaskId
    """The task to cancel."""


class StatusRequest(_Frame, tag="status"):
    """Ask for the state of one task, or of all tasks of this principal."""

    id: RequestId
    """Request id, echoed in the ``status`` reply."""
    task_id: TaskId | None = None
    """The task to report on; all of the principal's tasks when unset."""


class Subscribe(_Frame, tag="subscribe"):
    """Receive a task's events: every retained event with ``seq > after_seq``, then live ones.
    Replied to by ``subscribed`` (then ``gap`` if needed, then the events) or ``error``."""

    id: RequestId
    """Request id, echoed in ``subscribed``/``gap``/``error``."""
    task_id: TaskId
    """The task to follow."""
    after_seq: Seq = 0
    """Last ``seq`` already seen (0 = from the start); past the latest ``seq`` of a task still
    running, the request is refused (``invalid_field``)."""


class Unsubscribe(_Frame, tag="unsubscribe"):
    """Stop receiving a task's events; the task keeps running (under its detach policy).
    Replied to by ``unsubscribed``."""

    id: RequestId
    """Request id, echoed in ``unsubscribed``."""
    task_id: TaskId
    """The task to stop following."""


class Ping(_Frame, tag="ping"):
    """Application-level ping (for clients, like browsers, that cannot send WebSocket pings)."""

    id: RequestId | None = None
    """Optional request id, echoed in ``pong``."""
    payload: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    """Optional payload (at most 1024 characters), echoed in ``pong``."""


class ThreadsRequest(_Frame, tag="threads"):
    """List this principal's threads, most recently updated first. Replied to by ``threads``."""

    id: RequestId
    """Request id, echoed in the ``threads`` reply."""
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    """At most this many threads."""


class ThreadRequest(_Frame, tag="thread"):
    """List one thread's tasks, oldest first, to rebuild the conversation. Replied to by
    ``thread`` or ``error`` (``unknown_thread``)."""

    id: RequestId
    """Request id, echoed in the ``thread`` reply."""
    thread_id: ThreadId
    """The thread."""


class Input(_Frame, tag="input"):
    """Answer a task's ``input_required``. Replied to by ``input_ack`` or ``error``
    (``already_answered``, ``unknown_request``, ``invalid_answer``, ``task_finished``,
    ``unknown_task``). The first valid answer from any connection of the owner wins; sending
    that same answer again is acknowledged with ``resent`` (a different one gets
    ``already_answered``)."""

    id: RequestId
    """Request id, echoed in ``input_ack``/``error``."""
    task_id: TaskId
    """The waiting task."""
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    """The ``request.request_id`` of the ``input_required`` answered."""
    text: str | None = None
    """The answer to a ``question`` (required there), or a reason given with an approval."""
    approved: bool | None = None
    """The answer to an ``approval`` (required there)."""
    choice: str | None = None
    """The answer to a ``choice``: one of its ``options`` (required there)."""


class Message(_Frame, tag="message"):
    """Add a user message to a running task (steering); the agent takes it at its next turn
    boundary and a ``user_message`` event shows it. Replied to by ``message_ack`` or ``error``
    (``task_finished``, ``too_many_messages``, ``unknown_task``)."""

    id: RequestId
    """Request id, echoed in ``message_ack``/``error``."""
    task_id: TaskId
    """The running task."""
    text: Annotated[str, msgspec.Meta(min_length=1)]
    """The message (at most ``limits.max_input_chars``)."""


ClientFrame = (
    Start
    | Cancel
    | StatusRequest
    | Subscribe
    | Unsubscribe
    | Ping
    | ThreadsRequest
    | ThreadRequest
    | Input
    | Message
)
"""Every frame a client may send."""

# --------------------------------------------------------------------------- server → client


class Limits(msgspec.Struct, kw_only=True):
    """The limits a connection is held to, announced in ``hello``."""

    max_frame_bytes: int = 1 << 20
    """Largest frame the server accepts."""
    max_input_chars: int = 100_000
    """Longest ``input`` of ``start``."""
    max_tasks_per_connection: int = 100
    """Running tasks started from one connection."""
    max_tasks_per_principal: int = 1000
    """Running tasks of one principal across all its connections."""
    max_starts_per_second: float = 50.0
    """Sustained rate of ``start`` frames per connection (bursts allowed)."""
    max_pending_messages: int = 16
    """``message``s a task holds before its agent has taken them."""
    max_queued_per_thread: int = 8
    """Tasks ``enqueue``d behind a thread's running task."""


class Hello(_Frame, tag="hello", omit_defaults=False):
    """First frame of every connection; every field is always present."""

    protocol: str = PROTOCOL_NAME
    """Protocol name."""
    version: int = PROTOCOL_VERSION
    """Protocol version; a client should refuse a major version it does not know."""
    server: str = ""
    """Server software version."""
    session_id: str = ""
    """Identifier of this connection (for logs and support)."""
    encoding: Literal["json", "msgpack"] = "json"
    """Negotiated encoding."""
    principal: str = ""
    """The authenticated principal whose tasks this connection sees."""
    limits: Limits = msgspec.field(default_factory=Limits)
    """The connection's limits."""
    heartbeat_interval: float = 0.0
    """Seconds between server WebSocket pings (0 = none)."""


class Accepted(_Frame, tag="accepted"):
    """Reply to ``start``: the task exists."""

    id: RequestId
    """The ``start`` request id."""
    task_id: str
    """The task's id."""
    state: TaskState = "pending"
    """The task's state when accepted."""
    existing: bool = False
    """True when the ``start`` was a retry and the existing task was returned."""
    thread_id: str | None = None
    """The task's thread, when it has one."""
    after_task_id: str | None = None
    """For an ``enqueue``d task: the thread's task it waits for."""


class CancelAck(_Frame, tag="cancel_ack"):
    """Reply to ``cancel``."""

    id: RequestId
    """The ``cancel`` request id."""
    task_id: str
    """The task."""
    result: Literal["accepted", "already_terminal", "unknown"]
    """``accepted`` (the terminal event follows), ``already_terminal``, or ``unknown``."""


class Subscribed(_Frame, tag="subscribed"):
    """Reply to ``subscribe``: the task's events with ``seq > after_seq`` follow (after a
    ``gap`` when some were dropped)."""

    id: RequestId
    """The ``subscribe`` request id."""
    task_id: str
    """The task."""
    state: TaskState
    """The task's state when subscribed. When it is final (``completed``, ``failed``,
    ``cancelled``) and ``last_seq`` is not above the ``after_seq`` asked for, no event follows:
    the client has seen the task's end already."""
    last_seq: int = 0
    """``seq`` of the task's latest event when subscribed."""


class Unsubscribed(_Frame, tag="unsubscribed"):
    """Reply to ``unsubscribe`` (also when the connection was not following the task): no
    event of the task follows it on this connection."""

    id: RequestId
    """The ``unsubscribe`` request id."""
    task_id: str
    """The task."""


class TaskStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One task as reported by ``status``."""

    task_id: str
    """The task's id."""
    state: TaskState
    """Its lifecycle state."""
    last_seq: int = 0
    """``seq`` of its latest event."""
    created: float = 0.0
    """Unix time of creation."""
    updated: float = 0.0
    """Unix time of the latest event."""
    progress: str | None = None
    """The current step, as in the latest ``task_progress``."""
    turn: int = 0
    """Turns taken by the main agent."""
    usage: Usage | None = None
    """Token usage so far."""
    queue_position: int | None = None
    """Position in the queue while ``pending``."""
    thread_id: str | None = None
    """The task's thread, when it has one."""
    pending_input: InputRequest | None = None
    """What the task waits for while ``input_required``."""


class StatusReply(_Frame, tag="status"):
    """Reply to ``status``."""

    id: RequestId
    """The ``status`` request id."""
    tasks: list[TaskStatus] = []
    """The tasks asked about (all of the principal's when no ``task_id`` was given)."""


class ThreadSummary(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One thread as listed by ``threads``."""

    thread_id: str
    """The thread's id."""
    created: float = 0.0
    """Unix time of its first task."""
    updated: float = 0.0
    """Unix time of its latest task's latest change."""
    task_count: int = 0
    """Tasks in the thread (kept by retention)."""
    title: str = ""
    """The first task's input, shortened to at most 80 characters."""
    last_task_id: str | None = None
    """The thread's latest task."""
    last_state: TaskState | None = None
    """That task's state."""


class ThreadsReply(_Frame, tag="threads"):
    """Reply to ``threads``."""

    id: RequestId
    """The ``threads`` request id."""
    threads: list[ThreadSummary] = []
    """This principal's threads, most recently updated first."""


class ThreadTask(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One task of a thread as listed by ``thread``: a turn of the conversation."""

    task_id: str
    """The task's id (``subscribe`` to it while it runs)."""
    input: str
    """The user's input."""
    state: TaskState
    """Its lifecycle state."""
    created: float = 0.0
    """Unix time of creation."""
    updated: float = 0.0
    """Unix time of the latest event."""
    final_answer: str | None = None
    """The answer, once ``completed``."""
    summary: str | None = None
    """The agent's final report, once ``completed`` (or a partial one when ``failed``)."""
    reason: str | None = None
    """Why it ended, when ``failed`` or ``cancelled``."""
    last_seq: int = 0
    """``seq`` of its latest event."""
    pending_input: InputRequest | None = None
    """What it waits for while ``input_required``."""


class ThreadReply(_Frame, tag="thread"):
    """Reply to ``thread``."""

    id: RequestId
    """The ``thread`` request id."""
    thread_id: str
    """The thread."""
    tasks: list[ThreadTask] = []
    """Its tasks, oldest first (as kept by retention)."""


class InputAck(_Frame, tag="input_ack"):
    """Reply to ``input``: the answer was taken (an ``input_received`` event records it), or
    it had been taken already (``resent``)."""

    id: RequestId
    """The ``input`` request id."""
    task_id: str
    """The task."""
    request_id: str
    """The request answered."""
    resent: bool = False
    """True when this answer had been taken already (the same answer to the same request,
    e.g. resent after a dropped connection): nothing changed, no new ``input_received``."""


class MessageAck(_Frame, tag="message_ack"):
    """Reply to ``message``: the message waits for the agent's next turn boundary (a
    ``user_message`` event with this ``message_id`` shows when it is taken)."""

    id: RequestId
    """The ``message`` request id."""
    task_id: str
    """The task."""
    message_id: str
    """The message's id, as in its ``user_message`` event."""


class EventFrame(_Frame, tag="event"):
    """One event of one task."""

    task_id: str
    """The task the event belongs to."""
    seq: int
    """Per-task sequence number: 1, 2, 3, ... with no gaps."""
    ts: float
    """Unix time at which the event was created."""
    event: Event
    """The event body, tagged by ``kind``."""


class Batch(_Frame, tag="batch"):
    """Several events in one frame; sent only when the writer is behind."""

    events: list[EventFrame]
    """The events, in order."""


class Gap(_Frame, tag="gap"):
    """Reply to ``subscribe`` when events after ``after_seq`` were dropped by retention."""

    task_id: str
    """The task."""
    first_available_seq: int
    """The oldest retained ``seq``; replay starts there."""
    id: RequestId | None = None
    """The ``subscribe`` request id."""
    after_seq: int = 0
    """The ``after_seq`` that was asked for."""


class ErrorFrame(_Frame, tag="error"):
    """A request or frame was refused; the connection stays open."""

    code: str
    """A stable error code (see ``ErrorCode``)."""
    message: str
    """What was wrong and what was expected."""
    id: RequestId | None = None
    """The offending request's id, when it could be read."""
    task_id: str | None = None
    """The task concerned, if any."""
    field: str | None = None
    """Path of the offending field (e.g. ``$.after_seq``), if any."""


class Pong(_Frame, tag="pong"):
    """Reply to ``ping``."""

    id: RequestId | None = None
    """The ``ping`` request id."""
    payload: str | None = None
    """The ``ping`` payload."""
    ts: float = 0.0
    """Server's Unix time."""


class Closing(_Frame, tag="closing"):
    """The server is about to close the connection (e.g. shutting down)."""

    reason: str
    """Why."""
    code: int | None = None
    """The close code that will follow."""
    deadline: float | None = None
    """Seconds the server still lets running tasks finish."""


ServerFrame = (
    Hello
    | Accepted
    | CancelAck
    | StatusReply
    | Subscribed
    | Unsubscribed
    | EventFrame
    | Batch
    | Gap
    | ErrorFrame
    | Pong
    | Closing
    | ThreadsReply
    | ThreadReply
    | InputAck
    | MessageAck
)
"""Every frame a server sends."""
