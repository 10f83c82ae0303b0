"""The task manager: registry, lifecycle, cancellation, status, event log, subscriptions.

A task is a run of a *runner* (see :class:`TaskRun`; in the gateway it is
:meth:`gateway.streaming.StreamingOrchestrator.execute_task_streaming`) owned by a principal.
The manager gives each event of the run a ``seq`` (1, 2, 3, … without gaps), wraps it in a
ready :class:`protocol.frames.EventFrame`, appends it to the task's log in the backend and fans
it out to the subscribers.

Lifecycle: ``pending`` (created, possibly waiting in the queue for a run slot) → ``running``
(the runner was started) → ``completed`` | ``failed`` | ``cancelled``, set by the terminal event.
Every task ends with exactly one terminal event, whatever happens: the runner's own, or one the
manager writes when the runner stopped without one (``task_cancelled`` after a cancel,
``task_failed`` with code ``internal`` otherwise). Events a runner yields after its terminal
one are discarded.

Cancellation policy:

- :meth:`TaskManager.cancel` is idempotent and never waits: it asks the run to stop
  (:meth:`TaskRun.cancel`); the run's ``task_cancelled`` arrives once the work has really
  stopped. A pending task is taken out of the queue and gets its ``task_cancelled`` at once.
  If a run ignores the request for ``cancel_grace`` seconds, its driver task is cancelled.
- An external ``CancelledError`` (e.g. the event loop shutting down) propagates; the manager
  still writes the terminal event on the way out.
- :meth:`TaskManager.shutdown` lets tasks finish until a deadline, then cancels the rest and
  waits for their terminal events.

Owner isolation: every call takes the owner (principal); another owner's task is reported as
``unknown_task``, exactly like a task that does not exist, and task ids are per owner, so two
owners may both use ``task_id="job-1"`` without noticing each other.

Detach: a task with no subscriber (never subscribed, or after the last one left) keeps running
for its detach TTL, then is cancelled (reason ``detached``); with ``on_detach="cancel"`` it is
cancelled as soon as its last subscriber leaves. Subscribing again stops the clock.

Limits (:class:`TaskManagerConfig`): active (pending + running) tasks per owner and in total,
refused with ``too_many_tasks``; at most ``max_running`` runs at a time, the others wait as
``pending`` in FIFO order with a ``task_progress`` step ``queued`` carrying their position.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from protocol.errors import ErrorCode
from protocol.events import (
    TERMINAL_STATES,
    Event,
    LlmResponse,
    TaskCancelled,
    TaskFailed,
    TaskProgress,
    Usage,
)
from protocol.frames import (
    DetachPolicy,
    EventFrame,
    Gap,
    RequestId,
    StartOptions,
    TaskState,
    TaskStatus,
)

from .backend import InMemoryBackend, TaskBackend, TaskRecord
from .errors import TaskError
from .subscription import Deliver, Subscription

__all__ = [
    "CancelResult",
    "RunnerFactory",
    "StartResult",
    "TaskManager",
    "TaskManagerConfig",
    "TaskRun",
    "TaskSpec",
]

log = logging.getLogger(__name__)

CancelResult = Literal["accepted", "already_terminal", "unknown"]

TerminalObserver = Callable[[TaskRecord, "float | None", "float | None"], None]
"""Told of every task's end (the record has the final state) with the seconds since its
cancel was requested, if it was, and the seconds from its run's start to its first streamed
token, if any (metrics)."""


@dataclass(frozen=True, slots=True)
class TaskManagerConfig:
    """Limits and timings of a :class:`TaskManager` (the defaults are the gateway's)."""

    max_tasks_per_owner: int = 1000
    """Active (pending + running) tasks of one owner; more → ``too_many_tasks``."""
    max_tasks_total: int = 10_000
    """Active tasks of the whole manager; more → ``too_many_tasks``."""
    max_running: int = 256
    """Runs (LLM-driving agent loops) at once; further tasks wait as ``pending`` (FIFO)."""
    detach_ttl: float = 600.0
    """Seconds a task with no subscriber keeps running before it is cancelled, unless its
    ``StartOptions.detach_ttl`` says otherwise (``inf`` = never)."""
    on_detach: DetachPolicy = "keep"
    """Default detach policy: ``keep`` (for ``detach_ttl``) or ``cancel`` at once."""
    retain_finished: float = 3600.0
    """Seconds a finished task (its status and event log) is kept before removal."""
    cancel_grace: float = 10.0
    """Seconds a run may take to honour a cancel before its driver task is cancelled."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a runner is asked to run."""

    owner: str
    task_id: str
    input: str
    options: StartOptions


class TaskRun(Protocol):
    """One running task as the manager drives it: an async iterator of events ending with a
    terminal event, with an idempotent ``cancel`` (the run then ends with ``task_cancelled``
    once its work has stopped), ``aclose`` and the token usage so far.

    :class:`gateway.streaming.TaskStream` is the implementation used by the gateway."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def __anext__(self) -> Awaitable[Event]: ...

    def cancel(self, reason: str = ...) -> None: ...

    def aclose(self) -> Awaitable[None]: ...

    @property
    def usage(self) -> Usage: ...


RunnerFactory = Callable[[TaskSpec], TaskRun]
"""Makes the run of a task; called when the task leaves the queue."""


@dataclass(frozen=True, slots=True)
class StartResult:
    """What :meth:`TaskManager.start` returns."""

    task_id: str
    state: TaskState
    """The task's state when the call returned."""
    existing: bool
    """True when an identical ``start`` had already created this task (idempotent retry)."""
    subscription: Subscription | None = None
    """The subscription made with ``deliver``, if one was passed."""


_FINAL_STATES = frozenset(TERMINAL_STATES.values())


class _Runtime:
    """Process-local state of an active task."""

    __slots__ = (
        "admitted",
        "cancel_reason",
        "cancel_requested",
        "detach_timer",
        "driver",
        "first_token",
        "hard_timer",
        "holds_slot",
        "record",
        "run",
        "started",
        "subscribers",
        "terminal",
    )

    def __init__(self, record: TaskRecord) -> None:
        self.record = record
        self.driver: asyncio.Task[None] | None = None
        self.run: TaskRun | None = None
        self.admitted: asyncio.Future[bool] | None = None
        self.cancel_reason: str | None = None
        self.cancel_requested: float | None = None
        self.started = 0.0  # perf_counter() when the run began
        self.first_token = 0.0  # perf_counter() of the first llm_response
        self.subscribers = 0
        self.detach_timer: asyncio.TimerHandle | None = None
        self.hard_timer: asyncio.TimerHandle | None = None
        self.terminal = False
        self.holds_slot = False


class TaskManager:
    """Runs tasks for owners, keeps their event logs, and serves subscriptions.

    Every public coroutine is safe to cancel: it changes nothing after its last ``await``.
    Use it as ``async with TaskManager(runner) as tasks: ...`` or call :meth:`shutdown`.
    """

    def __init__(
        self,
        runner_factory: RunnerFactory,
        *,
        config: TaskManagerConfig | None = None,
        backend: TaskBackend | None = None,
        on_terminal: TerminalObserver | None = None,
    ) -> None:
        self.config = config or TaskManagerConfig()
        self._runner_factory = runner_factory
        self._on_terminal = on_terminal
        self._backend: TaskBackend = backend if backend is not None else InMemoryBackend()
        self._active: dict[tuple[str, str], _Runtime] = {}
        self._active_by_owner: Counter[str] = Counter()
        self._queue: deque[_Runtime] = deque()
        self._running = 0
        self._closing = False

    # ------------------------------------------------------------------ introspection

    @property
    def backend(self) -> TaskBackend:
        return self._backend

    @property
    def active_count(self) -> int:
        """Tasks pending or running."""
        return len(self._active)

    @property
    def running_count(self) -> int:
        """Tasks holding a run slot."""
        return self._running

    @property
    def pending_count(self) -> int:
        """Tasks waiting in the queue for a run slot."""
        return len(self._queue)

    # ------------------------------------------------------------------ start

    async def start(
        self,
        owner: str,
        input: str,
        *,
        task_id: str | None = None,
        options: StartOptions | None = None,
        deliver: Deliver | None = None,
    ) -> StartResult:
        """Create a task and schedule its run.

        With ``task_id`` the call is idempotent: the same owner starting the same id with the
        same input and options gets the existing task back (``existing=True``, whatever its
        state); different input or options → ``task_exists``. With ``deliver`` the task is
        subscribed from its first event (for an existing task, from ``seq`` 1 on), before any
        detach clock can start. Raises :class:`TaskError` (``too_many_tasks``, ``task_exists``,
        ``internal`` while shutting down)."""
        options = options if options is not None else StartOptions()
        if task_id is not None:
            found = await self._backend.get(owner, task_id)
            if found is not None:
                return await self._existing(found, input, options, deliver)
        if self._closing:
            raise TaskError(ErrorCode.INTERNAL, "the server is shutting down; start refused")
        cfg = self.config
        if self._active_by_owner[owner] >= cfg.max_tasks_per_owner:
            raise TaskError(
                ErrorCode.TOO_MANY_TASKS,
                f"you already have {cfg.max_tasks_per_owner} active tasks (the limit); "
                "retry after one of them ends",
                task_id=task_id,
            )
        if len(self._active) >= cfg.max_tasks_total:
            raise TaskError(
                ErrorCode.TOO_MANY_TASKS,
                f"the server runs its maximum of {cfg.max_tasks_total} active tasks; retry later",
                task_id=task_id,
            )
        now = time.time()
        record = TaskRecord(
            owner=owner,
            task_id=task_id if task_id is not None else uuid.uuid4().hex,
            input=input,
            options=options,
            created=now,
            updated=now,
        )
        found = await self._backend.create(record)
        if found is not None:  # lost a race with an identical start
            return await self._existing(found, input, options, deliver)
        rt = _Runtime(record)
        self._active[(owner, record.task_id)] = rt
        self._active_by_owner[owner] += 1
        subscription = None
        if deliver is not None:
            subscription = self._attach(rt, deliver)
        else:
            self._arm_detach(rt)
        rt.driver = asyncio.get_running_loop().create_task(
            self._drive(rt), name=f"task:{record.task_id}"
        )
        return StartResult(record.task_id, record.state, False, subscription)

    async def _existing(
        self, found: TaskRecord, input: str, options: StartOptions, deliver: Deliver | None
    ) -> StartResult:
        if found.input != input or found.options != options:
            raise TaskError(
                ErrorCode.TASK_EXISTS,
                f"task {found.task_id!r} already exists with a different input or options",
                task_id=found.task_id,
            )
        subscription = None
        if deliver is not None:
            subscription = await self.subscribe(found.owner, found.task_id, deliver=deliver)
        return StartResult(found.task_id, found.state, True, subscription)

    # ------------------------------------------------------------------ cancel

    async def cancel(
        self, owner: str, task_id: str, reason: str = "cancelled by client"
    ) -> CancelResult:
        """Ask a task to stop. ``accepted``: its ``task_cancelled`` (or, if it finished first,
        its other terminal event) follows; ``already_terminal``; ``unknown`` (also for another
        owner's task). Idempotent; returns without waiting for the work to stop."""
        rt = self._active.get((owner, task_id))
        if rt is None:
            found = await self._backend.get(owner, task_id)
            if found is None:
                return "unknown"
            # Not running here. With the in-memory backend that means it has ended; a shared
            # backend would forward the cancel to the process running it (not implemented).
            return "already_terminal"
        if rt.terminal:
            return "already_terminal"
        self._cancel(rt, reason)
        return "accepted"

    def _cancel(self, rt: _Runtime, reason: str) -> None:
        if rt.terminal or rt.cancel_reason is not None:
            return
        rt.cancel_reason = reason
        rt.cancel_requested = time.perf_counter()
        self._disarm_detach(rt)
        admitted = rt.admitted
        if admitted is not None and not admitted.done():  # still queued
            self._queue.remove(rt)
            admitted.set_result(False)
        elif rt.run is not None:
            rt.run.cancel(reason)
            if math.isfinite(self.config.cancel_grace):
                rt.hard_timer = asyncio.get_running_loop().call_later(
                    self.config.cancel_grace, self._hard_cancel, rt
                )
        # else: the driver has not begun; it sees cancel_reason before starting the run.

    def _hard_cancel(self, rt: _Runtime) -> None:
        rt.hard_timer = None
        if not rt.terminal and rt.driver is not None:
            log.warning("task %s ignored its cancel; cancelling its driver", rt.record.task_id)
            rt.driver.cancel()

    # ------------------------------------------------------------------ status

    async def status(self, owner: str, task_id: str) -> TaskStatus:
        """The state of one task; ``unknown_task`` if the owner has no such task."""
        record = await self._backend.get(owner, task_id)
        if record is None:
            raise TaskError(ErrorCode.UNKNOWN_TASK, f"no task {task_id!r}", task_id=task_id)
        positions = self._queue_positions() if record.state == "pending" else {}
        return self._status(record, positions)

    async def list_tasks(self, owner: str) -> list[TaskStatus]:
        """The state of every retained task of ``owner``, oldest first."""
        records = await self._backend.list_tasks(owner)
        positions = self._queue_positions() if self._queue else {}
        return [self._status(r, positions) for r in records]

    def _queue_positions(self) -> dict[int, int]:
        return {id(rt.record): i for i, rt in enumerate(self._queue, 1)}

    def _status(self, record: TaskRecord, positions: dict[int, int]) -> TaskStatus:
        usage = record.usage
        rt = self._active.get((record.owner, record.task_id))
        if rt is not None and rt.run is not None and not rt.terminal:
            usage = rt.run.usage
        return TaskStatus(
            task_id=record.task_id,
            state=record.state,
            last_seq=record.last_seq,
            created=record.created,
            updated=record.updated,
            progress=record.progress,
            turn=record.turn,
            usage=usage,
            queue_position=positions.get(id(record)),
        )

    # ------------------------------------------------------------------ subscribe

    async def subscribe(
        self,
        owner: str,
        task_id: str,
        *,
        after_seq: int = 0,
        deliver: Deliver | None = None,
        request_id: RequestId | None = None,
    ) -> Subscription:
        """Follow a task: a ``Gap`` if events after ``after_seq`` were dropped, the retained
        events with ``seq > after_seq``, then live ones (see :mod:`.subscription`).

        ``deliver`` receives them synchronously; without it, iterate the subscription.
        ``request_id`` is copied into the ``Gap``. Raises ``unknown_task``."""
        key = (owner, task_id)
        sub = Subscription(owner, task_id, after_seq, deliver)
        undo = self._backend.listen(owner, task_id, sub._on_live)
        try:
            found = await self._backend.read(owner, task_id, after_seq)
        except BaseException:
            undo()
            raise
        if found is None:
            undo()
            raise TaskError(ErrorCode.UNKNOWN_TASK, f"no task {task_id!r}", task_id=task_id)
        gap = None
        if after_seq + 1 < found.first_available_seq:
            gap = Gap(
                task_id=task_id,
                first_available_seq=found.first_available_seq,
                id=request_id,
                after_seq=after_seq,
            )
        rt = self._active.get(key)
        on_close = undo
        if rt is not None and not rt.terminal:
            on_close = self._counted(rt, undo)
        sub._start(gap, found.frames, on_close)
        if not sub.closed and (rt is None or rt.terminal):
            # Over already (its terminal event was at or before after_seq), or it runs in
            # another process: ask the registry.
            record = await self._backend.get(owner, task_id)
            if record is None or record.state in _FINAL_STATES:
                sub.close()
        return sub

    def _attach(self, rt: _Runtime, deliver: Deliver) -> Subscription:
        """Subscribe to a task that has no event yet (synchronously, from ``start``)."""
        record = rt.record
        sub = Subscription(record.owner, record.task_id, 0, deliver)
        undo = self._backend.listen(record.owner, record.task_id, sub._on_live)
        sub._start(None, [], self._counted(rt, undo))
        return sub

    def _counted(self, rt: _Runtime, undo: Callable[[], None]) -> Callable[[], None]:
        rt.subscribers += 1
        self._disarm_detach(rt)

        def on_close() -> None:
            undo()
            rt.subscribers -= 1
            if rt.subscribers == 0:
                self._arm_detach(rt)

        return on_close

    def unsubscribe(self, subscription: Subscription) -> None:
        """Same as ``subscription.close()``. The task keeps running under its detach policy."""
        subscription.close()

    # ------------------------------------------------------------------ detach

    def _arm_detach(self, rt: _Runtime) -> None:
        if rt.terminal or rt.cancel_reason is not None or self._closing:
            return
        options = rt.record.options
        policy = options.on_detach or self.config.on_detach
        ttl = options.detach_ttl if options.detach_ttl is not None else self.config.detach_ttl
        if policy == "cancel" or ttl <= 0:
            self._cancel(rt, "detached: no subscriber left")
        elif math.isfinite(ttl):
            rt.detach_timer = asyncio.get_running_loop().call_later(
                ttl, self._cancel, rt, f"detached: no subscriber for {ttl:g} s"
            )

    @staticmethod
    def _disarm_detach(rt: _Runtime) -> None:
        if rt.detach_timer is not None:
            rt.detach_timer.cancel()
            rt.detach_timer = None

    # ------------------------------------------------------------------ the run

    async def _drive(self, rt: _Runtime) -> None:
        record = rt.record
        run: TaskRun | None = None
        try:
            if rt.cancel_reason is not None:
                return
            if self._running >= self.config.max_running:
                rt.admitted = asyncio.get_running_loop().create_future()
                self._queue.append(rt)
                position = len(self._queue)
                self._emit(
                    rt,
                    TaskProgress(
                        step="queued",
                        message=f"waiting for a free slot (position {position})",
                        queue_position=position,
                    ),
                )
                if not await rt.admitted:
                    return
            else:
                self._running += 1
                rt.holds_slot = True
            record.state = "running"
            self._backend.update(record)
            run = self._runner_factory(
                TaskSpec(record.owner, record.task_id, record.input, record.options)
            )
            rt.run = run
            rt.started = time.perf_counter()
            push_to = getattr(run, "push_to", None)
            if push_to is not None:
                # The run hands its events over as they happen, in its producer's own call:
                # no hop through this driver task per event. Iteration below then yields only
                # what the run produces itself (its first and its terminal event).
                push_to(functools.partial(self._emit, rt))
            async for event in run:
                self._emit(rt, event)
                if rt.terminal:
                    break
        except Exception as exc:
            log.exception("task %s: the run raised", record.task_id)
            self._emit(rt, TaskFailed(reason=f"internal error: {exc!r}", code="internal"))
        finally:
            try:
                if run is not None:
                    with contextlib.suppress(Exception):
                        await run.aclose()
            finally:
                admitted = rt.admitted
                if admitted is not None and not admitted.done():  # cancelled while queued
                    self._queue.remove(rt)
                    admitted.cancel()
                if rt.holds_slot:
                    rt.holds_slot = False
                    self._release_slot()
                if not rt.terminal:
                    if rt.cancel_reason is not None or run is None:
                        self._emit(rt, TaskCancelled(reason=rt.cancel_reason or "cancelled"))
                    else:
                        self._emit(
                            rt,
                            TaskFailed(reason="the run ended without a result", code="internal"),
                        )
                self._finish(rt)

    def _release_slot(self) -> None:
        self._running -= 1
        queue = self._queue
        while queue and self._running < self.config.max_running:
            rt = queue.popleft()
            assert rt.admitted is not None
            self._running += 1
            rt.holds_slot = True
            rt.admitted.set_result(True)

    def _emit(self, rt: _Runtime, event: Event) -> None:
        """Sequence one event and hand it to the log (the hot path: keep it lean)."""
        if rt.terminal:
            return  # exactly one terminal event, and it is the last one
        record = rt.record
        seq = record.last_seq + 1
        record.last_seq = seq
        now = time.time()
        record.updated = now
        cls = type(event)
        if cls is LlmResponse:
            if rt.first_token == 0.0:
                rt.first_token = time.perf_counter()
        elif cls is TaskProgress:
            assert isinstance(event, TaskProgress)
            record.progress = event.step
            if event.turn is not None and event.agent == "main":
                record.turn = event.turn
        else:
            state = TERMINAL_STATES.get(cls)
            if state is not None:
                rt.terminal = True
                record.state = state
                usage = getattr(event, "usage", None)
                if usage is None and rt.run is not None:
                    usage = rt.run.usage
                record.usage = usage
                self._backend.update(record)
                if self._on_terminal is not None:
                    requested = rt.cancel_requested
                    first = rt.first_token
                    self._on_terminal(
                        record,
                        None if requested is None else time.perf_counter() - requested,
                        first - rt.started if first and rt.started else None,
                    )
        self._backend.append(
            record, EventFrame(task_id=record.task_id, seq=seq, ts=now, event=event)
        )

    def _finish(self, rt: _Runtime) -> None:
        record = rt.record
        key = (record.owner, record.task_id)
        if self._active.pop(key, None) is None:
            return
        self._active_by_owner[record.owner] -= 1
        if self._active_by_owner[record.owner] <= 0:
            del self._active_by_owner[record.owner]
        self._disarm_detach(rt)
        if rt.hard_timer is not None:
            rt.hard_timer.cancel()
            rt.hard_timer = None
        rt.run = None
        self._backend.expire(record.owner, record.task_id, self.config.retain_finished)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, deadline: float = 30.0) -> None:
        """Refuse new tasks, let active ones run for up to ``deadline`` seconds, then cancel the
        rest (reason ``server shutdown``) and wait until each has written its terminal event.
        Safe to call twice."""
        self._closing = True
        drivers = [rt.driver for rt in self._active.values() if rt.driver is not None]
        if drivers and deadline > 0:
            await asyncio.wait(drivers, timeout=deadline)
        for rt in list(self._active.values()):
            self._cancel(rt, "server shutdown")
        remaining = [d for d in drivers if not d.done()]
        if remaining:
            grace = self.config.cancel_grace
            _, late = await asyncio.wait(remaining, timeout=grace)
            for driver in late:
                driver.cancel()
            if late:
                _, stuck = await asyncio.wait(late, timeout=grace)
                if stuck:
                    log.error("shutdown: %d task(s) did not stop; ending them anyway", len(stuck))
        for rt in list(self._active.values()):
            # Work that would not stop even when its driver was cancelled: its clients still
            # get their terminal event (the driver, if it ever ends, adds nothing).
            self._emit(rt, TaskCancelled(reason="server shutdown (the work did not stop)"))
            self._finish(rt)
        await self._backend.close()

    async def __aenter__(self) -> TaskManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown(0)
