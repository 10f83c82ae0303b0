"""Serving the gateway with uvicorn.

:class:`GatewayServer` is uvicorn's server with a graceful shutdown that sends ``closing`` to
every client and delivers every task's terminal event before the sockets close;
:func:`serve_in_background` runs one on an ephemeral port (tests, benchmarks, embedding);
:func:`uvicorn_config` maps :class:`Settings` onto uvicorn's options.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn

from gateway.server.app import Gateway, create_app
from gateway.server.logging import install_redaction
from gateway.server.protocols import TransportGuard, protocol_classes
from gateway.server.settings import Settings
from gateway.tasks import RunnerFactory

log = logging.getLogger("gateway.server")


class GatewayServer(uvicorn.Server):
    """uvicorn's server, draining the gateway (``closing`` frames, terminal events, close 4003)
    before uvicorn closes the connections on SIGTERM/SIGINT."""

    def __init__(
        self, config: uvicorn.Config, gateway: Gateway, *, handle_signals: bool = True
    ) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if not self.handle_signals:  # embedded: the host program owns the signals
            yield
            return
        with super().capture_signals():
            yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.handle_signals:  # a server process of its own
            tune_gc()
        if self.started:
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    log.info("listening", extra={"url": f"ws://{host}:{port}/ws"})

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Still listening while the gateway drains: /healthz answers 503 (a load balancer
        # takes the instance out) and new WebSockets are refused with 503, instead of
        # connections being refused; uvicorn stops accepting once the drain is done.
        await self.gateway.drain()
        await super().shutdown(sockets)

    @property
    def port(self) -> int:
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the server is not listening")


def tune_gc() -> None:
    """Collector settings for a gateway process, applied once it has started.

    Everything loaded by then (the SDKs, pydantic models, the agent stack) lives as long as the
    process, so it is frozen out of the collector's passes, and young collections run less
    often: under load the default settings stall the event loop for tens of milliseconds (the
    1,000-task latency benchmark's p99 went from about 10 ms to about 7 ms, p99.9 from about
    50 ms to about 20 ms). Not applied when the gateway is embedded in another program."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def uvicorn_config(app: Any, settings: Settings, **kw: Any) -> uvicorn.Config:
    # uvicorn's protocols with our transport bounds (head timeout, fragments, unread pongs);
    # their refusals are counted in the app's metrics.
    install_redaction()  # no `?token=` in uvicorn's lines, whoever configures the handlers
    guard = TransportGuard(settings.transport)
    http_protocol, ws_protocol = protocol_classes(guard)
    gw = getattr(getattr(app, "state", None), "gateway", None)
    if isinstance(gw, Gateway):
        gw.metrics.track_transport(guard.closes)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol,
        ws=ws_protocol,
        # Above our own limit, so that a moderately oversized frame gets a `frame_too_large`
        # error and the connection stays open; far larger ones are cut by the WebSocket layer
        # (close 1009) before they are buffered whole.
        ws_max_size=max(4 * settings.connection.limits.max_frame_bytes, 1 << 20),
        ws_ping_interval=settings.connection.heartbeat_interval or None,
        ws_ping_timeout=settings.heartbeat_timeout,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=int(settings.shutdown_deadline) + 10,
        **kw,
    )


@dataclass
class RunningGateway:
    """A gateway served in the background by :func:`serve_in_background`."""

    server: GatewayServer
    gateway: Gateway
    port: int
    host: str

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def serve_in_background(
    settings: Settings | None = None, *, runner_factory: RunnerFactory | None = None
) -> AsyncIterator[RunningGateway]:
    """Serve a gateway on ``settings.host`` and an ephemeral port (``port=0``) until exit."""
    settings = settings or Settings(port=0)
    app = create_app(settings, runner_factory=runner_factory)
    gw: Gateway = app.state.gateway
    config = uvicorn_config(app, settings, log_level="warning", lifespan="on")
    server = GatewayServer(config, gw, handle_signals=False)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the gateway server stopped during startup")
        await asyncio.sleep(0.01)
    try:
        yield RunningGateway(server, gw, server.port, settings.host)
    finally:
        server.should_exit = True
        await task
