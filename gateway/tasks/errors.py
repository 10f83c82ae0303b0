"""The one exception of :mod:`gateway.tasks`.

Every refusal of the task manager is a :class:`TaskError` whose ``code`` is a
:class:`protocol.errors.ErrorCode`, so the connection layer turns it into an ``error`` frame
without a lookup table:

- ``unknown_task``: no such task *for this owner* (another owner's task looks exactly the same);
- ``task_exists``: ``start`` reused a task id with a different input or options;
- ``too_many_tasks``: a per-owner or server-wide limit of active tasks is reached;
- ``internal``: the manager is shutting down (retry on another server / later).
"""

from __future__ import annotations

from protocol.errors import ErrorCode

__all__ = ["TaskError"]


class TaskError(Exception):
    """A task-manager request was refused; ``code`` is the wire error code."""

    def __init__(self, code: ErrorCode, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"TaskError({self.code.value!r}, {self.message!r})"
