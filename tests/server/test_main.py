"""``ospark serve`` start-up: one line and a documented exit code for what is wrong, the URL
to open when all is right."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from gateway.server.main import EXIT_BAD_SETTINGS, EXIT_CANNOT_LISTEN
from tests.server.helpers import Client
from tests.server.serve_process import ospark_serve


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_a_bad_agent_config_is_one_line_naming_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("llm:\n  provider: nope\n", encoding="utf-8")
    done = serve("--port", "0", "--config", str(config))
    assert done.returncode == EXIT_BAD_SETTINGS == 2
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ospark serve: {config}: ") and "llm.provider" in line
    assert "Traceback" not in done.stderr

    missing = serve("--port", "0", "--config", str(tmp_path / "missing.yaml"))
    assert missing.returncode == EXIT_BAD_SETTINGS
    assert len(missing.stderr.splitlines()) == 1 and "not found" in missing.stderr


def test_an_address_in_use_is_one_line_and_exit_3() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve("--port", str(port))
    assert done.returncode == EXIT_CANNOT_LISTEN == 3
    assert (
        done.stderr == f"ospark serve: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def test_malformed_tokens_and_a_reserved_principal_refuse_to_start() -> None:
    done = serve("--port", "0", env={"OSPARK_TOKENS": "alice alice-token-0123456789 bob"})
    assert done.returncode == EXIT_BAD_SETTINGS
    assert len(done.stderr.splitlines()) == 1 and "principal:token" in done.stderr
    done = serve(
        "--port",
        "0",
        env={"OSPARK_TOKENS": "local:local-token-0123456789", "OSPARK_ALLOW_ANONYMOUS": "1"},
    )
    assert done.returncode == EXIT_BAD_SETTINGS
    assert "reserved" in done.stderr and "local-token-0123456789" not in done.stderr


async def test_the_banner_names_the_page_to_open() -> None:
    async with ospark_serve() as srv:
        assert srv.banner.startswith(f"OSpark Gateway: open http://127.0.0.1:{srv.port}/ ")
        client = await Client.connect(srv.url)
        await client.close()
    assert srv.returncode == 0
