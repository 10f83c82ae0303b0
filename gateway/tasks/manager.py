"""The task manager: runs tasks for owners and serves their events.

A task is one call of a *runner* (:data:`gateway.streaming.Runner`: ``async (spec, emit) ->
terminal event``; in the gateway, :meth:`gateway.streaming.StreamingOrchestrator.run`). The
manager drives each call in a *driver* task of its own, gives each event a ``seq`` (1, 2, 3, …
without gaps), wraps it in a ready :class:`protocol.frames.EventFrame` and hands it to the
backend, which stores it and then passes it to the subscribers. What the manager keeps is the
process-local part: the drivers, the run slots (:mod:`.admission`), the detach clocks
(:mod:`.detach`); records and logs live in the backend (:mod:`.backend`), and every change of a
record goes through it.

Lifecycle: ``pending`` (created, possibly waiting for a run slot) → ``running`` (the runner was
called) → ``completed`` | ``failed`` | ``cancelled``, set by the terminal event. Every task ends
with exactly one terminal event: the one its runner returned, ``task_cancelled`` after an
accepted cancel (whatever state the task was in when it arrived), or ``task_failed`` with code
``internal`` when the runner raised or returned something else (:func:`gateway.streaming.outcome`).

Cancellation policy:

- :meth:`TaskManager.cancel` is idempotent and never waits. A cancel is accepted while the task
  has not ended, and is carried out by cancelling its driver (queued, let out of the queue but
  not started yet, or running: one mechanism); ``task_cancelled`` is written once the work has
  stopped. If the work ignores it for ``cancel_grace`` seconds the driver is cancelled again,
  and after another ``cancel_grace`` the task is ended anyway (the stuck work is logged).
- A task this process does not run is cancelled through the backend, which forwards the request
  to the node that runs it.
- An external ``CancelledError`` of a driver propagates; the terminal event is still written.
- :meth:`TaskManager.shutdown` lets tasks finish until a deadline, then cancels the rest and
  waits for their terminal events.

Conversations: a task started with a ``thread_id`` is a turn of that thread (kept by the
backend, :meth:`TaskManager.threads` / :meth:`TaskManager.thread` list them); its runner gets the
thread's earlier turns (:attr:`TaskSpec.history`). A ``start`` on a thread whose previous task
has not ended follows its ``if_busy`` policy: ``reject`` (``thread_busy``), ``enqueue`` (the run
waits until the thread's earlier tasks have ended, with a ``task_progress`` step
``waiting_for_thread``), ``interrupt`` (the earlier tasks are cancelled, then it runs). The
backend decides "busy" in the same atomic step that creates the task
(:meth:`~gateway.tasks.backend.TaskBackend.create_in_thread`), so it holds across nodes: of
two ``reject`` starts on an idle thread exactly one wins, enqueued tasks run in the
order they were created (each waits for the terminal event of the ones before it, wherever
they run), and ``interrupt`` cancels through the backend, which reaches every node.

Questions and steering: every run gets a :class:`~.interaction.TaskInteraction`
(:attr:`TaskSpec.interaction`); :meth:`TaskManager.answer` and :meth:`TaskManager.message`
reach it on whichever node runs the task (through the backend). An answer that repeats the
one taken (same request, same answer: a client resending after a dropped connection) is
acknowledged as resent, also once the task has ended (found in its log).

Owner isolation: every call takes the owner (principal); another owner's task is reported as
``unknown_task``, exactly like a task that does not exist, and task ids are per owner.

Limits (:class:`TaskManagerConfig`): active tasks per owner (counted by the backend, across
every node) and in this process, refused with ``too_many_tasks``; at most ``max_running`` runs
at a time, the others wait as ``pending`` in FIFO order with a ``task_progress`` step ``queued``
carrying their position. What finished tasks keep is bounded by the backend's
:class:`~gateway.tasks.backend.Retention`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from gateway.streaming.runner import Runner, TaskSpec, Turn, outcome
from protocol.errors import ErrorCode
from protocol.events import (
    TERMINAL_STATES,
    Event,
    InputReceived,
    InputRequest,
    InputRequired,
    LlmResponse,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    Usage,
)
from protocol.frames import (
    DetachPolicy,
    EventFrame,
    Gap,
    IfBusy,
    Input,
    InputTimeoutPolicy,
    RequestId,
    StartOptions,
    TaskState,
    TaskStatus,
    ThreadSummary,
    ThreadTask,
)

from .admission import RunSlots
from .backend import (
    ANSWER_RESENT,
    ActiveLimitReached,
    BackendUnavailable,
    CancelResult,
    InMemoryBackend,
    TaskBackend,
    TaskRecord,
    ThreadBusy,
    ThreadTurn,
)
from .detach import DetachClocks
from .errors import TaskError
from .interaction import DEFAULT_INPUT_TIMEOUT, TaskInteraction, same_answer
from .observer import TaskObserver, TerminalObserver, TimingObserver
from .subscription import Deliver, Subscription

__all__ = [
    "CancelResult",
    "RunnerFactory",
    "StartResult",
    "TaskManager",
    "TaskManagerConfig",
    "TaskSpec",
]

log = logging.getLogger(__name__)

RunnerFactory = Runner
"""The former name of :data:`gateway.streaming.Runner`, kept for callers."""

_replace = msgspec.structs.replace


@dataclass(frozen=True, slots=True)
class TaskManagerConfig:
    """Limits and timings of a :class:`TaskManager` (the defaults are the gateway's)."""

    max_tasks_per_owner: int = 1000
    """Active (pending + running) tasks of one owner, on every node; more → ``too_many_tasks``."""
    max_tasks_total: int = 10_000
    """Active tasks of this manager; more → ``too_many_tasks``."""
    max_running: int = 256
    """Runs (LLM-driving agent loops) at once; further tasks wait as ``pending`` (FIFO)."""
    detach_ttl: float = 600.0
    """Seconds a task with no subscriber keeps running before it is cancelled, unless its
    ``StartOptions.detach_ttl`` says otherwise (``inf`` = never)."""
    on_detach: DetachPolicy = "keep"
    """Default detach policy: ``keep`` (for ``detach_ttl``) or ``cancel`` at once."""
    retain_finished: float = 3600.0
    """Seconds a finished task (its status and event log) is kept before removal (sooner when
    the backend's finished-task bounds need the room)."""
    cancel_grace: float = 10.0
    """Seconds a run may take to honour a cancel before its driver is cancelled again (and,
    after as long again, the task is ended without waiting for it)."""
    input_timeout: float = DEFAULT_INPUT_TIMEOUT
    """Seconds a question or approval waits for an answer, unless the task says otherwise."""
    on_input_timeout: InputTimeoutPolicy = "continue"
    """What a timed-out wait does, unless the task says otherwise: ``continue`` with "no
    answer", or ``fail`` the task with code ``input_timeout``."""
    max_pending_messages: int = 16
    """Steering messages a task holds before its agent takes them."""
    max_queued_per_thread: int = 8
    """Tasks ``enqueue``d behind a thread's running task."""


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
    thread_id: str | None = None
    """The task's thread."""
    after_task_id: str | None = None
    """For an ``enqueue``d task: the thread's task it waits for."""


def _noop() -> None:
    pass


class _Task:
    """The process-local part of an active task."""

    __slots__ = (
        "after",
        "cancel_reason",
        "driver",
        "emit",
        "hard_timer",
        "interaction",
        "key",
        "last_seq",
        "output_seen",
        "record",
        "slot",
        "terminal",
    )

    def __init__(self, record: TaskRecord) -> None:
        self.key = (record.owner, record.task_id)
        self.record = record
        """The latest record handed to the backend (its ``last_seq`` is the backend's)."""
        self.last_seq = 0
        self.driver: asyncio.Task[None] | None = None
        self.emit: Callable[[Event | Usage], None] = _discard
        self.cancel_reason: str | None = None
        self.hard_timer: asyncio.TimerHandle | None = None
        self.output_seen = False
        self.slot = False
        self.terminal = False
        self.after: tuple[str, ...] = ()
        """Tasks of the thread this one waits for before it runs."""
        self.interaction: TaskInteraction | None = None

    def reason(self) -> str | None:
        return self.cancel_reason


class TaskManager:
    """Runs tasks for owners, keeps their event logs in a backend, and serves subscriptions.

    Every public coroutine is safe to cancel: it changes nothing after its last ``await``.
    Use it as ``async with TaskManager(runner) as tasks: ...`` or call :meth:`shutdown`.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        config: TaskManagerConfig | None = None,
        backend: TaskBackend | None = None,
        on_terminal: TerminalObserver | None = None,
        observer: TaskObserver | None = None,
        node: str | None = None,
    ) -> None:
        self.config = config or TaskManagerConfig()
        self.node = node or uuid.uuid4().hex
        """This manager's id in the backend's records."""
        self._runner = runner
        if observer is None:
            observer = TimingObserver(on_terminal) if on_terminal is not None else TaskObserver()
        elif on_terminal is not None:
            raise ValueError("pass either on_terminal or observer")
        self._observer = observer
        self._owns_backend = backend is None
        self._backend: TaskBackend = backend if backend is not None else InMemoryBackend()
        self._active: dict[tuple[str, str], _Task] = {}
        self._drivers: set[asyncio.Task[None]] = set()
        self._slots = RunSlots(self.config.max_running)
        self._detach: DetachClocks[tuple[str, str]] = DetachClocks(self._detached)
        self._closing = False
        self._backend.attach(self.node, _Handler(self))

    # ------------------------------------------------------------------ introspection

    @property
    def backend(self) -> TaskBackend:
        return self._backend

    @property
    def active_count(self) -> int:
        """Tasks of this manager pending or running."""
        return len(self._active)

    @property
    def running_count(self) -> int:
        """Tasks holding a run slot."""
        return self._slots.running

    @property
    def pending_count(self) -> int:
        """Tasks waiting in the queue for a run slot."""
        return self._slots.waiting

    # ------------------------------------------------------------------ start

    async def start(
        self,
        owner: str,
        input: str,
        *,
        task_id: str | None = None,
        options: StartOptions | None = None,
        deliver: Deliver | None = None,
        thread_id: str | None = None,
        if_busy: IfBusy = "reject",
    ) -> StartResult:
        """Create a task and schedule its run.

        With ``task_id`` the call is idempotent: the same owner starting the same id with the
        same input and options gets the existing task back (``existing=True``, whatever its
        state); different input or options → ``task_exists``. With ``deliver`` the task is
        subscribed from its first event (for an existing task, from ``seq`` 1 on), before any
        detach clock can start. Raises :class:`TaskError` (``too_many_tasks``, ``task_exists``,
        ``internal`` while shutting down or when the backend is unavailable).

        With ``thread_id`` the task is the thread's next turn; ``if_busy`` says what happens
        when the thread's previous task has not ended (``thread_busy`` for ``reject``)."""
        options = options if options is not None else StartOptions()
        after: tuple[str, ...] = ()
        with _unavailable_refuses("start"):
            # No lookup first: creating answers with the stored task when the id exists
            # (one round trip to a remote backend, not two). A retry of a start that took
            # gets its task back even while new ones are refused.
            try:
                self._check_open(task_id)
            except TaskError:
                found = await self._backend.get(owner, task_id) if task_id is not None else None
                if found is None:
                    raise
                return await self._existing(found, input, options, deliver, thread_id)
            now = time.time()
            record = TaskRecord(
                owner=owner,
                task_id=task_id if task_id is not None else uuid.uuid4().hex,
                input=input,
                options=options,
                created=now,
                updated=now,
                node=self.node,
                thread_id=thread_id,
            )
            try:
                if thread_id is None:
                    found = await self._backend.create(
                        record, max_active=self.config.max_tasks_per_owner
                    )
                else:
                    found, after = await self._create_in_thread(record, if_busy)
            except ThreadBusy as exc:
                raise _thread_busy(str(thread_id), exc, self.config.max_queued_per_thread) from None
            except ActiveLimitReached as exc:
                raise TaskError(
                    ErrorCode.TOO_MANY_TASKS,
                    f"you already have {exc.limit} active tasks (the limit); "
                    "retry after one of them ends",
                    task_id=task_id,
                ) from None
        if found is not None:  # the id exists (a retry, or a race with an identical start)
            return await self._existing(found, input, options, deliver, thread_id)
        # Created here: its events start once it is launched below, so listening now misses
        # none (and a backend needs no subscription of its own for a task it writes).
        sub = None
        undo = _noop
        refused: BaseException | None = None
        if deliver is not None:
            sub = Subscription(owner, record.task_id, 0, deliver)
            try:
                with _unavailable_refuses("start"):
                    undo = await self._backend.listen(owner, record.task_id, sub._on_live)
            except BaseException as exc:  # it exists: it runs, though this caller cannot follow
                sub, refused = None, exc
        task = self._launch(record, sub, undo, after)  # (stopped at once if shutdown began)
        if if_busy == "interrupt":
            for other in after:
                await self.cancel(owner, other, "interrupted by a new message on the thread")
        if refused is not None:
            raise refused
        return StartResult(
            record.task_id,
            record.state,
            False,
            sub,
            thread_id,
            after[-1] if after and if_busy == "enqueue" and not task.terminal else None,
        )

    async def _create_in_thread(
        self, record: TaskRecord, if_busy: IfBusy
    ) -> tuple[TaskRecord | None, tuple[str, ...]]:
        """Create the task as its thread's next turn: the existing record (an idempotent
        retry), or ``None`` and the thread's unfinished tasks it was admitted behind."""
        turn = ThreadTurn(
            task_id=record.task_id,
            input=record.input,
            created=record.created,
            updated=record.updated,
        )
        admitted = await self._backend.create_in_thread(
            record,
            turn,
            if_busy=if_busy,
            max_queued=self.config.max_queued_per_thread,
            max_active=self.config.max_tasks_per_owner,
        )
        if isinstance(admitted, TaskRecord):
            return admitted, ()
        return None, admitted

    def _launch(
        self,
        record: TaskRecord,
        sub: Subscription | None = None,
        undo: Callable[[], None] = _noop,
        after: tuple[str, ...] = (),
    ) -> _Task:
        """Run a task this node now owns (a new one, or one a backend moved here) from
        ``record.last_seq`` on; ``sub`` (listening already, ``undo`` ends that) becomes its
        first subscriber before the detach clock starts."""
        task = _Task(record)
        task.last_seq = record.last_seq
        task.after = after
        self._active[task.key] = task
        cfg, options = self.config, record.options
        task.interaction = TaskInteraction(
            record.task_id,
            functools.partial(self._emit, task),
            functools.partial(self._set_waiting, task),
            timeout=options.input_timeout or cfg.input_timeout,
            on_timeout=options.on_input_timeout or cfg.on_input_timeout,
            max_pending=cfg.max_pending_messages,
        )
        self._detach.track(
            task.key,
            options.on_detach or cfg.on_detach,
            options.detach_ttl if options.detach_ttl is not None else cfg.detach_ttl,
        )
        if sub is not None:
            sub._start(None, [], _both(undo, self._detach.watch(task.key)))
        self._start_driver(task, record.task_id)
        return task

    def _check_open(self, task_id: str | None) -> None:
        if self._closing:
            raise TaskError(ErrorCode.INTERNAL, "the server is shutting down; start refused")
        if len(self._active) >= self.config.max_tasks_total:
            raise TaskError(
                ErrorCode.TOO_MANY_TASKS,
                f"the server runs its maximum of {self.config.max_tasks_total} active tasks; "
                "retry later",
                task_id=task_id,
            )

    async def _existing(
        self,
        found: TaskRecord,
        input: str,
        options: StartOptions,
        deliver: Deliver | None,
        thread_id: str | None = None,
    ) -> StartResult:
        if found.input != input or found.options != options or found.thread_id != thread_id:
            raise TaskError(
                ErrorCode.TASK_EXISTS,
                f"task {found.task_id!r} already exists with a different input or options",
                task_id=found.task_id,
            )
        subscription = None
        if deliver is not None:
            subscription = await self.subscribe(found.owner, found.task_id, deliver=deliver)
        return StartResult(found.task_id, found.state, True, subscription, found.thread_id)

    # ------------------------------------------------------------------ cancel

    async def cancel(
        self, owner: str, task_id: str, reason: str = "cancelled by client"
    ) -> CancelResult:
        """Ask a task to stop. ``accepted``: its ``task_cancelled`` follows once the work has
        stopped; ``already_terminal``; ``unknown`` (also for another owner's task). A task run
        by another node is cancelled through the backend. Idempotent; never waits for the work
        to stop."""
        task = self._active.get((owner, task_id))
        if task is not None:
            return self._cancel(task, reason)
        with _unavailable_refuses("cancel"):
            return await self._backend.request_cancel(owner, task_id, reason)

    def _cancel(self, task: _Task, reason: str) -> CancelResult:
        if task.terminal:
            return "already_terminal"
        if task.cancel_reason is not None:
            return "accepted"
        task.cancel_reason = reason
        self._detach.forget(task.key)
        self._observer.cancel_requested(task.record, reason)
        driver = task.driver
        if driver is not None and not driver.done():
            driver.cancel(reason)
            grace = self.config.cancel_grace
            if math.isfinite(grace):
                task.hard_timer = asyncio.get_running_loop().call_later(
                    grace, self._hard_cancel, task, 1
                )
        return "accepted"

    def _hard_cancel(self, task: _Task, attempt: int) -> None:
        task.hard_timer = None
        if task.terminal or task.driver is None:
            return
        if attempt == 1:
            log.warning("task %s ignored its cancel; cancelling it again", task.record.task_id)
            task.driver.cancel(task.cancel_reason)
            task.hard_timer = asyncio.get_running_loop().call_later(
                self.config.cancel_grace, self._hard_cancel, task, 2
            )
        else:
            log.error("task %s did not stop; ending it without its work", task.record.task_id)
            self._end(task, TaskCancelled(reason=f"{task.cancel_reason} (the work did not stop)"))

    def _detached(self, key: tuple[str, str], reason: str) -> None:
        task = self._active.get(key)
        if task is not None:
            self._cancel(task, reason)

    # ------------------------------------------------------------------ status

    async def status(self, owner: str, task_id: str) -> TaskStatus:
        """The state of one task; ``unknown_task`` if the owner has no such task."""
        with _unavailable_refuses("status"):
            record = await self._backend.get(owner, task_id)
        if record is None:
            raise TaskError(ErrorCode.UNKNOWN_TASK, f"no task {task_id!r}", task_id=task_id)
        position = self._slots.position((owner, task_id)) if record.state == "pending" else None
        return _status(record, position)

    async def list_tasks(self, owner: str) -> list[TaskStatus]:
        """The state of every retained task of ``owner``, oldest first."""
        with _unavailable_refuses("status"):
            records = await self._backend.list_tasks(owner)
        positions = self._slots.positions() if self._slots.waiting else {}
        return [_status(r, positions.get((r.owner, r.task_id))) for r in records]

    # ------------------------------------------------------------------ threads

    async def threads(self, owner: str, limit: int = 100) -> list[ThreadSummary]:
        """The owner's threads, most recently updated first."""
        with _unavailable_refuses("threads"):
            return await self._backend.list_threads(owner, limit)

    async def thread(self, owner: str, thread_id: str) -> list[ThreadTask]:
        """The thread's tasks, oldest first; ``unknown_thread`` if the owner has none."""
        with _unavailable_refuses("thread"):
            turns = await self._backend.thread_turns(owner, thread_id)
            if turns is None:
                raise TaskError(ErrorCode.UNKNOWN_THREAD, f"no thread {thread_id!r}")
            records = [await self._backend.get(owner, t.task_id) for t in turns]
        out = []
        for turn, record in zip(turns, records, strict=True):
            item = ThreadTask(
                task_id=turn.task_id,
                input=turn.input,
                state=turn.state,
                created=turn.created,
                updated=turn.updated,
                final_answer=turn.final_answer,
                summary=turn.summary,
                reason=turn.reason,
            )
            if record is not None and not turn.final:
                item = _replace(
                    item,
                    state=record.state,
                    updated=record.updated,
                    last_seq=record.last_seq,
                    pending_input=record.pending_input,
                )
            elif record is not None:
                item = _replace(item, last_seq=record.last_seq)
            out.append(item)
        return out

    # ------------------------------------------------------------------ questions, messages

    async def answer(self, owner: str, answer: Input) -> bool:
        """Answer one of a task's requests (the first valid answer wins). Returns ``True``
        when this very answer had been taken before (a resend; nothing changes). Raises
        :class:`TaskError` (``unknown_task``, ``task_finished``, ``unknown_request``,
        ``already_answered``, ``invalid_answer``, ``unavailable`` when the node running the
        task did not reply)."""
        task = self._active.get((owner, answer.task_id))
        if task is not None and task.interaction is not None and not task.terminal:
            return task.interaction.answer(answer)
        with _unavailable_refuses("input"):
            verdict = await self._backend.send_input(owner, answer.task_id, answer)
            if verdict is None:
                return False
            if verdict == ANSWER_RESENT:
                return True
            if verdict.startswith(ErrorCode.TASK_FINISHED + ":"):
                answered = await self._answered(owner, answer)
                if answered is not None:
                    if answered:
                        return True
                    verdict = f"already_answered: request {answer.request_id!r} was answered"
        raise _refusal(verdict, answer.task_id)

    async def _answered(self, owner: str, answer: Input) -> bool | None:
        """For a task that has ended: whether its log records this very answer to the request
        (``True``) or another one (``False``); ``None`` when it records no answer to it."""
        found = await self._backend.read(owner, answer.task_id, 0)
        request = received = None
        for frame in found.frames if found is not None else ():
            event = frame.event
            if type(event) is InputRequired and event.request.request_id == answer.request_id:
                request = event.request
            elif type(event) is InputReceived and event.request_id == answer.request_id:
                received = event
        if request is None or received is None or received.timed_out:
            return None
        return same_answer(request, received, answer)

    async def message(self, owner: str, task_id: str, text: str) -> str:
        """Queue a steering message for the task's agent; returns its ``message_id``. Raises
        :class:`TaskError` (``unknown_task``, ``task_finished``, ``too_many_messages``)."""
        task = self._active.get((owner, task_id))
        if task is not None and task.interaction is not None and not task.terminal:
            return task.interaction.add_message(text)
        with _unavailable_refuses("message"):
            verdict = await self._backend.send_message(owner, task_id, text)
        if verdict.startswith("!"):
            raise _refusal(verdict[1:], task_id)
        return verdict

    def _set_waiting(self, task: _Task, request: InputRequest | None) -> None:
        state: TaskState = "input_required" if request is not None else "running"
        task.record = _replace(task.record, state=state, pending_input=request)

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
        backend = self._backend
        sub = Subscription(owner, task_id, after_seq, deliver)
        with _unavailable_refuses("subscribe"):
            undo = await backend.listen(owner, task_id, sub._on_live)
            try:
                found = await backend.read(owner, task_id, after_seq)
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
        task = self._active.get(key)
        local = task is not None and not task.terminal
        on_close = _both(undo, self._detach.watch(key)) if local else undo
        sub._start(gap, found.frames, on_close)
        if not sub.closed and not local:
            # Over already (its terminal event was at or before after_seq), or run by another
            # node: ask the registry.
            with _unavailable_refuses("subscribe"):
                record = await backend.get(owner, task_id)
            if record is None or (record.final and record.last_seq <= sub.last_seq):
                sub.close()
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        """Same as ``subscription.close()``. The task keeps running under its detach policy."""
        subscription.close()

    # ------------------------------------------------------------------ the run

    async def _drive(self, task: _Task) -> None:
        try:
            terminal = await outcome(functools.partial(self._run, task), task.reason)
        except asyncio.CancelledError:  # not a cancel of ours: the loop is going down
            self._end(task, TaskCancelled(reason=task.cancel_reason or "cancelled"))
            raise
        self._end(task, terminal)

    async def _run(self, task: _Task) -> Event:
        owner = task.record.owner
        if task.after:
            self._emit(
                task,
                TaskProgress(
                    step="waiting_for_thread",
                    message=f"waiting for task {task.after[-1]} of the thread to end",
                ),
            )
            for other in task.after:
                await self._ended(owner, other)
        history: tuple[Turn, ...] = ()
        thread_id = task.record.thread_id
        if thread_id is not None:
            history = await self._history(owner, thread_id, task.record.task_id)
        await self._slots.acquire(task.key, functools.partial(self._queued, task))
        task.slot = True
        record = _replace(task.record, state="running", updated=time.time())
        task.record = record
        self._backend.update(record)
        if thread_id is not None:
            self._backend.thread_update(
                owner,
                thread_id,
                ThreadTurn(
                    task_id=record.task_id,
                    input=record.input,
                    state="running",
                    created=record.created,
                    updated=record.updated,
                ),
            )
        self._observer.run_started(record)
        spec = TaskSpec(
            record.owner,
            record.task_id,
            record.input,
            record.options,
            thread_id=thread_id,
            history=history,
            interaction=task.interaction,
        )
        return await self._runner(spec, task.emit)

    async def _ended(self, owner: str, task_id: str) -> None:
        """Return once the owner's task has ended (or is gone)."""
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_event(item: EventFrame | Gap) -> None:
            if (
                isinstance(item, EventFrame)
                and type(item.event) in TERMINAL_STATES
                and not ended.done()
            ):
                ended.set_result(None)

        undo = await self._backend.listen(owner, task_id, on_event)
        try:
            record = await self._backend.get(owner, task_id)
            if record is not None and not record.final:
                await ended
        finally:
            undo()

    async def _history(self, owner: str, thread_id: str, task_id: str) -> tuple[Turn, ...]:
        turns = await self._backend.thread_turns(owner, thread_id) or []
        history = []
        for turn in turns:
            if turn.task_id == task_id:
                break
            if not turn.final:
                turn = await self._ended_turn(owner, turn)
                if not turn.final:
                    continue
            if turn.state == "completed":
                answer = turn.summary or turn.final_answer or "(no answer)"
            else:
                answer = f"(this turn ended without an answer: {turn.state}, {turn.reason})"
            history.append(Turn(turn.input, answer))
        return tuple(history)

    async def _ended_turn(self, owner: str, turn: ThreadTurn) -> ThreadTurn:
        """The turn as its task's record and terminal event have it: the thread's copy lags
        when another node ended the task and its thread write is not stored yet."""
        record = await self._backend.get(owner, turn.task_id)
        if record is None or not record.final:
            return turn
        found = await self._backend.read(owner, turn.task_id, record.last_seq - 1)
        last = found.frames[-1] if found is not None and found.frames else None
        if last is None or type(last.event) not in TERMINAL_STATES:
            return turn
        return _turn(record, last.event, last.ts)

    def _queued(self, task: _Task, position: int) -> None:
        self._emit(
            task,
            TaskProgress(
                step="queued",
                message=f"waiting for a free slot (position {position})",
                queue_position=position,
            ),
        )

    def _driver_done(self, task: _Task, driver: asyncio.Task[None]) -> None:
        self._drivers.discard(driver)
        if not task.terminal:  # cancelled before its first step: nothing else wrote the end
            self._end(task, TaskCancelled(reason=task.cancel_reason or "cancelled"))
        if not driver.cancelled() and driver.exception() is not None:
            log.error("driver of task %s failed", task.record.task_id, exc_info=driver.exception())

    def _emit(self, task: _Task, event: Event | Usage) -> None:
        """Sequence one event and hand it to the backend (the hot path: keep it lean)."""
        if task.terminal:
            return  # exactly one terminal event, and it is the last one
        cls = type(event)
        if cls is LlmResponse:
            if not task.output_seen:
                task.output_seen = True
                self._observer.first_output(task.record)
        elif cls is TaskProgress:
            progress: TaskProgress = event  # type: ignore[assignment]
            record = task.record
            turn = progress.turn if progress.turn is not None and progress.agent == "main" else None
            task.record = _replace(
                record, progress=progress.step, turn=record.turn if turn is None else turn
            )
        elif cls is Usage:
            task.record = _replace(task.record, usage=event, updated=time.time())
            self._backend.update(task.record)
            return
        elif cls in TERMINAL_STATES:
            # A runner returns its terminal event; one emitted ends the task all the same.
            self._end(task, event)  # type: ignore[arg-type]
            driver = task.driver
            if driver is not None and not driver.done():
                driver.cancel()
            return
        seq = task.last_seq + 1
        task.last_seq = seq
        self._backend.append(
            task.record,
            EventFrame(task_id=task.record.task_id, seq=seq, ts=time.time(), event=event),  # type: ignore[arg-type]
        )

    def _end(self, task: _Task, terminal: Event) -> None:
        """Write the task's one terminal event and let go of it."""
        if task.terminal:
            return
        task.terminal = True
        now = time.time()
        usage = getattr(terminal, "usage", None) or task.record.usage
        record = _replace(
            task.record,
            state=TERMINAL_STATES[type(terminal)],
            usage=usage,
            updated=now,
            pending_input=None,
        )
        task.record = record
        seq = task.last_seq + 1
        task.last_seq = seq
        self._backend.append(
            record, EventFrame(task_id=record.task_id, seq=seq, ts=now, event=terminal)
        )
        if task.interaction is not None:
            task.interaction.finish(f"it has ended ({record.state})")
        if record.thread_id is not None:
            self._backend.thread_update(
                record.owner, record.thread_id, _turn(record, terminal, now)
            )
        if type(terminal) is TaskFailed:  # one line per failed task: its code, never its text
            log.warning("task %s failed with code %s", record.task_id, terminal.code)
        self._observer.task_ended(record)
        self._release(task)
        self._backend.expire(record.owner, record.task_id, self.config.retain_finished)

    def _release(self, task: _Task) -> None:
        """Drop the process-local state of a task that ended (or was taken away)."""
        self._active.pop(task.key, None)
        self._detach.forget(task.key)
        if task.hard_timer is not None:
            task.hard_timer.cancel()
            task.hard_timer = None
        if task.slot:
            task.slot = False
            self._slots.release()

    def _lost(self, task: _Task, reason: str) -> None:
        """Another node ended the task (this one was taken for dead): stop, write nothing."""
        if task.terminal:
            return
        log.warning("task %s was taken over: %s", task.record.task_id, reason)
        task.terminal = True
        self._release(task)
        driver = task.driver
        if driver is not None and not driver.done():
            driver.cancel()

    def _adopt(self, record: TaskRecord) -> None:
        """Run here a queued task that a lost node never started (the backend moved it to this
        node under a new epoch). It keeps its id, its events so far and its options."""
        if self._closing:
            log.warning("task %s adopted during shutdown: ending it", record.task_id)
        self._launch(record)  # as a start's: its questions and messages, its detach clock

    # ------------------------------------------------------------------ shutdown

    def _start_driver(self, task: _Task, task_id: str) -> None:
        """Start the driver of a task this process runs (a new one, or one adopted from a lost
        node); cancel it at once if shutdown began while the backend stored it."""
        task.emit = functools.partial(self._emit, task)
        driver = asyncio.get_running_loop().create_task(self._drive(task), name=f"task:{task_id}")
        task.driver = driver
        self._drivers.add(driver)
        driver.add_done_callback(functools.partial(self._driver_done, task))
        self._detach.settle(task.key)
        if self._closing:
            self._cancel(task, "server shutdown")

    async def shutdown(self, deadline: float = 30.0) -> None:
        """Refuse new tasks, let active ones run for up to ``deadline`` seconds, then cancel the
        rest (reason ``server shutdown``) and wait until each has written its terminal event.
        Safe to call twice. Closes the backend if the manager made it."""
        self._closing = True
        drivers = list(self._drivers)
        if drivers and deadline > 0:
            await asyncio.wait(drivers, timeout=deadline)
        for task in list(self._active.values()):
            self._cancel(task, "server shutdown")
        remaining = [d for d in self._drivers if not d.done()]
        if remaining:
            grace = self.config.cancel_grace
            _, late = await asyncio.wait(remaining, timeout=grace)
            for driver in late:
                driver.cancel()
            if late:
                _, stuck = await asyncio.wait(late, timeout=grace)
                if stuck:
                    log.error("shutdown: %d task(s) did not stop; ending them anyway", len(stuck))
        for task in list(self._active.values()):
            # Work that would not stop even when its driver was cancelled: its clients still
            # get their terminal event (the driver, if it ever ends, adds nothing).
            self._end(task, TaskCancelled(reason="server shutdown (the work did not stop)"))
        try:
            await self._backend.flush()
        except BackendUnavailable as exc:
            log.error("shutdown: the backend could not store everything: %s", exc.message)
        if self._owns_backend:
            await self._backend.close()

    async def __aenter__(self) -> TaskManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown(0)


class _Handler:
    """What the backend tells this manager (:class:`~gateway.tasks.backend.NodeHandler`)."""

    __slots__ = ("_manager",)

    def __init__(self, manager: TaskManager) -> None:
        self._manager = manager

    def cancel_requested(self, owner: str, task_id: str, reason: str) -> None:
        task = self._manager._active.get((owner, task_id))
        if task is not None:
            self._manager._cancel(task, reason)

    def task_lost(self, owner: str, task_id: str, reason: str) -> None:
        task = self._manager._active.get((owner, task_id))
        if task is not None:
            self._manager._lost(task, reason)

    def task_adopted(self, record: TaskRecord) -> None:
        self._manager._adopt(record)

    def input_given(self, owner: str, task_id: str, answer: Input) -> str | None:
        task = self._manager._active.get((owner, task_id))
        if task is None or task.interaction is None or task.terminal:
            return f"task_finished: task {task_id!r} has ended"
        try:
            resent = task.interaction.answer(answer)
        except TaskError as exc:
            return f"{exc.code.value}: {exc.message}"
        return ANSWER_RESENT if resent else None

    def message_given(self, owner: str, task_id: str, text: str) -> str:
        task = self._manager._active.get((owner, task_id))
        if task is None or task.interaction is None or task.terminal:
            return f"!task_finished: task {task_id!r} has ended"
        try:
            return task.interaction.add_message(text)
        except TaskError as exc:
            return f"!{exc.code.value}: {exc.message}"


def _turn(record: TaskRecord, terminal: Event, now: float) -> ThreadTurn:
    final_answer = summary = reason = None
    if isinstance(terminal, TaskCompleted):
        final_answer, summary = terminal.final_answer, terminal.summary
    elif isinstance(terminal, TaskFailed):
        summary, reason = terminal.summary or None, terminal.reason
    elif isinstance(terminal, TaskCancelled):
        reason = terminal.reason
    return ThreadTurn(
        task_id=record.task_id,
        input=record.input,
        state=record.state,
        created=record.created,
        updated=now,
        final_answer=final_answer,
        summary=summary,
        reason=reason,
    )


def _thread_busy(thread_id: str, exc: ThreadBusy, limit: int) -> TaskError:
    if exc.queue_full:
        message = f"thread {thread_id!r} already has {limit} tasks waiting (the limit)"
    else:
        message = (
            f"thread {thread_id!r} is busy with task {exc.busy[-1]!r}; retry when it ends, "
            "or start with if_busy enqueue or interrupt"
        )
    return TaskError(ErrorCode.THREAD_BUSY, message, task_id=exc.busy[-1])


def _refusal(verdict: str, task_id: str) -> TaskError:
    code, _, message = verdict.partition(": ")
    try:
        error = ErrorCode(code)
    except ValueError:
        error, message = ErrorCode.INTERNAL, verdict
    return TaskError(error, message, task_id=task_id)


def _status(record: TaskRecord, queue_position: int | None) -> TaskStatus:
    return TaskStatus(
        task_id=record.task_id,
        state=record.state,
        last_seq=record.last_seq,
        created=record.created,
        updated=record.updated,
        progress=record.progress,
        turn=record.turn,
        usage=record.usage,
        queue_position=queue_position,
        thread_id=record.thread_id,
        pending_input=record.pending_input,
    )


class _unavailable_refuses:
    """Turns :exc:`BackendUnavailable` into a clear, retryable refusal of the request."""

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, BackendUnavailable):
            raise TaskError(
                ErrorCode.UNAVAILABLE,
                f"{self._what} refused: the task store is unavailable ({exc.message}); "
                "retry shortly",
            ) from exc


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        try:
            first()
        finally:
            second()

    return both


def _discard(event: Event | Usage) -> None:
    pass
