"""Where tasks and their event logs are kept: the backend contract and the in-memory default.

The :class:`~gateway.tasks.TaskManager` runs tasks and decides; a :class:`TaskBackend` only
stores, counts and relays. The contract is drawn so that a backend shared by several gateway
processes (Redis: a hash per task, a stream per log, pub/sub for live events and for control)
stands behind the same manager as the embedded :class:`InMemoryBackend`. One test suite
(``tests/tasks/test_backend.py``) runs against every backend.

Words used below:

- a *node* is one :class:`TaskManager` (one gateway process); it names itself with
  :meth:`TaskBackend.attach` and writes its id into the records of the tasks it runs;
- the *owner* is the principal; tasks are keyed by ``(owner, task_id)``, and no call can
  reveal that another owner has a task of some id;
- a record is *final* when its state is ``completed``, ``failed`` or ``cancelled``; it is
  *active* (``pending`` or ``running``) otherwise.

The contract:

Ordering
    The calls a node makes about one task (:meth:`~TaskBackend.create`,
    :meth:`~TaskBackend.update`, :meth:`~TaskBackend.append`, :meth:`~TaskBackend.expire`)
    take effect in the order they were made. ``append`` is called with ``seq`` 1, 2, 3, …
    without gaps (the node running a task is the only writer of its log and numbers it).
    Nothing is ordered between different tasks.

Durable before visible
    ``update``, ``append`` and ``expire`` are synchronous and must not block: a networked
    backend queues them and writes them in pipelined batches. An appended event reaches
    listeners, :meth:`~TaskBackend.read` and :meth:`~TaskBackend.get` only once it is stored,
    so a client never sees an event that a later reader cannot replay. The in-memory backend
    stores at once. :meth:`~TaskBackend.flush` waits until everything queued is stored.

Atomicity
    ``append`` stores the event and the record that comes with it as one change: a reader
    never sees a record whose ``last_seq`` names an event it cannot read, nor the reverse.
    ``create`` is atomic across processes: for one ``(owner, task_id)`` exactly one create
    wins; the per-owner active-task limit is checked in the same step.
    :meth:`~TaskBackend.create_in_thread` also decides, in that same step, whether the
    thread is busy (it has a task that has not ended), so of two starts on one idle
    thread through two processes exactly one finds it idle.

Idempotency
    ``create`` of an existing ``(owner, task_id)`` changes nothing and returns the stored
    record. ``expire`` replaces an earlier ``expire`` of the same task. ``request_cancel`` may
    be repeated; the node running the task may be told more than once.

Visibility of listeners
    A listener receives every event stored after :meth:`~TaskBackend.listen` returned, once
    each, in ``seq`` order. A backend that loses live events (a dropped connection) fills the
    hole from the log before delivering later ones; if the hole was trimmed meanwhile it
    delivers a :class:`protocol.frames.Gap` first. Listeners are called on the event loop and
    must not block; one failing listener must not disturb the others.

Retention
    Each task's log keeps its newest events within a count and a byte bound (the newest one is
    always kept); ``LogSlice.first_available_seq`` says where it starts. A finished task (its
    record, its log) is removed ``after`` seconds (:meth:`~TaskBackend.expire`), or earlier,
    oldest first, when finished tasks exceed their count or byte bounds per owner or in total
    (:class:`Retention`). Removal makes the task unknown: ``get`` and ``read`` answer ``None``.

Failures
    Any coroutine may raise :exc:`BackendUnavailable` (retryable: the store cannot be reached);
    the manager refuses the request with a clear error and never crashes. The synchronous
    calls never raise it: a networked backend keeps their writes queued, within a bound, until
    the store returns.

Threads
    A thread (conversation) is a list of :class:`ThreadTurn` per ``(owner, thread_id)``, kept
    apart from the task records so that a conversation outlives its tasks' logs:
    :meth:`~TaskBackend.create_in_thread` creates a task as the thread's next turn (atomically
    with the busy check), :meth:`~TaskBackend.thread_add` appends a turn (creating the thread),
    :meth:`~TaskBackend.thread_update` replaces the turn of a task (queued, like ``update``),
    :meth:`~TaskBackend.thread_turns` and :meth:`~TaskBackend.list_threads` read them. Another
    owner's thread of the same id is another thread. Threads have their own retention
    (:class:`Retention` ``thread_ttl``, ``max_turns_per_thread``, ``max_threads_per_owner``).

Interaction
    An answer to a task's question (:meth:`~TaskBackend.send_input`) and a steering message
    (:meth:`~TaskBackend.send_message`) go to the node running the task (its
    :meth:`NodeHandler.input_given` / :meth:`NodeHandler.message_given`), which decides and
    replies: the first valid answer wins wherever it came from. The call returns that node's
    verdict, the same a call on that node would give. Each request is applied at most once;
    when no verdict comes in time (the node is gone, the store is unreachable) the call
    returns a refusal with code ``unavailable`` and the request is never applied later, except
    where the refusal says it may have been (the node took it but its reply was lost).

Fencing
    Records carry the ``node`` that runs the task and an ``epoch``. A backend that ends the
    unfinished tasks of a node it found dead writes them under ``epoch + 1`` and from then on
    refuses writes that carry an older epoch, telling the writing node
    (:meth:`NodeHandler.task_lost`) so it stops the work. The in-memory backend has no other
    nodes to watch and never reassigns a task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, Protocol

import msgspec

from protocol.events import TERMINAL_STATES, InputRequest, LlmResponse, Usage
from protocol.frames import (
    EventFrame,
    Gap,
    IfBusy,
    Input,
    StartOptions,
    TaskState,
    ThreadSummary,
)

__all__ = [
    "ANSWER_RESENT",
    "FINAL_STATES",
    "ActiveLimitReached",
    "BackendError",
    "BackendUnavailable",
    "CancelResult",
    "InMemoryBackend",
    "Listener",
    "LogSlice",
    "NodeHandler",
    "Retention",
    "TaskBackend",
    "TaskRecord",
    "ThreadBusy",
    "ThreadTurn",
    "frame_size",
    "thread_admission",
]

log = logging.getLogger(__name__)

CancelResult = Literal["accepted", "already_terminal", "unknown"]
"""What a cancel request found: an active task (the request goes to the node running it),
a finished one, or none (also another owner's task)."""

FINAL_STATES: frozenset[TaskState] = frozenset(TERMINAL_STATES.values())
"""The states a task ends in."""

ANSWER_RESENT = "resent"
"""The verdict of :meth:`NodeHandler.input_given` (and :meth:`TaskBackend.send_input`) for an
answer that had been taken already, exactly as given now (a resend): acknowledged, nothing
changed."""

Listener = Callable[[EventFrame | Gap], None]
"""Receives each stored event of a task, in ``seq`` order (a ``Gap`` first when live events
were lost and the log no longer has them). Called on the event loop; must not block."""


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The registry entry of one task: an immutable value. A change is a new record handed to
    the backend (:meth:`TaskBackend.update`, :meth:`TaskBackend.append`); nothing is mutated in
    place, so a backend that stores records elsewhere sees every change."""

    owner: str
    task_id: str
    input: str
    options: StartOptions
    created: float
    """Unix time of the ``start``."""
    node: str = ""
    """Id of the node (task manager) that runs the task."""
    epoch: int = 0
    """Fencing token: bumped by a backend that takes the task away from a lost node."""
    state: TaskState = "pending"
    updated: float = 0.0
    """Unix time of the latest change (of the latest event, while events come)."""
    last_seq: int = 0
    """``seq`` of the latest stored event."""
    progress: str | None = None
    """The latest ``task_progress`` step."""
    turn: int = 0
    """The main agent's turn."""
    usage: Usage | None = None
    """Token usage so far (final once the task has ended)."""
    thread_id: str | None = None
    """The conversation the task belongs to."""
    pending_input: InputRequest | None = None
    """What the task waits for while ``input_required``."""

    @property
    def final(self) -> bool:
        """True once the task has ended."""
        return self.state in FINAL_STATES


class ThreadTurn(msgspec.Struct, frozen=True, kw_only=True):
    """One task of a thread as the thread keeps it (after the task's own record is gone)."""

    task_id: str
    input: str
    state: TaskState = "pending"
    created: float = 0.0
    updated: float = 0.0
    final_answer: str | None = None
    summary: str | None = None
    reason: str | None = None
    """Why it ended, when ``failed`` or ``cancelled``."""

    @property
    def final(self) -> bool:
        """True once the task has ended."""
        return self.state in FINAL_STATES


@dataclasses.dataclass(slots=True, frozen=True)
class LogSlice:
    """What :meth:`TaskBackend.read` returns: the retained events after a given ``seq``."""

    first_available_seq: int
    """Oldest retained ``seq`` (``last_seq + 1`` when nothing is retained)."""
    frames: list[EventFrame]
    """The retained events with ``seq > after_seq``, in order, without gaps."""


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    """How much a backend keeps. Bytes are counted as the JSON size of the event frames plus
    the task's input; the process's own memory per byte counted is a small multiple.

    The finished-task bounds drop the oldest finished tasks first (by the time they finished);
    active tasks are never dropped, and the task that just finished is always kept, even when
    it alone exceeds a byte bound."""

    max_events: int = 10_000
    """Events kept per task log; older ones are dropped (a subscriber gets a ``gap``)."""
    max_bytes: int = 2 * 1024 * 1024
    """Bytes kept per task log; the newest event is always kept."""
    max_finished_per_owner: int = 1000
    """Finished tasks kept per owner; past it the oldest finished one is removed."""
    max_finished: int = 10_000
    """Finished tasks kept in all."""
    max_finished_bytes_per_owner: int = 64 * 1024 * 1024
    """Bytes of finished tasks (logs and inputs) kept per owner."""
    max_finished_bytes: int = 256 * 1024 * 1024
    """Bytes of finished tasks kept in all."""
    thread_ttl: float = 7 * 86_400.0
    """Seconds a thread is kept after its latest change."""
    max_turns_per_thread: int = 200
    """Turns kept per thread; past it the oldest finished turn is dropped."""
    max_threads_per_owner: int = 1000
    """Threads kept per owner; past it the least recently updated one is dropped."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) < 1:
                raise ValueError(f"Retention.{field.name} must be positive")


class BackendError(Exception):
    """Root of the backend's exceptions."""


class BackendUnavailable(BackendError):
    """The store cannot be reached or refuses writes for now; the request may be retried.
    ``retry_after`` is a hint in seconds, when the backend has one."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ActiveLimitReached(BackendError):
    """:meth:`TaskBackend.create` refused a new task: its owner already has ``limit`` active
    tasks (counted across every node)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the owner already has {limit} active tasks")
        self.limit = limit


class ThreadBusy(BackendError):
    """:meth:`TaskBackend.create_in_thread` refused a new task: the thread has tasks that have
    not ended (``busy``, oldest first) and the policy is ``reject``, or ``enqueue`` with more
    than ``max_queued`` of them."""

    def __init__(self, busy: tuple[str, ...], queue_full: bool) -> None:
        super().__init__(f"the thread is busy with task {busy[-1]!r}")
        self.busy = busy
        self.queue_full = queue_full


def thread_admission(busy: tuple[str, ...], if_busy: IfBusy, max_queued: int) -> None:
    """Raise :exc:`ThreadBusy` when a new task may not join a thread whose unfinished tasks are
    ``busy`` under the policy ``if_busy``."""
    if busy and if_busy == "reject":
        raise ThreadBusy(busy, False)
    if if_busy == "enqueue" and len(busy) > max_queued:
        raise ThreadBusy(busy, True)


class NodeHandler(Protocol):
    """What a backend tells the node that runs a task. Called on the event loop; must not
    block. A node registers its handler with :meth:`TaskBackend.attach`."""

    def cancel_requested(self, owner: str, task_id: str, reason: str) -> None:
        """A cancel of a task this node runs arrived (from any node)."""
        ...

    def task_lost(self, owner: str, task_id: str, reason: str) -> None:
        """The task was ended by another node (this one was taken for dead): stop its work
        and write nothing more; its terminal event is written already."""
        ...

    def input_given(self, owner: str, task_id: str, answer: Input) -> str | None:
        """An answer to one of the task's requests arrived (from any node). Returns ``None``
        when it was taken, :data:`ANSWER_RESENT` when this same answer had been taken before,
        else ``"code: message"`` (an :class:`~protocol.errors.ErrorCode` value and the reason)
        to refuse it with."""
        ...

    def message_given(self, owner: str, task_id: str, text: str) -> str:
        """A steering message arrived (from any node). Returns the ``message_id`` it was
        queued as, or ``"!code: message"`` to refuse it with."""
        ...

    # Optional (a backend looks it up with getattr): a node that can run tasks it did not
    # create has ``task_adopted(record)``. A backend that finds a lost node's task still
    # queued (``pending``, no work done) moves it to such a node under ``epoch + 1`` and calls
    # it with the moved record; the node runs it from ``record.last_seq`` on.


class TaskBackend(Protocol):
    """Storage of task records and per-task event logs (see the module docstring for the
    ordering, visibility, atomicity and idempotency rules)."""

    retention: Retention

    def attach(self, node: str, handler: NodeHandler) -> None:
        """Register the node ``node`` (a task manager) and the handler that receives cancel
        requests and fencing notices for the tasks whose record names it."""
        ...

    async def create(
        self, record: TaskRecord, *, max_active: int | None = None
    ) -> TaskRecord | None:
        """Store ``record`` (a new, active task) unless ``(owner, task_id)`` exists; return the
        stored record if it does (whatever its state), else ``None``.

        With ``max_active``, raise :exc:`ActiveLimitReached` instead of creating when the
        owner already has that many active tasks; an existing id is returned even then."""
        ...

    async def create_in_thread(
        self,
        record: TaskRecord,
        turn: ThreadTurn,
        *,
        if_busy: IfBusy,
        max_queued: int,
        max_active: int | None = None,
    ) -> TaskRecord | tuple[str, ...]:
        """Create ``record`` (whose ``thread_id`` is set) as :meth:`create` does and append
        ``turn`` to its thread, as one atomic step with the check of the thread's tasks that
        have not ended (the thread's turns not final whose task is stored and not final).
        Returns the stored record when ``(owner, task_id)`` exists (nothing else is done),
        else those unfinished tasks, oldest first (empty when the thread was idle). Raises
        :exc:`ThreadBusy` (see :func:`thread_admission`) or :exc:`ActiveLimitReached`
        instead of creating."""
        ...

    async def get(self, owner: str, task_id: str) -> TaskRecord | None:
        """The owner's task as stored, or ``None`` (also when another owner has a task of
        that id, or the task was removed)."""
        ...

    async def list_tasks(self, owner: str) -> list[TaskRecord]:
        """Every retained task of ``owner``, oldest (by ``created``) first."""
        ...

    async def active_count(self, owner: str) -> int:
        """How many active tasks ``owner`` has, on every node."""
        ...

    def update(self, record: TaskRecord) -> None:
        """Store a change of ``record`` that comes without an event (e.g. ``pending`` →
        ``running``, a usage report). ``last_seq`` is left as stored: only ``append`` moves it.
        Queued; does not block."""
        ...

    def append(self, record: TaskRecord, frame: EventFrame) -> None:
        """Store ``frame`` at the end of the task's log together with ``record`` (the task's
        fields after this event), then hand it to the listeners. The stored record's
        ``last_seq`` and ``updated`` are the frame's ``seq`` and ``ts`` (so an unchanged
        record may be passed again for every event). A final ``record`` ends the task: it no
        longer counts as active. Applies the log's retention bounds. Queued; does not block.
        Appending to a removed task stores nothing."""
        ...

    async def read(self, owner: str, task_id: str, after_seq: int) -> LogSlice | None:
        """The stored events with ``seq > after_seq`` that retention kept; ``None`` for an
        unknown task."""
        ...

    async def listen(self, owner: str, task_id: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event of the task stored from now on (also for a task
        that does not exist yet); returns the undo, which is idempotent and synchronous."""
        ...

    async def request_cancel(self, owner: str, task_id: str, reason: str) -> CancelResult:
        """Ask the node running the task to cancel it (:meth:`NodeHandler.cancel_requested`):
        ``accepted`` for an active task, ``already_terminal`` for a finished one, ``unknown``
        when the owner has no such task."""
        ...

    def expire(self, owner: str, task_id: str, after: float) -> None:
        """Remove the task and its log ``after`` seconds from now: at once, in order with the
        other writes, when ``after <= 0``; ``inf`` = only when the finished-task bounds need
        the room. Queued; does not block."""
        ...

    async def send_input(self, owner: str, task_id: str, answer: Input) -> str | None:
        """Hand ``answer`` to the node running the active task (:meth:`NodeHandler.input_given`)
        and return its verdict (``None`` = taken, :data:`ANSWER_RESENT`, else
        ``"code: message"``; ``unknown_task`` and ``task_finished`` when there is no active
        task, ``unavailable`` when no verdict came)."""
        ...

    async def send_message(self, owner: str, task_id: str, text: str) -> str:
        """Hand a steering message to the node running the active task
        (:meth:`NodeHandler.message_given`) and return its verdict (the ``message_id``, or
        ``"!code: message"``)."""
        ...

    async def thread_add(self, owner: str, thread_id: str, turn: ThreadTurn) -> None:
        """Append ``turn`` to the owner's thread, creating the thread if needed; applies the
        thread retention bounds."""
        ...

    def thread_update(self, owner: str, thread_id: str, turn: ThreadTurn) -> None:
        """Replace the thread's turn of ``turn.task_id`` (nothing when the thread or the turn
        is gone). Queued; does not block."""
        ...

    async def thread_turns(self, owner: str, thread_id: str) -> list[ThreadTurn] | None:
        """The thread's turns, oldest first; ``None`` for an unknown (or expired) thread."""
        ...

    async def list_threads(self, owner: str, limit: int) -> list[ThreadSummary]:
        """The owner's threads, most recently updated first, at most ``limit``."""
        ...

    async def flush(self) -> None:
        """Return once every write queued so far is stored (or raise
        :exc:`BackendUnavailable`)."""
        ...

    async def close(self) -> None:
        """Store what is queued and release resources (timers, connections)."""
        ...


_size_encoder = msgspec.json.Encoder()
DELTA_OVERHEAD = 120  # bytes of an llm_response event frame besides its text
_RECORD_OVERHEAD = 300  # bytes of a task record besides its input


def frame_size(frame: EventFrame) -> int:
    """About the JSON size of ``frame``, as the log bounds count it (every backend alike).
    Deltas, most of all events, are not encoded for it: the per-event path stays free of a
    second encode."""
    event = frame.event
    if type(event) is LlmResponse:
        return len(event.delta) + DELTA_OVERHEAD
    return len(_size_encoder.encode(frame))


class _Entry:
    """One stored task: its record and its retained events (``frames[i]`` has ``seq``
    ``first_seq + i``)."""

    __slots__ = ("bytes", "first_seq", "frames", "last_seq", "record", "sizes", "updated")

    def __init__(self, record: TaskRecord) -> None:
        self.record = record
        self.last_seq = record.last_seq
        self.updated = record.updated
        self.frames: deque[EventFrame] = deque()
        self.sizes: deque[int] = deque()
        self.bytes = 0
        self.first_seq = record.last_seq + 1

    def stored(self) -> TaskRecord:
        record = self.record
        if record.last_seq == self.last_seq and record.updated == self.updated:
            return record
        record = msgspec.structs.replace(record, last_seq=self.last_seq, updated=self.updated)
        self.record = record
        return record

    def footprint(self) -> int:
        return self.bytes + len(self.record.input) + _RECORD_OVERHEAD


class _Thread:
    __slots__ = ("created", "turns", "updated")

    def __init__(self, created: float) -> None:
        self.created = created
        self.updated = created
        self.turns: list[ThreadTurn] = []


class InMemoryBackend:
    """The embedded default: everything in this process's memory (one process, any number of
    nodes attached to it — tests run several task managers on one to play several gateways).

    Writes are stored at once and listeners called synchronously from ``append``."""

    def __init__(
        self,
        retention: Retention | None = None,
        *,
        max_events: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        retention = retention or Retention()
        if max_events is not None:  # the short forms for the per-log bounds
            retention = dataclasses.replace(retention, max_events=max_events)
        if max_bytes is not None:
            retention = dataclasses.replace(retention, max_bytes=max_bytes)
        self.retention = retention
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._by_owner: dict[str, dict[str, _Entry]] = {}
        self._active: dict[str, int] = {}
        self._listeners: dict[tuple[str, str], tuple[Listener, ...]] = {}
        self._nodes: dict[str, NodeHandler] = {}
        self._expiry: dict[tuple[str, str], asyncio.TimerHandle] = {}
        # Finished tasks in the order they finished, with their footprint in bytes.
        self._finished: dict[tuple[str, str], int] = {}
        self._finished_bytes = 0
        self._finished_by_owner: dict[str, dict[tuple[str, str], int]] = {}
        self._finished_owner_bytes: dict[str, int] = {}
        # owner -> thread_id -> turns; dict order is least recently updated first.
        self._threads: dict[str, dict[str, _Thread]] = {}

    # -- nodes

    def attach(self, node: str, handler: NodeHandler) -> None:
        self._nodes[node] = handler

    # -- registry

    async def create(
        self, record: TaskRecord, *, max_active: int | None = None
    ) -> TaskRecord | None:
        key = (record.owner, record.task_id)
        existing = self._entries.get(key)
        if existing is not None:
            return existing.stored()
        active = self._active.get(record.owner, 0)
        if max_active is not None and active >= max_active:
            raise ActiveLimitReached(max_active)
        entry = _Entry(record)
        self._entries[key] = entry
        self._by_owner.setdefault(record.owner, {})[record.task_id] = entry
        if record.final:  # stored already ended (an import, a test): nothing counts it
            self._finish(key, entry)
        else:
            self._active[record.owner] = active + 1
        return None

    async def create_in_thread(
        self,
        record: TaskRecord,
        turn: ThreadTurn,
        *,
        if_busy: IfBusy,
        max_queued: int,
        max_active: int | None = None,
    ) -> TaskRecord | tuple[str, ...]:
        # Nothing below awaits anything that yields: one step on the event loop.
        owner, thread_id = record.owner, record.thread_id
        assert thread_id is not None, "create_in_thread needs record.thread_id"
        existing = self._entries.get((owner, record.task_id))
        if existing is not None:
            return existing.stored()
        thread = self._live_threads(owner).get(thread_id)
        busy: list[str] = []
        for old in thread.turns if thread is not None else ():
            entry = None if old.final else self._entries.get((owner, old.task_id))
            if entry is not None and not entry.record.final:
                busy.append(old.task_id)
        thread_admission(tuple(busy), if_busy, max_queued)
        await self.create(record, max_active=max_active)
        await self.thread_add(owner, thread_id, turn)
        return tuple(busy)

    async def get(self, owner: str, task_id: str) -> TaskRecord | None:
        entry = self._entries.get((owner, task_id))
        return None if entry is None else entry.stored()

    async def list_tasks(self, owner: str) -> list[TaskRecord]:
        entries = self._by_owner.get(owner)
        if not entries:
            return []
        return [e.stored() for e in entries.values()]  # insertion order: oldest first

    async def active_count(self, owner: str) -> int:
        return self._active.get(owner, 0)

    def update(self, record: TaskRecord) -> None:
        key = (record.owner, record.task_id)
        entry = self._entries.get(key)
        if entry is None:
            return
        was_final = entry.record.final
        entry.record = record
        entry.updated = record.updated
        if record.final and not was_final:
            self._end(key, entry)

    # -- event log

    def append(self, record: TaskRecord, frame: EventFrame) -> None:
        key = (record.owner, record.task_id)
        entry = self._entries.get(key)
        if entry is None:  # removed already: nobody can read it any more
            return
        if entry.record is not record:
            was_final = entry.record.final
            entry.record = record
            if record.final and not was_final:
                self._end(key, entry, frame)
                return
        self._store(entry, frame)
        # _notify inlined: this is the path of every event.
        for listener in self._listeners.get(key, ()):
            try:
                listener(frame)
            except Exception:  # one broken subscriber must not stop the task or the others
                log.exception("event listener of task %s failed", key[1])

    def _store(self, entry: _Entry, frame: EventFrame) -> None:
        entry.last_seq = frame.seq
        entry.updated = frame.ts
        event = frame.event
        if type(event) is LlmResponse:  # frame_size, inlined for the deltas
            size = len(event.delta) + DELTA_OVERHEAD
        else:
            size = frame_size(frame)
        frames = entry.frames
        frames.append(frame)
        entry.sizes.append(size)
        entry.bytes += size
        retention = self.retention
        if len(frames) > retention.max_events or entry.bytes > retention.max_bytes:
            sizes = entry.sizes
            while len(frames) > 1 and (
                len(frames) > retention.max_events or entry.bytes > retention.max_bytes
            ):
                frames.popleft()
                entry.bytes -= sizes.popleft()
                entry.first_seq += 1

    def _notify(self, key: tuple[str, str], item: EventFrame | Gap) -> None:
        for listener in self._listeners.get(key, ()):
            try:
                listener(item)
            except Exception:  # one broken subscriber must not stop the task or the others
                log.exception("event listener of task %s failed", key[1])

    async def read(self, owner: str, task_id: str, after_seq: int) -> LogSlice | None:
        entry = self._entries.get((owner, task_id))
        if entry is None:
            return None
        start = max(0, after_seq + 1 - entry.first_seq)
        return LogSlice(entry.first_seq, list(itertools.islice(entry.frames, start, None)))

    async def listen(self, owner: str, task_id: str, listener: Listener) -> Callable[[], None]:
        key = (owner, task_id)
        listeners = self._listeners
        # Copy-on-write tuple: a listener may unsubscribe while being called.
        listeners[key] = (*listeners.get(key, ()), listener)

        def undo() -> None:
            current = listeners.get(key)
            if current is None:
                return
            remaining = tuple(x for x in current if x is not listener)
            if remaining:
                listeners[key] = remaining
            else:
                del listeners[key]

        return undo

    # -- control

    async def request_cancel(self, owner: str, task_id: str, reason: str) -> CancelResult:
        entry = self._entries.get((owner, task_id))
        if entry is None:
            return "unknown"
        record = entry.record
        if record.final:
            return "already_terminal"
        handler = self._nodes.get(record.node)
        if handler is None:
            log.warning("cancel of task %s: its node %r is not attached", task_id, record.node)
        else:
            handler.cancel_requested(owner, task_id, reason)
        return "accepted"

    async def send_input(self, owner: str, task_id: str, answer: Input) -> str | None:
        handler = self._handler_of(owner, task_id)
        if isinstance(handler, str):
            return handler
        return handler.input_given(owner, task_id, answer)

    async def send_message(self, owner: str, task_id: str, text: str) -> str:
        handler = self._handler_of(owner, task_id)
        if isinstance(handler, str):
            return "!" + handler
        return handler.message_given(owner, task_id, text)

    def _handler_of(self, owner: str, task_id: str) -> NodeHandler | str:
        entry = self._entries.get((owner, task_id))
        if entry is None:
            return f"unknown_task: no task {task_id!r}"
        record = entry.record
        if record.final:
            return f"task_finished: task {task_id!r} has ended ({record.state})"
        handler = self._nodes.get(record.node)
        if handler is None:
            return f"internal: the gateway running task {task_id!r} is gone; retry shortly"
        return handler

    # -- threads

    def _live_threads(self, owner: str) -> dict[str, _Thread]:
        threads = self._threads.get(owner)
        if not threads:
            return {}
        horizon = time.time() - self.retention.thread_ttl
        for thread_id in [t for t, th in threads.items() if th.updated < horizon]:
            del threads[thread_id]
        return threads

    async def thread_add(self, owner: str, thread_id: str, turn: ThreadTurn) -> None:
        threads = self._live_threads(owner)
        self._threads[owner] = threads
        thread = threads.pop(thread_id, None)
        if thread is None:
            thread = _Thread(turn.created)
        threads[thread_id] = thread  # now the most recently updated
        thread.turns.append(turn)
        thread.updated = max(turn.updated, turn.created, thread.updated)
        r = self.retention
        while len(thread.turns) > r.max_turns_per_thread:
            oldest = next((i for i, t in enumerate(thread.turns) if t.final), None)
            if oldest is None:
                break
            del thread.turns[oldest]
        while len(threads) > r.max_threads_per_owner:
            del threads[next(iter(threads))]

    def thread_update(self, owner: str, thread_id: str, turn: ThreadTurn) -> None:
        threads = self._threads.get(owner)
        thread = threads.get(thread_id) if threads else None
        if threads is None or thread is None:
            return
        for i, old in enumerate(thread.turns):
            if old.task_id == turn.task_id:
                thread.turns[i] = turn
                thread.updated = max(thread.updated, turn.updated)
                threads[thread_id] = threads.pop(thread_id)
                return

    async def thread_turns(self, owner: str, thread_id: str) -> list[ThreadTurn] | None:
        thread = self._live_threads(owner).get(thread_id)
        return None if thread is None else list(thread.turns)

    async def list_threads(self, owner: str, limit: int) -> list[ThreadSummary]:
        out: list[ThreadSummary] = []
        for thread_id, thread in reversed(self._live_threads(owner).items()):
            if len(out) >= limit:
                break
            first = thread.turns[0] if thread.turns else None
            last = thread.turns[-1] if thread.turns else None
            out.append(
                ThreadSummary(
                    thread_id=thread_id,
                    created=thread.created,
                    updated=thread.updated,
                    task_count=len(thread.turns),
                    title=first.input[:80] if first else "",
                    last_task_id=last.task_id if last else None,
                    last_state=last.state if last else None,
                )
            )
        return out

    # -- lifetime

    def _end(self, key: tuple[str, str], entry: _Entry, frame: EventFrame | None = None) -> None:
        """The task's final record (and its terminal event) arrived."""
        owner = key[0]
        left = self._active.get(owner, 0) - 1
        if left > 0:
            self._active[owner] = left
        else:
            self._active.pop(owner, None)
        if frame is not None:
            self._store(entry, frame)
            self._notify(key, frame)
        if key in self._entries:  # a listener may have made the manager drop it
            self._finish(key, entry)

    def _finish(self, key: tuple[str, str], entry: _Entry) -> None:
        """Count a finished task against the finished-task bounds; drop the oldest beyond."""
        size = entry.footprint()
        owner = key[0]
        self._finished[key] = size
        self._finished_bytes += size
        self._finished_by_owner.setdefault(owner, {})[key] = size
        self._finished_owner_bytes[owner] = self._finished_owner_bytes.get(owner, 0) + size
        r = self.retention
        owned = self._finished_by_owner[owner]
        while len(owned) > 1 and (
            len(owned) > r.max_finished_per_owner
            or self._finished_owner_bytes[owner] > r.max_finished_bytes_per_owner
        ):
            self._remove(next(iter(owned)))
        while len(self._finished) > 1 and (
            len(self._finished) > r.max_finished or self._finished_bytes > r.max_finished_bytes
        ):
            self._remove(next(iter(self._finished)))

    def expire(self, owner: str, task_id: str, after: float) -> None:
        key = (owner, task_id)
        old = self._expiry.pop(key, None)
        if old is not None:
            old.cancel()
        if key not in self._entries or math.isinf(after):
            return
        if after <= 0:
            self._remove(key)
            return
        self._expiry[key] = asyncio.get_running_loop().call_later(after, self._remove, key)

    def _remove(self, key: tuple[str, str]) -> None:
        timer = self._expiry.pop(key, None)
        if timer is not None:
            timer.cancel()
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        owner = key[0]
        owned = self._by_owner.get(owner)
        if owned is not None:
            owned.pop(key[1], None)
            if not owned:
                del self._by_owner[owner]
        size = self._finished.pop(key, None)
        if size is not None:
            self._finished_bytes -= size
            by_owner = self._finished_by_owner[owner]
            del by_owner[key]
            self._finished_owner_bytes[owner] -= size
            if not by_owner:
                del self._finished_by_owner[owner]
                del self._finished_owner_bytes[owner]
        elif not entry.record.final:  # removed while active (expire of a running task)
            left = self._active.get(owner, 0) - 1
            if left > 0:
                self._active[owner] = left
            else:
                self._active.pop(owner, None)

    async def flush(self) -> None:
        pass  # every write is stored when it is made

    async def close(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()

    # -- introspection (tests, metrics)

    def __len__(self) -> int:
        """Tasks stored (active and finished)."""
        return len(self._entries)

    @property
    def finished_bytes(self) -> int:
        """Bytes counted for the finished tasks kept."""
        return self._finished_bytes
