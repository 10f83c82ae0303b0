"""The log of a real ``ospark serve`` process: JSON lines, no secrets, no ANSI colours, one
line per failed task."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.server.logging import redact
from protocol import TaskFailed
from tests.server.helpers import Client
from tests.server.serve_process import ospark_serve
from tests.server.test_hardening import handshake_status

TOKEN = "alice-token-0123456789"
WRONG = "wrong-token-9876543210"
API_KEY = "sk-test-key-never-logged-42"


def unreachable_provider_config(tmp_path: Path) -> str:
    """An OpenAI-compatible provider on a local port nobody listens on: every task fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "unreachable.yaml"
    path.write_text(
        "llm:\n"
        "  provider: openai\n"
        "  model_name: gpt-test\n"
        f"  api_key: {API_KEY}\n"
        f"  base_url: http://127.0.0.1:{port}/v1\n"
        "  max_retries: 0\n"
        "main_agent:\n"
        "  tool_config: [calculator]\n",
        encoding="utf-8",
    )
    return str(path)


async def test_log_lines_carry_no_secret_and_name_failed_tasks(tmp_path: Path) -> None:
    config = unreachable_provider_config(tmp_path)
    async with ospark_serve("--config", config, env={"OSPARK_TOKENS": f"alice:{TOKEN}"}) as srv:
        assert await handshake_status(srv.port, {}, f"/ws?token={WRONG}") == 401
        client = await Client.connect(srv.url + f"?token={TOKEN}")
        rid = await client.start("What is 1+1?", task_id="doomed")
        await client.until_finished(["doomed"])
        failed = client.events["doomed"][-1].event
        assert isinstance(failed, TaskFailed) and failed.code == "provider_error"
        await client.close()
    assert srv.returncode == 0
    assert rid

    text = "\n".join(srv.stderr)
    for secret in (TOKEN, WRONG, API_KEY):
        assert secret not in text
    lines = srv.log_lines()  # every line is JSON
    assert not [line for line in lines if "color_message" in line or "\x1b[" in str(line)]
    accepted = [line["msg"] for line in lines if "[accepted]" in line["msg"]]
    assert accepted and all("token=[redacted]" in msg for msg in accepted)
    refused = [line["msg"] for line in lines if '" 401' in line["msg"]]
    assert refused and all("token=[redacted]" in msg for msg in refused)
    failures = [line for line in lines if line["msg"] == "task failed"]
    assert [(f["principal"], f["task_id"], f["code"]) for f in failures] == [
        ("alice", "doomed", failed.code)
    ]
    assert failures[0]["level"] == "warning"


def test_redaction_patterns() -> None:
    assert redact('"WebSocket /ws?token=abc&x=1" 401') == '"WebSocket /ws?token=[redacted]&x=1" 401'
    assert redact("Authorization: Bearer abc.def") == "Authorization: Bearer [redacted]"
    assert redact("GET /metrics?api_key=k1 200") == "GET /metrics?api_key=[redacted] 200"
    assert redact("nothing=secret-looking here") == "nothing=secret-looking here"
