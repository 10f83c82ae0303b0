"""Tasks: registry, lifecycle, cancellation, status, per-task event logs and subscriptions.

See :mod:`gateway.tasks.manager` for the lifecycle, cancellation, detach and limit policies,
:mod:`gateway.tasks.subscription` for replay/live delivery, and :mod:`gateway.tasks.backend`
for the storage interface (in-memory by default).
"""

from .backend import InMemoryBackend, LogSlice, TaskBackend, TaskRecord
from .errors import TaskError
from .manager import (
    CancelResult,
    RunnerFactory,
    StartResult,
    TaskManager,
    TaskManagerConfig,
    TaskRun,
    TaskSpec,
)
from .subscription import Deliver, Delivery, Subscription

__all__ = [
    "CancelResult",
    "Deliver",
    "Delivery",
    "InMemoryBackend",
    "LogSlice",
    "RunnerFactory",
    "StartResult",
    "Subscription",
    "TaskBackend",
    "TaskError",
    "TaskManager",
    "TaskManagerConfig",
    "TaskRecord",
    "TaskRun",
    "TaskSpec",
]
