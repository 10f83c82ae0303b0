"""The person behind a task: questions, approvals and steering messages of one running task.

:class:`TaskInteraction` is the :class:`gateway.streaming.Interaction` the task manager hands
each run. The run asks (:meth:`TaskInteraction.ask`) and takes messages at turn boundaries
(:meth:`TaskInteraction.take_messages`); the owner's connections answer
(:meth:`TaskInteraction.answer`) and send messages (:meth:`TaskInteraction.add_message`).
Everything happens on the event loop, so "the first valid answer wins" needs no lock: the
first :meth:`~TaskInteraction.answer` that passes the checks resolves the request, and every
later one finds it answered: ``already_answered``, unless it gives the very answer that was
taken (a client resending its own answer after a dropped connection), which is acknowledged
again as *resent* and changes nothing.

Rules:

- a request waits at most its timeout; then ``input_received`` with ``timed_out`` is recorded
  and the run carries on with "no answer" (policy ``continue``), or the task fails with code
  ``input_timeout`` (policy ``fail``);
- a cancel of the task cancels the run, and with it the wait (nothing else to do here);
- at most ``max_pending`` messages wait; a message after :meth:`close_messages` (the agent is
  writing its report) or after the task's end is refused with ``task_finished``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from protocol.errors import ErrorCode
from protocol.events import (
    AnswerKind,
    Event,
    InputReceived,
    InputRequest,
    InputRequired,
    TaskFailed,
    UserMessage,
)
from protocol.frames import Input, InputTimeoutPolicy

from .errors import TaskError

__all__ = ["DEFAULT_INPUT_TIMEOUT", "TaskInteraction", "same_answer"]

DEFAULT_INPUT_TIMEOUT = 300.0
"""Seconds a question waits when neither the task nor the server says otherwise."""

SetWaiting = Callable[[InputRequest | None], None]
"""Sets (or clears) the task's pending request in its record before the event is emitted."""


class TaskInteraction:
    """Questions and messages of one task (see the module docstring)."""

    def __init__(
        self,
        task_id: str,
        emit: Callable[[Event], None],
        set_waiting: SetWaiting,
        *,
        timeout: float = DEFAULT_INPUT_TIMEOUT,
        on_timeout: InputTimeoutPolicy = "continue",
        max_pending: int = 16,
    ) -> None:
        self.task_id = task_id
        self._emit = emit
        self._set_waiting = set_waiting
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.max_pending = max_pending
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._waiting: dict[str, tuple[InputRequest, asyncio.Future[InputReceived]]] = {}
        self._resolved: dict[str, tuple[InputRequest, InputReceived] | None] = {}
        """Request id → the request and the answer taken, or None when it timed out."""
        self._messages: deque[tuple[str, str]] = deque()
        self._closed: str | None = None

    # ------------------------------------------------------------------ the run's side

    async def ask(
        self,
        kind: AnswerKind,
        prompt: str,
        *,
        server: str | None = None,
        tool: str | None = None,
        arguments: dict[str, Any] | None = None,
        call_id: str | None = None,
        options: list[str] | None = None,
    ) -> InputReceived:
        request_id = f"{kind}-{next(self._ids)}"
        request = InputRequest(
            request_id=request_id,
            kind=kind,
            prompt=prompt,
            server=server,
            tool=tool,
            arguments=arguments,
            call_id=call_id,
            options=options,
            expires_at=time.time() + self.timeout,
        )
        future: asyncio.Future[InputReceived] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (request, future)
        self._set_waiting(request)
        self._emit(InputRequired(request=request))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            pass
        finally:
            if self._waiting.pop(request_id, None) is not None and not future.done():
                future.cancel()
        # Timed out (an answer that raced the deadline is honoured).
        if future.done() and not future.cancelled():
            return future.result()
        self._resolved[request_id] = None
        self._set_waiting(None)
        received = InputReceived(request_id=request_id, timed_out=True)
        self._emit(received)
        if self.on_timeout == "fail":
            self._emit(
                TaskFailed(
                    reason=f"nobody answered {kind} {request_id!r} within {self.timeout:g}s",
                    code="input_timeout",
                )
            )
            raise asyncio.CancelledError  # the task has ended; stop the run
        return received

    def take_messages(self, turn: int) -> list[str]:
        taken = []
        while self._messages:
            message_id, text = self._messages.popleft()
            self._emit(UserMessage(text=text, message_id=message_id, turn=turn))
            taken.append(text)
        return taken

    def has_messages(self) -> bool:
        return bool(self._messages)

    def close_messages(self) -> None:
        if self._closed is None:
            self._closed = "it is writing its final report"

    def set_timeout(
        self, timeout: float | None = None, on_timeout: InputTimeoutPolicy | None = None
    ) -> None:
        if timeout is not None:
            self.timeout = timeout
        if on_timeout is not None:
            self.on_timeout = on_timeout

    # ------------------------------------------------------------------ the owner's side

    def answer(self, frame: Input) -> bool:
        """Take an answer, or raise :class:`TaskError` saying why not. Returns ``True`` when
        the request was answered before with this same answer (a resend: nothing changes)."""
        rid = frame.request_id
        waiting = self._waiting.get(rid)
        if waiting is None:
            answered = self._resolved.get(rid)
            if answered is not None:
                if same_answer(*answered, frame):
                    return True
                raise TaskError(
                    ErrorCode.ALREADY_ANSWERED,
                    f"request {rid!r} was already answered",
                    task_id=self.task_id,
                )
            why = "timed out" if rid in self._resolved else "was never made"
            raise TaskError(
                ErrorCode.UNKNOWN_REQUEST,
                f"task {self.task_id!r} has no open request {rid!r} (it {why})",
                task_id=self.task_id,
            )
        request, future = waiting
        received = _check(request, frame, self.task_id)
        del self._waiting[rid]
        self._resolved[rid] = (request, received)
        self._set_waiting(None)
        self._emit(received)
        future.set_result(received)
        return False

    def add_message(self, text: str) -> str:
        """Queue a steering message; returns its id, or raises :class:`TaskError`."""
        if self._closed is not None:
            raise TaskError(
                ErrorCode.TASK_FINISHED,
                f"task {self.task_id!r} takes no more messages: {self._closed}",
                task_id=self.task_id,
            )
        if len(self._messages) >= self.max_pending:
            raise TaskError(
                ErrorCode.TOO_MANY_MESSAGES,
                f"task {self.task_id!r} already holds {self.max_pending} messages not yet "
                "taken; retry after a user_message event",
                task_id=self.task_id,
            )
        message_id = f"msg-{next(self._message_ids)}"
        self._messages.append((message_id, text))
        return message_id

    def finish(self, why: str) -> None:
        """The task ended: refuse later messages with ``why``."""
        self._closed = why


def same_answer(request: InputRequest, received: InputReceived, frame: Input) -> bool:
    """True when ``frame`` answers ``request`` exactly as ``received`` recorded (a resend)."""
    if received.timed_out:
        return False
    try:
        return _check(request, frame, "") == received
    except TaskError:
        return False


def _check(request: InputRequest, frame: Input, task_id: str) -> InputReceived:
    def invalid(message: str) -> TaskError:
        return TaskError(ErrorCode.INVALID_ANSWER, message, task_id=task_id)

    rid = request.request_id
    if request.kind == "question":
        if frame.text is None or not frame.text.strip():
            raise invalid("a question is answered with a non-empty `text`")
        return InputReceived(request_id=rid, text=frame.text)
    if request.kind == "approval":
        if frame.approved is None:
            raise invalid("an approval is answered with `approved` (true or false)")
        return InputReceived(request_id=rid, approved=frame.approved, text=frame.text)
    options = request.options or []
    if frame.choice is None or frame.choice not in options:
        raise invalid("a choice is answered with `choice`, one of: " + ", ".join(options))
    return InputReceived(request_id=rid, choice=frame.choice)
