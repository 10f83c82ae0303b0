"""``ospark serve --workers N``: N gateway processes on one port (Redis mode only).

The parent binds the listening socket once and starts N worker processes (``spawn``), each a
whole gateway (its own event loop, task manager and node in Redis) accepting on that socket;
the kernel spreads connections over them. Every task lives in Redis, so a client may land on
any worker and still resume, query or cancel any of its tasks. SIGTERM to the parent drains
every worker (each sends ``closing`` and ends its tasks' streams as a single process would);
a worker that dies is replaced, and its tasks are ended by the survivors (``node_lost``).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import socket
import threading
from multiprocessing.process import BaseProcess
from typing import Any

from gateway.server.settings import Settings

__all__ = ["run_workers"]

log = logging.getLogger("gateway.server")

multiprocessing.allow_connection_pickling()  # the listening socket goes to the workers


def _worker(options: dict[str, Any], sock: socket.socket) -> None:
    from gateway.server import configure_logging, serve_one, settings_from_args

    args = argparse.Namespace(**options)
    configure_logging(args.log_level)
    serve_one(settings_from_args(args), [sock])


def run_workers(args: argparse.Namespace, settings: Settings) -> int:
    """Serve with ``args.workers`` processes until SIGTERM/SIGINT; returns the exit code."""
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    options = {k: v for k, v in vars(args).items() if k != "handler"}
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    got: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        got.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def spawn() -> BaseProcess:
        process = context.Process(target=_worker, args=(options, sock), daemon=False)
        process.start()
        return process

    workers = [spawn() for _ in range(args.workers)]
    log.info(
        "serving with %d worker processes",
        len(workers),
        extra={"url": f"ws://{settings.host}:{sock.getsockname()[1]}/ws"},
    )
    while not stop.wait(0.5):
        for i, process in enumerate(workers):
            if not process.is_alive() and not stop.is_set():
                log.error(
                    "worker %s exited (code %s); starting another", process.pid, process.exitcode
                )
                workers[i] = spawn()
    # SIGINT from a terminal reaches the workers too; SIGTERM is for the parent to pass on.
    if signal.SIGTERM in got:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                process.terminate()
    for process in workers:
        process.join(settings.shutdown_deadline + 20)
        if process.is_alive():
            log.error("worker %s did not stop; killing it", process.pid)
            process.kill()
            process.join()
    sock.close()
    return 0
