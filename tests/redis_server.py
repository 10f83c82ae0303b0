"""A real ``redis-server`` for the tests (a pytest plugin loaded by ``tests/conftest.py``).

The session fixture ``redis_server`` starts Debian's ``redis-server`` on a free loopback port as
a subprocess, without persistence (``--save "" --appendonly no``), and kills it at the end of
the session. ``redis_url`` hands each test an empty database (``FLUSHALL`` first).
``RedisServer`` can also be used directly for a server a test stops and starts again (the
restart tests use one with AOF in the test's temporary directory, so a restart keeps the data).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

__all__ = ["RedisServer", "free_port"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` subprocess on 127.0.0.1; :meth:`start` and :meth:`stop` may be
    called again and again (same port, same directory)."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        aof: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.aof = aof
        self.extra = extra  # more redis-server arguments (a Cluster node's)
        self.process: subprocess.Popen[str] | None = None
        self._drain = threading.Thread()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (run `make sysdeps`)")
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--daemonize",
            "no",
            "--maxmemory-policy",
            "noeviction",
            "--loglevel",
            "notice",
        ]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        args += self.extra
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ready = threading.Event()
        lines: list[str] = []

        def drain(out: IO[str]) -> None:
            # Its log says when it accepts connections; reading it to the end also keeps the
            # pipe from filling up.
            for line in out:
                lines.append(line)
                if "Ready to accept connections" in line:
                    ready.set()
            ready.set()

        assert self.process.stdout is not None
        self._drain = threading.Thread(target=drain, args=(self.process.stdout,), daemon=True)
        self._drain.start()
        if not ready.wait(20) or self.process.poll() is not None:
            self.stop()
            pytest.fail("redis-server did not start:\n" + "".join(lines[-20:]))

    def stop(self) -> None:
        """Kill the server (SIGKILL: what AOF with fsync always must survive)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        if process is not None:
            self._drain.join(10)
            if process.stdout is not None:
                process.stdout.close()

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(64).startswith(b"+OK")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flushall()
    return redis_server.url
