"""Where tasks and their event logs are kept: a small interface and the in-memory default.

The :class:`TaskManager` runs tasks and decides; a :class:`TaskBackend` only stores. The split
is drawn so that a Redis backend (a hash per task, a Stream per event log, pub/sub for live
events) can be added without changing the manager's callers:

- registry calls that may need the network are ``async`` (``create``, ``get``, ``list``,
  ``read``);
- the per-event call, :meth:`TaskBackend.append`, is synchronous and must be cheap: the process
  running a task is the only writer of its log and assigns the ``seq`` itself, so a networked
  backend can write behind (pipelined) while fanning out to its local listeners at once;
- removal of finished tasks is a TTL the backend applies (:meth:`TaskBackend.expire`), which is
  what Redis does natively.

Tasks are keyed by ``(owner, task_id)``: two owners may use the same task id without ever
seeing each other's task, so no call can reveal that another owner's task exists.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from protocol.events import LlmResponse, Usage
from protocol.frames import EventFrame, StartOptions, TaskState

__all__ = ["InMemoryBackend", "Listener", "LogSlice", "TaskBackend", "TaskRecord"]

log = logging.getLogger(__name__)

Listener = Callable[[EventFrame], None]
"""Receives each event of a task as it is appended. Called synchronously; must not block."""


@dataclass(slots=True, eq=False)
class TaskRecord:
    """The registry entry of one task.

    The running process keeps the counters (``last_seq``, ``updated``, ``progress``, ``turn``)
    up to date on the object; it calls :meth:`TaskBackend.update` on every state change."""

    owner: str
    task_id: str
    input: str
    options: StartOptions
    created: float
    state: TaskState = "pending"
    updated: float = 0.0
    last_seq: int = 0
    progress: str | None = None
    turn: int = 0
    usage: Usage | None = None


@dataclass(slots=True, frozen=True)
class LogSlice:
    """What :meth:`TaskBackend.read` returns: the retained events after a given ``seq``."""

    first_available_seq: int
    """Oldest retained ``seq`` (``last_seq + 1`` when nothing is retained)."""
    frames: list[EventFrame]
    """The retained events with ``seq > after_seq``, in order, without gaps."""


class TaskBackend(Protocol):
    """Storage of task records and per-task event logs."""

    async def create(self, record: TaskRecord) -> TaskRecord | None:
        """Store ``record`` unless ``(owner, task_id)`` is taken; return the existing one if so."""
        ...

    async def get(self, owner: str, task_id: str) -> TaskRecord | None:
        """The owner's task, or ``None`` (also when another owner has a task of that id)."""
        ...

    async def list_tasks(self, owner: str) -> list[TaskRecord]:
        """Every retained task of ``owner``, oldest first."""
        ...

    def update(self, record: TaskRecord) -> None:
        """Persist a state change of ``record`` (write-behind allowed)."""
        ...

    def append(self, record: TaskRecord, frame: EventFrame) -> None:
        """Add ``frame`` (whose ``seq`` is ``record.last_seq``) to the log and notify listeners.

        Applies the retention bounds: the oldest events go first; the newest is always kept."""
        ...

    async def read(self, owner: str, task_id: str, after_seq: int) -> LogSlice | None:
        """The retained events with ``seq > after_seq``; ``None`` for an unknown task."""
        ...

    def listen(self, owner: str, task_id: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event appended from now on; returns the undo."""
        ...

    def expire(self, owner: str, task_id: str, after: float) -> None:
        """Remove the task and its log ``after`` seconds from now (``inf`` = never)."""
        ...

    async def close(self) -> None:
        """Release resources (timers, connections)."""
        ...


_size_encoder = msgspec.json.Encoder()
_DELTA_OVERHEAD = 120  # bytes of an llm_response event frame besides its text


def _size(frame: EventFrame) -> int:
    """About the JSON size of ``frame``. Deltas, most of all events, are not encoded for it:
    the per-event path stays free of a second encode."""
    event = frame.event
    if type(event) is LlmResponse:
        return len(event.delta) + _DELTA_OVERHEAD
    return len(_size_encoder.encode(frame))


class _Log:
    """One task's retained events: seq of ``frames[i]`` is ``first_seq + i``."""

    __slots__ = ("bytes", "first_seq", "frames", "listeners", "sizes")

    def __init__(self) -> None:
        self.frames: deque[EventFrame] = deque()
        self.sizes: deque[int] = deque()
        self.bytes = 0
        self.first_seq = 1
        # Copy-on-write tuple: a listener may unsubscribe while being called.
        self.listeners: tuple[Listener, ...] = ()


class InMemoryBackend:
    """The embedded default: everything in this process's memory.

    ``max_events`` and ``max_bytes`` bound each task's log (bytes as the JSON size of the
    ``event`` frames); the newest event is always kept, even if larger than ``max_bytes``."""

    def __init__(self, *, max_events: int = 10_000, max_bytes: int = 2 * 1024 * 1024) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("max_events and max_bytes must be positive")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._records: dict[tuple[str, str], TaskRecord] = {}
        self._logs: dict[tuple[str, str], _Log] = {}
        self._by_owner: dict[str, dict[str, TaskRecord]] = {}
        self._expiry: dict[tuple[str, str], asyncio.TimerHandle] = {}

    # -- registry

    async def create(self, record: TaskRecord) -> TaskRecord | None:
        key = (record.owner, record.task_id)
        existing = self._records.get(key)
        if existing is not None:
            return existing
        self._records[key] = record
        self._logs[key] = _Log()
        self._by_owner.setdefault(record.owner, {})[record.task_id] = record
        return None

    async def get(self, owner: str, task_id: str) -> TaskRecord | None:
        return self._records.get((owner, task_id))

    async def list_tasks(self, owner: str) -> list[TaskRecord]:
        return list(self._by_owner.get(owner, {}).values())

    def update(self, record: TaskRecord) -> None:
        # The record object itself is what is stored: nothing to write.
        pass

    # -- event log

    def append(self, record: TaskRecord, frame: EventFrame) -> None:
        entry = self._logs.get((record.owner, record.task_id))
        if entry is None:  # removed already (expired): nobody can read it any more
            return
        size = _size(frame)
        frames = entry.frames
        frames.append(frame)
        entry.sizes.append(size)
        entry.bytes += size
        if len(frames) > self.max_events or entry.bytes > self.max_bytes:
            sizes = entry.sizes
            while len(frames) > 1 and (
                len(frames) > self.max_events or entry.bytes > self.max_bytes
            ):
                frames.popleft()
                entry.bytes -= sizes.popleft()
                entry.first_seq += 1
        for listener in entry.listeners:
            try:
                listener(frame)
            except Exception:  # one broken subscriber must not stop the task or the others
                log.exception("event listener of task %s failed", record.task_id)

    async def read(self, owner: str, task_id: str, after_seq: int) -> LogSlice | None:
        entry = self._logs.get((owner, task_id))
        if entry is None:
            return None
        start = max(0, after_seq + 1 - entry.first_seq)
        return LogSlice(entry.first_seq, list(itertools.islice(entry.frames, start, None)))

    def listen(self, owner: str, task_id: str, listener: Listener) -> Callable[[], None]:
        entry = self._logs.get((owner, task_id))
        if entry is None:
            return _noop
        entry.listeners = (*entry.listeners, listener)

        def undo() -> None:
            entry.listeners = tuple(x for x in entry.listeners if x is not listener)

        return undo

    # -- lifetime

    def expire(self, owner: str, task_id: str, after: float) -> None:
        key = (owner, task_id)
        old = self._expiry.pop(key, None)
        if old is not None:
            old.cancel()
        if math.isinf(after):
            return
        loop = asyncio.get_running_loop()
        self._expiry[key] = loop.call_later(max(0.0, after), self._remove, key)

    def _remove(self, key: tuple[str, str]) -> None:
        self._expiry.pop(key, None)
        self._records.pop(key, None)
        self._logs.pop(key, None)
        owned = self._by_owner.get(key[0])
        if owned is not None:
            owned.pop(key[1], None)
            if not owned:
                del self._by_owner[key[0]]

    async def close(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()

    def __len__(self) -> int:
        return len(self._records)


def _noop() -> None:
    pass
