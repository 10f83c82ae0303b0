"""``ospark serve``: the gateway as a process of its own."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from gateway.server.app import create_app
from gateway.server.logging import configure_logging
from gateway.server.runner import GatewayServer, uvicorn_config
from gateway.server.settings import ConfigError, Settings

log = logging.getLogger("gateway.server")


def main(args: argparse.Namespace) -> int:
    """``ospark serve``: run the gateway until SIGTERM/SIGINT."""
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            agent_config=args.config,
            shutdown_deadline=args.shutdown_deadline,
        )
        settings.check()
    except ConfigError as exc:
        print(f"ospark serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    if args.workers != 1:
        print(
            "ospark serve: --workers > 1 needs a shared task backend (Redis), which is not built "
            "yet; tasks would not be visible across workers. Run one worker per port instead.",
            file=sys.stderr,
        )
        return 2
    app = create_app(settings)
    config = uvicorn_config(app, settings, log_config=None, lifespan="on", access_log=False)
    server = GatewayServer(config, app.state.gateway)
    started = time.monotonic()
    # uvicorn re-raises the signal that stopped it once it is done; after a graceful drain
    # the process should simply exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    log.info("stopped", extra={"uptime_s": round(time.monotonic() - started, 1)})
    return 0
