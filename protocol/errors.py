"""Error codes, close codes and the one protocol exception.

``ErrorCode`` values travel in ``error`` frames; the connection stays open after them.
``CloseCode`` values close the WebSocket; each says whether a client should reconnect.
"""

from __future__ import annotations

import enum

__all__ = ["RETRYABLE_CLOSE_CODES", "CloseCode", "ErrorCode", "ProtocolError"]


class ErrorCode(enum.StrEnum):
    """Stable codes of ``error`` frames. The connection stays open after each of them."""

    BAD_FRAME = "bad_frame"
    """The frame could not be decoded: not JSON/MessagePack, not an object, wrong frame type
    (binary on the JSON subprotocol or text on MessagePack), invalid UTF-8. Not retryable."""
    UNKNOWN_TYPE = "unknown_type"
    """The ``type`` field names no client frame. Not retryable."""
    INVALID_FIELD = "invalid_field"
    """A field is missing, of the wrong type, or out of range; ``field`` names it."""
    FRAME_TOO_LARGE = "frame_too_large"
    """The frame exceeds the ``max_frame_bytes`` limit announced in ``hello``."""
    UNKNOWN_TASK = "unknown_task"
    """No task with that id exists for this principal (or it was removed after retention)."""
    FORBIDDEN = "forbidden"
    """The task belongs to another principal."""
    TOO_MANY_TASKS = "too_many_tasks"
    """A running-task limit (per connection, per principal or server-wide) is reached;
    retry after one of your tasks ends."""
    RATE_LIMITED = "rate_limited"
    """Too many ``start`` frames in a short time; retry later."""
    TASK_EXISTS = "task_exists"
    """``start`` named a ``task_id`` already used with a different input."""
    INPUT_TOO_LONG = "input_too_long"
    """The ``input`` of ``start`` exceeds ``max_input_chars``."""
    THREAD_BUSY = "thread_busy"
    """``start`` on a thread whose previous task has not ended, with ``if_busy: reject`` (the
    default), or an ``enqueue`` beyond ``max_queued_per_thread``; retry when it ends, or pick
    ``enqueue`` / ``interrupt``."""
    UNKNOWN_THREAD = "unknown_thread"
    """No thread with that id for this principal (or it was removed after retention)."""
    UNKNOWN_REQUEST = "unknown_request"
    """``input`` names a request the task never made, or one that timed out."""
    ALREADY_ANSWERED = "already_answered"
    """``input`` for a request that was answered already, with another answer (the first
    valid answer wins; the same answer again gets ``input_ack`` with ``resent``)."""
    INVALID_ANSWER = "invalid_answer"
    """``input`` does not fit the request: no ``text`` for a question, no ``approved`` for an
    approval, a ``choice`` not among the options."""
    TASK_FINISHED = "task_finished"
    """``message`` or ``input`` for a task that has ended (or is writing its final report and
    takes no more messages)."""
    TOO_MANY_MESSAGES = "too_many_messages"
    """The task already holds ``max_pending_messages`` messages its agent has not taken yet;
    retry after a ``user_message`` event."""
    INTERNAL = "internal"
    """A server bug; the request may be retried."""
    UNAVAILABLE = "unavailable"
    """The gateway cannot reach its task store (Redis) right now, or the gateway running the
    task did not reply to a forwarded ``input`` / ``message``. Retryable: retry with backoff,
    on this gateway or another."""


class CloseCode(enum.IntEnum):
    """WebSocket close codes (4000 range) used by the gateway."""

    SLOW_CONSUMER = 4000
    """The client read too slowly and its outbox overflowed. Retryable: reconnect and
    ``subscribe`` with the last seen ``seq``; nothing is lost."""
    UNAUTHORIZED = 4001
    """Missing or wrong token, or a disallowed ``Origin``. Not retryable without a new token."""
    POLICY_VIOLATION = 4002
    """Repeated protocol abuse (e.g. oversized frames). Not retryable as is: fix the client."""
    SERVER_RESTART = 4003
    """The server is shutting down or restarting. Retryable: reconnect (with backoff) and
    resubscribe; tasks kept by a shared backend continue."""


RETRYABLE_CLOSE_CODES: frozenset[int] = frozenset(
    {CloseCode.SLOW_CONSUMER, CloseCode.SERVER_RESTART}
)
"""Close codes after which a client should reconnect and resume."""


class ProtocolError(Exception):
    """A frame the protocol refuses, with a stable code and a message for the client.

    ``field`` names the offending field (a JSON path such as ``$.after_seq``) when known;
    ``request_id`` is the ``id`` of the offending request when it could be read."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        request_id: str | int | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r}, field={self.field!r})"
