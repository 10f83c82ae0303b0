"""Tasks: registry, lifecycle, cancellation, status, per-task event logs and subscriptions.

See :mod:`gateway.tasks.manager` for the lifecycle, cancellation and limit policies,
:mod:`gateway.tasks.admission` for the run queue, :mod:`gateway.tasks.detach` for detached
tasks, :mod:`gateway.tasks.subscription` for replay/live delivery,
:mod:`gateway.tasks.observer` for the lifecycle hooks metrics use, and
:mod:`gateway.tasks.backend` for the storage contract (in-memory by default). The runner
contract the manager drives is :mod:`gateway.streaming.runner`.
"""

from gateway.streaming.runner import Emit, Runner, TaskSpec

from .backend import (
    ActiveLimitReached,
    BackendError,
    BackendUnavailable,
    CancelResult,
    InMemoryBackend,
    LogSlice,
    NodeHandler,
    Retention,
    TaskBackend,
    TaskRecord,
    ThreadTurn,
)
from .errors import TaskError
from .manager import RunnerFactory, StartResult, TaskManager, TaskManagerConfig
from .observer import TaskObserver, TerminalObserver
from .subscription import Deliver, Delivery, Subscription

__all__ = [
    "ActiveLimitReached",
    "BackendError",
    "BackendUnavailable",
    "CancelResult",
    "Deliver",
    "Delivery",
    "Emit",
    "InMemoryBackend",
    "LogSlice",
    "NodeHandler",
    "Retention",
    "Runner",
    "RunnerFactory",
    "StartResult",
    "Subscription",
    "TaskBackend",
    "TaskError",
    "TaskManager",
    "TaskManagerConfig",
    "TaskObserver",
    "TaskRecord",
    "TaskSpec",
    "TerminalObserver",
    "ThreadTurn",
]
