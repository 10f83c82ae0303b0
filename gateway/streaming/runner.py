"""The runner contract: how one task's work is run, and how its outcome becomes its end.

A *runner* is ``async (spec, emit) -> terminal event``:

- it is awaited once per task, with the task's :class:`TaskSpec`;
- it hands every non-terminal event to ``emit`` as it happens (synchronously; ``emit`` never
  blocks), and may pass a :class:`protocol.events.Usage` to report its token usage so far
  (shown by ``status``; not an event on the wire);
- it returns the terminal event: ``task_completed`` or ``task_failed`` (or ``task_cancelled``
  if it stopped on its own);
- it is cancelled by cancelling the asyncio task that awaits it: it stops its work (HTTP
  streams closed, tool calls cancelled) and lets the :exc:`asyncio.CancelledError` propagate as
  soon as the work has stopped; slow cleanup that no result depends on (a tool server process
  exiting) may finish in the background, owned by someone other than the run.

:func:`outcome` is the one place where a run's end becomes its terminal event: the returned
event, ``task_cancelled`` when a cancel was requested (an accepted cancel always wins), or
``task_failed`` with code ``internal`` for an exception that escaped the runner or a return
value that is not a terminal event. The task manager drives every runner through it, and so
does :class:`TaskStream`, the small adapter that gives scripts an async iterator over one run.

Cancellation policy: a cancel *requested* through the caller (a reason is set) becomes the
event ``task_cancelled``; a cancellation from outside (the event loop shutting down, the
consumer's own task cancelled) propagates as :exc:`asyncio.CancelledError`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from protocol.events import (
    TERMINAL_STATES,
    AnswerKind,
    Event,
    InputReceived,
    TaskCancelled,
    TaskFailed,
    Usage,
)
from protocol.frames import InputTimeoutPolicy, StartOptions

__all__ = [
    "Emit",
    "Interaction",
    "Runner",
    "TaskSpec",
    "TaskStream",
    "Turn",
    "new_spec",
    "outcome",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier turn of a conversation: what the user asked and what the agent answered."""

    input: str
    answer: str
    """The agent's report (or final answer; a note when the turn ended without one)."""


class Interaction(Protocol):
    """The person behind a task, as a runner sees it (given by the task manager in
    :attr:`TaskSpec.interaction`; ``None`` when nobody can be asked).

    Both methods are called from the run's own asyncio task."""

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
        """Emit ``input_required`` and wait for the answer (the task is ``input_required``
        meanwhile). Returns the ``input_received`` recorded, ``timed_out`` when nobody answered
        in time and the task's policy is to continue; a policy of ``fail`` ends the task
        instead (this coroutine is then cancelled)."""
        ...

    def take_messages(self, turn: int) -> list[str]:
        """The steering messages that arrived since the last call, oldest first; each is
        shown to the watchers (``user_message``) as it is taken, for ``turn``."""
        ...

    def has_messages(self) -> bool:
        """Whether messages wait to be taken."""
        ...

    def close_messages(self) -> None:
        """The agent takes no more messages (it is writing its final report): later ones
        are refused with ``task_finished``."""
        ...

    def set_timeout(
        self, timeout: float | None = None, on_timeout: InputTimeoutPolicy | None = None
    ) -> None:
        """How long the run's later questions wait and what a timeout does (``None``: left as
        it is). The runner sets its agent config's values here for a task that gave none."""
        ...


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a runner is asked to run."""

    owner: str
    task_id: str
    input: str
    options: StartOptions
    thread_id: str | None = None
    """The conversation the task belongs to."""
    history: tuple[Turn, ...] = ()
    """The thread's earlier turns, oldest first (the runner fits them to its model)."""
    interaction: Interaction | None = None
    """Questions, approvals and steering messages (``None``: nobody to ask)."""


Emit = Callable[[Event | Usage], None]
"""Takes a run's non-terminal events in order (and its usage reports); never blocks."""

Runner = Callable[[TaskSpec, Emit], Awaitable[Event]]
"""A task's work: ``await runner(spec, emit)`` returns the terminal event (see the module
docstring)."""


async def outcome(
    work: Callable[[], Awaitable[Event]], cancel_reason: Callable[[], str | None]
) -> Event:
    """Await ``work()`` (a runner's call) and return the terminal event it ended with.

    ``cancel_reason()`` gives the reason of a requested cancel, or ``None``; a cancellation
    without one is not ours and propagates."""
    try:
        result = await work()
    except asyncio.CancelledError:
        reason = cancel_reason()
        if reason is None:
            raise
        _uncancel()
        return TaskCancelled(reason=reason)
    except Exception as exc:
        log.exception("a runner raised")
        reason = cancel_reason()
        if reason is not None:
            return TaskCancelled(reason=reason)
        return TaskFailed(reason=f"internal error: {type(exc).__name__}: {exc}", code="internal")
    reason = cancel_reason()
    if reason is not None:  # it swallowed the cancellation: the cancel was accepted all the same
        _uncancel()
        return TaskCancelled(reason=reason)
    if type(result) not in TERMINAL_STATES:
        return TaskFailed(reason="the run ended without a terminal event", code="internal")
    return result


def _uncancel() -> None:
    """The requested cancellation has been handled: the driving task is not cancelled."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        task.uncancel()


class TaskStream:
    """One run as an async iterator of events, with an idempotent :meth:`cancel`: the runner
    contract for scripts. Nothing runs until the first ``__anext__``; the last event is the
    terminal one (``task_cancelled`` alone when cancelled before the work began).

    The buffer is unbounded (for consumers that keep up). A consumer that stops early
    (:meth:`aclose`, garbage collection) stops the work before ``aclose()`` returns; its own
    cancellation stops the work too and propagates."""

    def __init__(self, runner: Runner, spec: TaskSpec) -> None:
        self.spec = spec
        self.usage = Usage()
        """Token usage reported by the run so far."""
        self._runner = runner
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._driver: asyncio.Task[Event] | None = None
        self._cancel_reason: str | None = None
        self._gen = self._run()

    @property
    def done(self) -> bool:
        """True once the run's work has stopped (or never started and never will)."""
        driver = self._driver
        return driver.done() if driver is not None else self._cancel_reason is not None

    def cancel(self, reason: str = "cancelled by client") -> None:
        """Stop the run; the stream then ends with ``task_cancelled``. Idempotent; does not
        wait."""
        if self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        driver = self._driver
        if driver is not None and not driver.done():
            driver.cancel(reason)
        self._wake()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._gen

    def __anext__(self) -> Awaitable[Event]:
        return self._gen.__anext__()

    def aclose(self) -> Awaitable[None]:
        return self._gen.aclose()

    def _emit(self, item: Event | Usage) -> None:
        if type(item) is Usage:
            self.usage = item
            return
        self._items.append(item)  # type: ignore[arg-type]
        self._wake()

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _work(self) -> Awaitable[Event]:
        return self._runner(self.spec, self._emit)

    def _reason(self) -> str | None:
        return self._cancel_reason

    async def _run(self) -> AsyncGenerator[Event, None]:
        if self._cancel_reason is not None:
            yield TaskCancelled(reason=self._cancel_reason)
            return
        loop = asyncio.get_running_loop()
        driver = loop.create_task(
            outcome(self._work, self._reason),
            name=f"run:{self.spec.task_id}",
        )
        self._driver = driver
        driver.add_done_callback(self._wake)
        try:
            items = self._items
            while True:
                if items:
                    yield items.popleft()
                elif driver.done():
                    break
                else:
                    self._waiter = loop.create_future()
                    await self._waiter
            if driver.cancelled():  # cancelled before it could run a step
                yield TaskCancelled(reason=self._cancel_reason or "cancelled")
            else:
                yield driver.result()
        finally:
            if not driver.done():
                driver.cancel()
                await asyncio.wait([driver])  # the work's own cleanup; never raises its outcome
            if not driver.cancelled():
                driver.exception()  # retrieved: no "exception was never retrieved" warning


def new_spec(
    input: str, options: StartOptions | None = None, task_id: str | None = None
) -> TaskSpec:
    """A spec for a run outside the task manager (owner ``local``)."""
    return TaskSpec("local", task_id or uuid.uuid4().hex, input, options or StartOptions())
