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

from gateway.server.app import create_app
from gateway.server.logging import configure_logging
from gateway.server.runner import GatewayServer, uvicorn_config
from gateway.server.settings import ConfigError, Settings
from gateway.tasks import RunnerFactory

__all__ = ["EXIT_BAD_SETTINGS", "EXIT_CANNOT_LISTEN", "EXIT_FAILED", "main"]

EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2
EXIT_CANNOT_LISTEN = 3

log = logging.getLogger("gateway.server")


def _fail(message: str, code: int) -> int:
    print(f"ospark serve: {message}", file=sys.stderr)
    return code


def _load_agent(settings: Settings) -> RunnerFactory:
    """The agent stack for ``settings.agent_config``; :class:`ConfigError` names the file and
    the key."""
    from gateway.agent.errors import ConfigError as AgentConfigError
    from gateway.streaming import runner_factory

    try:
        return runner_factory(settings.agent_config)
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


def main(args: argparse.Namespace) -> int:
    """``ospark serve``: run the gateway until SIGTERM/SIGINT; the exit codes are above."""
    if args.workers != 1:
        return _fail(
            "--workers > 1 needs a shared task backend (Redis), which is not built yet; tasks "
            "would not be visible across workers. Run one worker per port instead.",
            EXIT_BAD_SETTINGS,
        )
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            agent_config=args.config,
            shutdown_deadline=args.shutdown_deadline,
        )
        handshake_timeout = getattr(args, "handshake_timeout", None)
        if handshake_timeout is not None:
            if handshake_timeout <= 0:
                raise ConfigError("--handshake-timeout must be a positive number of seconds")
            settings.transport = dataclasses.replace(
                settings.transport, handshake_timeout=handshake_timeout
            )
        settings.check()
        factory = _load_agent(settings)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_BAD_SETTINGS)
    try:
        sock = _listen(settings.host, settings.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _fail(
            f"cannot listen on {settings.host}:{settings.port}: {reason}", EXIT_CANNOT_LISTEN
        )

    configure_logging(args.log_level)
    app = create_app(settings, runner_factory=factory)
    config = uvicorn_config(app, settings, log_config=None, lifespan="on", access_log=False)
    server = GatewayServer(config, app.state.gateway)
    host, port = sock.getsockname()[:2]
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
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits this way when its start-up fails
        if exc.code in (0, None):
            raise
        return _fail("the server failed to start (see the log above)", EXIT_FAILED)
    finally:
        sock.close()
    log.info("stopped", extra={"uptime_s": round(time.monotonic() - started, 1)})
    return 0
