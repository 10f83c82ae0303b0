"""Observers: metrics and logs watch the task lifecycle from outside the manager's logic.

The manager calls a :class:`TaskObserver` at four points of a task's life — its run started,
its first streamed output, a cancel requested, its end — and keeps no clocks or counters for
them itself. Each hook is called on the event loop and must not block or raise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .backend import TaskRecord

__all__ = ["TaskObserver", "TerminalObserver", "TimingObserver"]

log = logging.getLogger(__name__)

TerminalObserver = Callable[[TaskRecord, "float | None", "float | None"], None]
"""Told of every task's end (the record has the final state) with the seconds since its
cancel was requested, if it was, and the seconds from its run's start to its first streamed
token, if any (the ``on_terminal`` argument of :class:`~gateway.tasks.TaskManager`)."""


class TaskObserver:
    """The hooks, each doing nothing; subclass and override the ones you need."""

    def run_started(self, record: TaskRecord) -> None:
        """The task left the queue and its runner was called."""

    def first_output(self, record: TaskRecord) -> None:
        """The run streamed its first ``llm_response``."""

    def cancel_requested(self, record: TaskRecord, reason: str) -> None:
        """A cancel of the task was accepted."""

    def task_ended(self, record: TaskRecord) -> None:
        """The task's terminal event was written; ``record`` is final."""


class TimingObserver(TaskObserver):
    """Measures time to first output and cancel latency and hands them to a
    :data:`TerminalObserver` at each task's end."""

    def __init__(self, on_terminal: TerminalObserver) -> None:
        self._on_terminal = on_terminal
        self._started: dict[tuple[str, str], float] = {}
        self._first: dict[tuple[str, str], float] = {}
        self._cancel: dict[tuple[str, str], float] = {}

    def run_started(self, record: TaskRecord) -> None:
        self._started[(record.owner, record.task_id)] = time.perf_counter()

    def first_output(self, record: TaskRecord) -> None:
        key = (record.owner, record.task_id)
        started = self._started.get(key)
        if started is not None:
            self._first[key] = time.perf_counter() - started

    def cancel_requested(self, record: TaskRecord, reason: str) -> None:
        self._cancel.setdefault((record.owner, record.task_id), time.perf_counter())

    def task_ended(self, record: TaskRecord) -> None:
        key = (record.owner, record.task_id)
        self._started.pop(key, None)
        first = self._first.pop(key, None)
        requested = self._cancel.pop(key, None)
        since_cancel = None if requested is None else time.perf_counter() - requested
        try:
            self._on_terminal(record, since_cancel, first)
        except Exception:
            log.exception("the on_terminal observer failed")
