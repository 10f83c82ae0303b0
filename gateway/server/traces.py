"""``GET /tasks/{task_id}/trace``: a task's trace, for its owner.

Authenticated like the WebSocket (``Authorization: Bearer …`` or ``?token=``). The trace (see
:mod:`gateway.agent.trace`) is there from the task's start — a running task's trace is its state
so far — and for as long as the task manager keeps the finished task; another principal's task
is answered exactly like an unknown one (``404 unknown_task``).
"""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.agent import TraceStore
from gateway.server.auth import authenticate
from gateway.tasks import TaskError

__all__ = ["get_trace", "trace_routes"]

_encode = msgspec.json.Encoder().encode


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def get_trace(request: Request) -> Response:
    gw = request.app.state.gateway
    auth = authenticate(request.headers, request.query_params, gw.settings)
    if auth.principal is None:
        return _error(401, "unauthorized", auth.reason)
    task_id = request.path_params["task_id"]
    store: TraceStore | None = getattr(request.app.state, "traces", None)
    unknown = _error(404, "unknown_task", f"no task {task_id!r}")
    if store is None or gw.manager is None:
        return unknown
    try:
        await gw.manager.status(auth.principal, task_id)  # the task's own retention decides
    except TaskError:
        return unknown
    recorder = store.get(auth.principal, task_id)
    if recorder is None:
        return unknown
    trace = recorder.to_dict()  # a snapshot, on the loop (the run may still be appending)
    body = await asyncio.to_thread(_encode, trace)  # encoding a long history: off the loop
    return Response(body, media_type="application/json")


def trace_routes() -> list[Route]:
    """The route to mount; the app needs ``app.state.traces`` (a :class:`TraceStore`)."""
    return [Route("/tasks/{task_id}/trace", get_trace, methods=["GET"])]
