"""The Starlette application: ``/ws`` (WebSocket), ``/healthz``, ``/metrics`` and the web demo.

The endpoint is thin: it authenticates, negotiates the subprotocol, then runs one reader and
one writer for the socket; every decision is in :class:`gateway.connection.Connection`.
One close path: whichever of reader and writer ends first (client gone, close requested,
socket error) cancels the other, then the connection unsubscribes from its tasks, which keep
running under their detach policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

import gateway
from gateway.connection import Connection
from gateway.server.auth import authenticate
from gateway.server.metrics import Metrics
from gateway.server.settings import Settings
from gateway.tasks import RunnerFactory, TaskManager, TaskRecord
from gateway.tasks.redis_backend import RedisBackend
from protocol import (
    CloseCode,
    Closing,
    ServerSession,
    codec_for_subprotocol,
    select_subprotocol,
)

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("gateway.server")


class Gateway:
    """The state of one gateway process: settings, task manager, metrics, connections."""

    def __init__(self, settings: Settings, runner_factory: RunnerFactory | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(self._task_counts)
        self._runner_factory = runner_factory
        self.manager: TaskManager | None = None
        self.backend: RedisBackend | None = None
        """The Redis backend in Redis mode (None: the manager's in-memory one)."""
        self.connections: set[Connection] = set()
        self.draining = False
        self._no_connections = asyncio.Event()
        self._no_connections.set()

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._no_connections.clear()
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()

    def discard(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.metrics.connections.dec()
        if not self.connections:
            self._no_connections.set()

    def _task_counts(self) -> dict[str, int]:
        m = self.manager
        if m is None:
            return {"pending": 0, "running": 0}
        return {"pending": m.active_count - m.running_count, "running": m.running_count}

    def _default_runner_factory(self) -> RunnerFactory:
        from gateway.streaming import runner_factory  # the agent stack, loaded on demand

        return runner_factory(self.settings.agent_config)

    async def start(self) -> None:
        factory = self._runner_factory or self._default_runner_factory()
        metrics = self.metrics

        def finished(record: TaskRecord, since_cancel: float | None, ttft: float | None) -> None:
            metrics.tasks_finished.labels(record.state).inc()
            if since_cancel is not None:
                metrics.cancel_latency.observe(since_cancel)
            if ttft is not None:
                metrics.ttft.observe(ttft)

        backend = None
        if self.settings.redis_url:  # Redis mode: one task space for every gateway process
            from gateway.server.redis import RedisCollector, make_backend, node_name

            backend = self.backend = make_backend(self.settings)
            self.metrics.registry.register(RedisCollector(backend))
        self.manager = TaskManager(
            factory,
            config=self.settings.tasks,
            on_terminal=finished,
            backend=backend,
            node=node_name() if backend is not None else None,
        )
        if backend is not None:
            await backend.start()

    async def drain(self, deadline: float | None = None) -> None:
        """Graceful shutdown: tell every client, let tasks finish up to ``deadline``, cancel the
        rest, deliver their terminal events, then close every socket with 4003."""
        if self.draining:
            return
        self.draining = True
        deadline = self.settings.shutdown_deadline if deadline is None else deadline
        log.info("draining: %d connections, deadline %.1fs", len(self.connections), deadline)
        for conn in list(self.connections):
            conn.send_frame(
                Closing(
                    reason="server shutting down", code=CloseCode.SERVER_RESTART, deadline=deadline
                )
            )
        if self.manager is not None:
            await self.manager.shutdown(deadline)
        flushes = [conn.flushed() for conn in list(self.connections)]
        if flushes:
            await asyncio.wait([asyncio.ensure_future(f) for f in flushes], timeout=5.0)
        for conn in list(self.connections):
            conn.request_close(CloseCode.SERVER_RESTART, "server shutting down")
        # Let every endpoint send its close frame before uvicorn drops the sockets.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._no_connections.wait()

    async def stop(self) -> None:
        await self.drain(0)
        if self.backend is not None:
            await self.backend.close()


async def _websocket(websocket: WebSocket) -> None:
    gw: Gateway = websocket.app.state.gateway
    settings = gw.settings
    subprotocol = select_subprotocol(websocket.scope.get("subprotocols", []))
    auth = authenticate(websocket.headers, websocket.query_params, settings)
    await websocket.accept(subprotocol=subprotocol)
    if auth.principal is None:
        gw.metrics.rejected.labels("unauthorized").inc()
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.close(CloseCode.UNAUTHORIZED, auth.reason)
        return
    if gw.draining or gw.manager is None:
        await websocket.close(CloseCode.SERVER_RESTART, "server shutting down")
        return
    session = ServerSession(
        codec_for_subprotocol(subprotocol),
        max_frame_bytes=settings.connection.limits.max_frame_bytes,
        max_violations=settings.connection.max_violations,
    )
    conn = Connection(
        gw.manager,
        session,
        principal=auth.principal,
        settings=settings.connection,
        metrics=gw.metrics,
    )
    gw.add(conn)
    try:
        await _pump(websocket, conn)
    finally:
        conn.close()
        gw.discard(conn)
        if conn.close_code == CloseCode.SLOW_CONSUMER:
            gw.metrics.slow_consumers.inc()


async def _pump(websocket: WebSocket, conn: Connection) -> None:
    # The session encodes to bytes for MessagePack and to str for JSON: pick the sender once.
    send: Any = websocket.send_bytes if conn.session.codec.binary else websocket.send_text

    async def reader() -> None:
        while conn.close_code is None:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            await conn.handle(data)

    await send(conn.hello())
    read_task = asyncio.create_task(reader(), name=f"ws-reader:{conn.session_id}")
    write_task = asyncio.create_task(conn.run_writer(send), name=f"ws-writer:{conn.session_id}")
    close_task: asyncio.Task[object] = asyncio.create_task(conn.close_requested.wait())
    try:
        done, _ = await asyncio.wait(
            {read_task, write_task, close_task}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (read_task, write_task, close_task):
            task.cancel()
        await asyncio.gather(read_task, write_task, close_task, return_exceptions=True)
    for task in done - {close_task}:
        exc = task.exception()
        if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError):
            log.error("connection %s failed", conn.session_id, exc_info=exc)
    if conn.close_code is not None:
        # Bounded: a client that reads nothing never lets the close frame out.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5.0):
                await websocket.close(conn.close_code, conn.close_reason)


async def _healthz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    status = 503 if gw.draining or gw.manager is None else 200
    m = gw.manager
    problem = gw.backend.health() if gw.backend is not None else None
    if problem is not None and status == 200:
        status = 503
    return JSONResponse(
        {
            "status": "draining"
            if gw.draining
            else ("ok" if status == 200 else "unavailable" if problem else "starting"),
            **({"reason": problem} if problem else {}),
            "version": gateway.__version__,
            "connections": len(gw.connections),
            "tasks_active": m.active_count if m else 0,
            "tasks_running": m.running_count if m else 0,
        },
        status_code=status,
    )


async def _metrics(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def create_app(
    settings: Settings | None = None, *, runner_factory: RunnerFactory | None = None
) -> Starlette:
    """The ASGI app. ``runner_factory`` replaces the agent stack (tests, benchmarks)."""
    settings = settings or Settings.from_env()
    gw = Gateway(settings, runner_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    routes: list[Any] = [
        WebSocketRoute("/ws", _websocket),
        Route("/healthz", _healthz),
        Route("/metrics", _metrics),
    ]
    if settings.web_root is not None and settings.web_root.is_dir():
        routes.append(Mount("/", StaticFiles(directory=settings.web_root, html=True)))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gw
    return app
