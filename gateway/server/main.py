"""``ospark serve``: the gateway as a process of its own.

Everything that can be wrong with the settings is found before the port is bound, and reported
in one line on stderr with a documented exit code (never a traceback):

====  ================================================================================
code  meaning
====  ================================================================================
0     stopped by SIGTERM/SIGINT after a graceful drain
1     the server failed after it started (the log says why)
2     bad settings: arguments, ``OSPARK_*`` variables, or the agent config (``--config``)
3     cannot listen on ``--host``/``--port`` (address in use, permission denied, ...)
====  ================================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING

from gateway.server.app import create_app
from gateway.server.logging import configure_logging
from gateway.server.runner import GatewayServer, uvicorn_config
from gateway.server.settings import ConfigError, Settings

__all__ = ["EXIT_BAD_SETTINGS", "EXIT_CANNOT_LISTEN", "EXIT_FAILED", "main"]

EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2
EXIT_CANNOT_LISTEN = 3

if TYPE_CHECKING:
    from gateway.streaming import LoadedAgents

log = logging.getLogger("gateway.server")


def _fail(message: str, code: int) -> int:
    print(f"ospark serve: {message}", file=sys.stderr)
    return code


def _load_agents(settings: Settings) -> LoadedAgents:
    """``settings.agent_config`` loaded once, before binding: a bad config is one line naming
    the file and the key (:class:`ConfigError`)."""
    from gateway.agent.errors import AgentConfigError
    from gateway.streaming import load_agents

    try:
        return load_agents(settings.agent_config)
    except AgentConfigError as exc:
        where = settings.agent_config or "the built-in agent config"
        raise ConfigError(f"{where}: {exc}") from None


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings of ``ospark serve``: the environment, then its arguments (checked; raises
    :class:`ConfigError`)."""
    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        agent_config=args.config,
        shutdown_deadline=args.shutdown_deadline,
        redis_url=getattr(args, "redis", None),
    )
    handshake_timeout = getattr(args, "handshake_timeout", None)
    if handshake_timeout is not None:
        if handshake_timeout <= 0:
            raise ConfigError("--handshake-timeout must be a positive number of seconds")
        settings.transport = dataclasses.replace(
            settings.transport, handshake_timeout=handshake_timeout
        )
    settings.check()
    return settings


def main(args: argparse.Namespace) -> int:
    """``ospark serve``: run the gateway until SIGTERM/SIGINT; the exit codes are above."""
    configure_logging(args.log_level)  # before the config check, whose warnings are log lines
    try:
        settings = settings_from_args(args)
        if args.workers < 1 or (args.workers > 1 and not settings.redis_url):
            raise ConfigError(
                "--workers > 1 needs --redis URL (or OSPARK_REDIS_URL): without a shared task "
                "store, tasks would not be visible across workers"
            )
        agents = _load_agents(settings)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_BAD_SETTINGS)
    if settings.redis_url:
        from gateway.server.redis import redis_reachable

        problem = redis_reachable(settings.redis_url)
        if problem is not None:
            return _fail(f"cannot reach Redis ({problem})", EXIT_BAD_SETTINGS)
    try:
        if args.workers > 1:
            from gateway.server.workers import run_workers

            return run_workers(args, settings)
        sock = _listen(settings.host, settings.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _fail(
            f"cannot listen on {settings.host}:{settings.port}: {reason}", EXIT_CANNOT_LISTEN
        )
    return serve_one(settings, [sock], agents=agents)


def serve_one(
    settings: Settings,
    sockets: list[socket.socket] | None = None,
    *,
    agents: LoadedAgents | None = None,
) -> int:
    """Run one gateway process on ``sockets`` (default: bind ``settings.host``/``port``)
    until SIGTERM/SIGINT (``--workers`` runs one per worker process on the parent's socket)."""
    if sockets is None:
        sockets = [_listen(settings.host, settings.port)]
    app = create_app(settings, agents=agents)
    config = uvicorn_config(app, settings, log_config=None, lifespan="on", access_log=False)
    server = GatewayServer(config, app.state.gateway)
    host, port = sockets[0].getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"OSpark Gateway: open http://{shown}:{port}/ (WebSocket ws://{shown}:{port}/ws); "
        "Ctrl-C to stop",
        flush=True,
    )
    started = time.monotonic()
    # uvicorn re-raises the signal that stopped it once it is done; after a graceful drain
    # the process should simply exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run(sockets=sockets)
    except SystemExit as exc:  # uvicorn exits this way when its start-up fails
        if exc.code in (0, None):
            raise
        return _fail("the server failed to start (see the log above)", EXIT_FAILED)
    finally:
        for sock in sockets:
            sock.close()
    log.info("stopped", extra={"uptime_s": round(time.monotonic() - started, 1)})
    return 0
