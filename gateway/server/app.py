"""The Starlette application: ``/ws`` (WebSocket), ``/healthz``, ``/metrics`` and the web demo.

The endpoint is thin: it authenticates, negotiates the subprotocol, then runs the socket's I/O
loop (:class:`_Pump`): the endpoint itself reads, feeding :meth:`Connection.handle`; a writer
task, started the first time there is something to send, takes payloads from the connection's
:class:`~gateway.outbox.Outbox`; every decision is in :class:`gateway.connection.Connection`
and the outbox. One close path: a requested close (a failed send included) stops the writer
and closes the socket, which ends the reader; a client that leaves ends the reader, which stops
the writer; then the connection unsubscribes from its tasks, which keep running under their
detach policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

import gateway
from gateway.adapters import adapter_routes
from gateway.agent import TraceStore, stop_tool_servers
from gateway.connection import Connection, ConnectionStats
from gateway.server.auth import HostGuard, authenticate
from gateway.server.files import FileStore, file_routes
from gateway.server.metrics import Metrics, sample_loop_lag
from gateway.server.settings import Settings
from gateway.server.traces import trace_routes
from gateway.tasks import RunnerFactory, TaskManager, TaskRecord

if TYPE_CHECKING:
    from gateway.streaming import LoadedAgents
    from gateway.tasks.redis_backend import RedisBackend
from protocol import (
    SUBPROTOCOLS,
    CloseCode,
    Closing,
    ServerSession,
    codec_for_subprotocol,
    select_subprotocol,
)

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("gateway.server")

Send = Callable[[str | bytes], Awaitable[None]]


def _add_stats(into: ConnectionStats, stats: ConnectionStats) -> None:
    into.frames_sent += stats.frames_sent
    into.bytes_sent += stats.bytes_sent
    into.events_sent += stats.events_sent
    into.batches_sent += stats.batches_sent
    into.frames_received += stats.frames_received
    into.bytes_received += stats.bytes_received
    into.errors_sent.update(stats.errors_sent)


class Gateway:
    """The state of one gateway process: settings, task manager, metrics, connections."""

    def __init__(
        self,
        settings: Settings,
        runner_factory: RunnerFactory | None = None,
        agents: LoadedAgents | None = None,
    ) -> None:
        self.settings = settings
        self._agents = agents
        self.metrics = Metrics(self._task_counts, self._connection_totals)
        self._runner_factory = runner_factory
        self.files = FileStore.from_env(settings.tasks.retain_finished)
        self.traces = TraceStore(retain_s=settings.tasks.retain_finished)
        self.manager: TaskManager | None = None
        self.backend: RedisBackend | None = None
        """The Redis backend in Redis mode (None: the manager's in-memory one)."""
        self.connections: set[Connection] = set()
        self._closed_stats = ConnectionStats()  # the counters of connections gone
        self.draining = False
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self._background: set[asyncio.Task[None]] = set()

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._no_connections.clear()
        self.metrics.connections.inc()
        self.metrics.connections_total.inc()

    def discard(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.metrics.connections.dec()
            _add_stats(self._closed_stats, conn.stats)
        if not self.connections:
            self._no_connections.set()

    def _connection_totals(self) -> ConnectionStats:
        totals = ConnectionStats()
        _add_stats(totals, self._closed_stats)
        for conn in list(self.connections):
            _add_stats(totals, conn.stats)
        return totals

    def _task_counts(self) -> dict[str, int]:
        m = self.manager
        if m is None:
            return {"pending": 0, "running": 0}
        return {"pending": m.active_count - m.running_count, "running": m.running_count}

    def _default_runner_factory(self) -> RunnerFactory:
        from gateway.streaming import runner_factory  # the agent stack, loaded on demand

        return runner_factory(
            self.settings.agent_config, files=self.files, traces=self.traces, loaded=self._agents
        )

    async def start(self) -> None:
        factory = self._runner_factory or self._default_runner_factory()
        metrics = self.metrics

        def finished(record: TaskRecord, since_cancel: float | None, ttft: float | None) -> None:
            metrics.tasks_finished.labels(record.state).inc()
            if since_cancel is not None:
                metrics.cancel_latency.observe(since_cancel)
            if ttft is not None:
                metrics.ttft.observe(ttft)
            if record.state == "failed":
                self._spawn(self._log_failure(record))

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
        self._spawn(sample_loop_lag(metrics.loop_lag))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _log_failure(self, record: TaskRecord) -> None:
        """One line per failed task: who, which task, the failure's code — never its reason or
        input, which may quote a provider's error or the user's data."""
        code = "failed"
        if self.manager is not None:  # the terminal event is appended right after the observer
            logged = await self.manager.backend.read(
                record.owner, record.task_id, max(0, record.last_seq - 1)
            )
            if logged is not None and logged.frames:
                code = getattr(logged.frames[-1].event, "code", code)
        log.warning(
            "task failed",
            extra={"principal": record.owner, "task_id": record.task_id, "code": code},
        )

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
        # Cancelled tasks leave their stdio tool servers shutting down in the background:
        # wait for them (bounded), so that no server process outlives the gateway.
        await stop_tool_servers()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.files.close()
        if self.backend is not None:
            await self.backend.close()


async def _websocket(websocket: WebSocket) -> None:
    gw: Gateway = websocket.app.state.gateway
    settings = gw.settings
    offered: list[str] = websocket.scope.get("subprotocols", [])
    subprotocol = select_subprotocol(offered)
    auth = authenticate(websocket.headers, websocket.query_params, settings)
    # Refused before the upgrade: an HTTP status and no 101, so a client without a valid token
    # never gets a WebSocket the server would have to read frames from.
    if auth.principal is None:
        label = "unauthorized" if auth.status == 401 else "forbidden"
        await _deny(websocket, auth.status, auth.reason, label)
        return
    if gw.draining or gw.manager is None:
        await _deny(websocket, 503, "server shutting down", "draining")
        return
    if offered and subprotocol is None:
        # The client insists on a protocol we do not speak: say so, rather than upgrade
        # without one and leave the client to abort.
        names = ", ".join(offered)[:200]
        ours = ", ".join(SUBPROTOCOLS)
        reason = f"unsupported subprotocol {names}; this gateway speaks {ours} (or none: JSON)"
        await _deny(websocket, 400, reason, "subprotocol")
        return
    await websocket.accept(subprotocol=subprotocol)
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
    )
    gw.add(conn)
    try:
        await _Pump(websocket, conn, gw.metrics).run()
    finally:
        conn.close()
        gw.discard(conn)
        if conn.close_code == CloseCode.SLOW_CONSUMER:
            gw.metrics.slow_consumers.inc()


async def _deny(websocket: WebSocket, status: int, reason: str, label: str) -> None:
    gw: Gateway = websocket.app.state.gateway
    gw.metrics.rejected.labels(label).inc()
    with contextlib.suppress(Exception):  # the client may be gone already
        await websocket.send_denial_response(PlainTextResponse(reason, status_code=status))


class _Pump:
    """The socket's I/O loop (:meth:`run`). Its own coroutine reads; a writer task, started the
    first time the connection has something to send (an idle connection holds none), writes;
    a requested close stops the writer (it may be blocked on a socket that does not drain) and
    closes the socket, which ends the reader. (An object rather than closures: what an idle
    connection holds is kept small.)"""

    __slots__ = ("closer", "conn", "metrics", "send", "websocket", "writer")

    def __init__(self, websocket: WebSocket, conn: Connection, metrics: Metrics) -> None:
        self.websocket = websocket
        self.conn = conn
        self.metrics = metrics
        # The session encodes to bytes for MessagePack and to str for JSON: pick the sender once.
        self.send: Send = (
            websocket.send_bytes  # type: ignore[assignment]
            if conn.session.codec.binary
            else websocket.send_text
        )
        self.writer: asyncio.Task[None] | None = None
        self.closer: asyncio.Task[None] | None = None

    def start_writer(self) -> None:
        conn = self.conn
        self.writer = asyncio.get_running_loop().create_task(
            _write(conn, self.send, self.metrics), name=f"ws-writer:{conn.session_id}"
        )

    def close_requested(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
        self.closer = asyncio.get_running_loop().create_task(_close(self.websocket, self.conn))

    async def run(self) -> None:
        """Send ``hello``, then feed every incoming message to the connection until the client
        goes or a close is requested (closing the socket ends the wait for the next one)."""
        conn = self.conn
        await self.send(conn.hello())
        conn.start_writer = self.start_writer
        conn.on_close = self.close_requested
        receive = self.websocket.receive
        try:
            while conn.close_code is None:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                if data is None:
                    data = message.get("bytes") or b""
                await conn.handle(data)
        except (WebSocketDisconnect, OSError):
            pass
        except Exception:
            log.exception("connection %s failed", conn.session_id)
        finally:
            conn.start_writer = conn.on_close = None
            if self.writer is not None:
                self.writer.cancel()
            await asyncio.gather(
                *(t for t in (self.writer, self.closer) if t is not None), return_exceptions=True
            )


async def _write(conn: Connection, send: Send, metrics: Metrics) -> None:
    """Send what the connection queues until a close is requested (then it is cancelled)."""
    outbox = conn.outbox
    stats = conn.stats
    batch_size = metrics.batch_size
    try:
        while conn.close_code is None:
            await conn.wait_for_output()
            if conn.close_code is not None:
                return
            metrics.outbox_depth.observe(len(outbox))
            outbox.begin_write()
            try:
                while (item := outbox.take()) is not None:
                    payload, n_events = item
                    await send(payload)
                    stats.frames_sent += 1
                    stats.bytes_sent += len(payload)
                    if n_events:
                        stats.events_sent += n_events
                        stats.batches_sent += n_events > 1
                        batch_size.observe(n_events)
            finally:
                outbox.end_write()
            conn.sent_all()
    except (WebSocketDisconnect, OSError):
        return  # the client is gone: the reader hears it too
    except Exception:
        log.exception("connection %s failed", conn.session_id)
        conn.request_close(1011, "internal error")


async def _close(websocket: WebSocket, conn: Connection) -> None:
    """Close the socket with the connection's code. Bounded: a client that reads nothing never
    lets the close frame out."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5.0):
            await websocket.close(conn.close_code or 1000, conn.close_reason)


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
    settings: Settings | None = None,
    *,
    runner_factory: RunnerFactory | None = None,
    agents: LoadedAgents | None = None,
) -> Starlette:
    """The ASGI app. ``runner_factory`` replaces the agent stack (tests, benchmarks);
    ``agents`` is ``settings.agent_config`` loaded before (``ospark serve`` checks it before
    binding)."""
    settings = settings or Settings.from_env()
    gw = Gateway(settings, runner_factory, agents)

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
        *file_routes(),
        *trace_routes(),
        *adapter_routes(settings),  # A2A and AG-UI over the same tasks
    ]
    if settings.web_root is not None and settings.web_root.is_dir():
        routes.append(Mount("/", StaticFiles(directory=settings.web_root, html=True)))
    app = Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(HostGuard, settings=settings)]
    )
    app.state.gateway = gw
    app.state.files = gw.files
    app.state.traces = gw.traces
    return app
