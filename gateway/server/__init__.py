"""The gateway server: a Starlette app served by uvicorn (``ospark serve``).

:func:`create_app` builds the ASGI app; :class:`GatewayServer` is uvicorn's server with a
graceful shutdown that sends ``closing`` to every client and delivers every task's terminal
event before the sockets close; :func:`serve_in_background` runs one on an ephemeral port
(tests, benchmarks, embedding).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn

from gateway.server.app import Gateway, create_app
from gateway.server.settings import ConfigError, Settings
from gateway.tasks import RunnerFactory

__all__ = [
    "ConfigError",
    "Gateway",
    "GatewayServer",
    "RunningGateway",
    "Settings",
    "create_app",
    "main",
    "serve_in_background",
]

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
        for server in self.servers:
            server.close()  # stop accepting first
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
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
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


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings of ``ospark serve``: the environment, then its arguments."""
    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        agent_config=args.config,
        shutdown_deadline=args.shutdown_deadline,
        redis_url=getattr(args, "redis", None),
    )
    settings.check()
    return settings


def main(args: argparse.Namespace) -> int:
    """``ospark serve``: run the gateway until SIGTERM/SIGINT."""
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"ospark serve: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1 or (args.workers > 1 and not settings.redis_url):
        print(
            "ospark serve: --workers > 1 needs --redis URL (or OSPARK_REDIS_URL): without a "
            "shared task store, tasks would not be visible across workers.",
            file=sys.stderr,
        )
        return 2
    if settings.redis_url:
        from gateway.server.redis import redis_reachable

        problem = redis_reachable(settings.redis_url)
        if problem is not None:
            print(f"ospark serve: cannot reach Redis ({problem})", file=sys.stderr)
            return 2
    configure_logging(args.log_level)
    if args.workers > 1:
        from gateway.server.workers import run_workers

        return run_workers(args, settings)
    return serve_one(settings)


def serve_one(settings: Settings, sockets: list[socket.socket] | None = None) -> int:
    """Run one gateway process until SIGTERM/SIGINT (on ``sockets`` if given)."""
    app = create_app(settings)
    config = uvicorn_config(app, settings, log_config=None, lifespan="on", access_log=False)
    server = GatewayServer(config, app.state.gateway)
    started = time.monotonic()
    # uvicorn re-raises the signal that stopped it once it is done; after a graceful drain
    # the process should simply exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run(sockets)
    log.info("stopped", extra={"uptime_s": round(time.monotonic() - started, 1)})
    return 0
