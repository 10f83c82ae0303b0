"""Streaming: the core Orchestrator's hooks as a stream of wire events.

:class:`StreamingOrchestrator` makes one core Orchestrator per task and exposes
``execute_task_streaming(task, options) -> TaskStream`` (an async generator of
:mod:`protocol.events` with an idempotent ``cancel``); :mod:`.translate` is the only place
where core events become wire events. See :mod:`.orchestrator` for the cancellation policy.
"""

from .orchestrator import MERGE_LIMIT, StreamingOrchestrator, TaskStream, runner_factory
from .translate import DEFAULT_RESULT_PREVIEW_CHARS, Translator

__all__ = [
    "DEFAULT_RESULT_PREVIEW_CHARS",
    "MERGE_LIMIT",
    "StreamingOrchestrator",
    "TaskStream",
    "Translator",
    "runner_factory",
]
