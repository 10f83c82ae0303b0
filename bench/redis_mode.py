"""The processes of the Redis-mode benchmarks: a ``redis-server`` of the run's own, and
``ospark serve --workers N`` as users run it.

:class:`RedisServer` is Debian's ``redis-server`` on a free loopback port as a subprocess, with
no persistence and ``noeviction`` (what the deployment section asks for, minus AOF: the figures
are of the gateway, not of the disk), killed at the end. The single-process Redis-mode gateway
is ``python -m bench.servers gateway --redis URL`` (limits raised, as for every other gateway
figure); :func:`serve_workers` runs the real CLI with its default limits, for the row that
compares one worker process with two.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["RedisServer", "cpu_s", "free_port", "serve_workers"]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RedisServer:
    """One ``redis-server`` subprocess; a context manager (started on entry, killed on
    exit)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(
                "redis-server is not installed: `make bench` installs it (make sysdeps), or "
                "apt-get install redis-server"
            )
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="ospark-bench-redis-")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self._dir.name,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        self.log: list[str] = []

        def drain() -> None:  # its log says when it is ready; reading it keeps the pipe open
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                if "Ready to accept connections" in line:
                    ready.set()
            ready.set()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        if not ready.wait(20) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("redis-server did not start:\n" + "".join(self.log[-20:]))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        return cpu_s(self.proc.pid)

    def flushall(self) -> None:
        """Empty it (between steps: no task, stream or node lease of a previous gateway)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            if not sock.recv(64).startswith(b"+OK"):
                raise RuntimeError("redis-server refused FLUSHALL")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._drain.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def serve_workers(config: str, redis_url: str, workers: int) -> Iterator[int]:
    """``ospark serve --config CONFIG --redis URL --workers N`` on a free port, default limits;
    yields the port once every worker listens, stops it with SIGTERM."""
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)]
    command += ["--config", config, "--redis", redis_url, "--workers", str(workers)]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    listening = 0
    deadline = time.monotonic() + 120
    while listening < workers:
        line = proc.stderr.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"ospark serve --workers {workers} did not start:\n{''.join(lines)}")
        lines.append(line)
        with contextlib.suppress(ValueError):
            if json.loads(line).get("msg") == "listening":
                listening += 1
    drain = threading.Thread(target=lambda: [None for _ in proc.stderr or ()], daemon=True)
    drain.start()
    try:
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        drain.join(5)
        proc.stderr.close()
