"""``POST /files``: authenticated, size-limited, content-typed uploads per principal, named by
``start``'s ``options.files``, opened by the agent's tools, kept with the task's retention."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.client import GatewayClient
from gateway.server import Settings, serve_in_background
from gateway.testing import Stream, fake_llm_server, openai_stream
from protocol.events import TaskCancelled, TaskCompleted, TaskFailed, ToolCallComplete

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
SERVER = str(Path(__file__).resolve().parents[1] / "agent" / "mcp_server.py")


def agent_config(tmp_path: Path, base_url: str) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(
        json.dumps(
            {
                "llm": {
                    "provider": "openai",
                    "model_name": "fake-model",
                    "base_url": base_url,
                    "api_key": "test-key",
                    "max_retries": 0,
                },
                "tools": [{"name": "testsrv", "command": sys.executable, "args": [SERVER]}],
                "main_agent": {"tool_config": ["testsrv"]},
            }
        )
    )
    return str(path)


def settings(config: str) -> Settings:
    return Settings(port=0, agent_config=config, web_root=None, tokens={ALICE: "alice", BOB: "bob"})


def http(
    method: str, url: str, data: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, json.loads(body) if body else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def test_an_uploaded_file_reaches_the_agent_and_stays_with_its_owner(tmp_path: Path) -> None:
    async with (
        fake_llm_server() as llm,
        serve_in_background(settings(agent_config(tmp_path, llm.openai_url))) as gw,
    ):
        if True:  # one block for the server's lifetime
            async with GatewayClient(gw.url, token=ALICE) as alice:
                file_id = await alice.upload(b"The secret is 42.\n", "notes.txt", "text/plain")
                assert file_id.startswith("file_")
                path = gw.gateway.files.get("alice", file_id).path
                call = ("c1", "testsrv__read_file", json.dumps({"path": str(path)}))
                llm.add(
                    Stream(openai_stream(text="Reading it.", tool_calls=[call])),
                    Stream(openai_stream(text="It says 42.")),
                    Stream(openai_stream(text="Report \\boxed{42}")),
                )
                task = await alice.start(
                    "What is the secret?", task_id="f1", options={"files": [file_id]}
                )
                terminal = await task.wait()
                assert isinstance(terminal, TaskCompleted) and terminal.final_answer == "42"
                told = llm.requests[0]["messages"][1]["content"]
                assert f"- {path} (notes.txt, text/plain, 18 bytes)" in told
                complete = [e async for e in task.events() if isinstance(e, ToolCallComplete)]
                assert complete[0].result == "The secret is 42.\n"
                trace = await alice.trace("f1")
                assert trace["files"][0]["file_id"] == file_id
            async with GatewayClient(gw.url, token=BOB) as bob:
                # Bob cannot use, list or delete Alice's file: it looks like no file at all.
                task = await bob.start("Read it", task_id="f2", options={"files": [file_id]})
                terminal = await task.wait()
                assert isinstance(terminal, TaskFailed) and terminal.code == "invalid_input"
                assert "unknown file" in terminal.reason
                auth = {"Authorization": f"Bearer {BOB}"}
                status, body = await asyncio.to_thread(
                    http, "GET", f"{gw.http_url}/files", None, auth
                )
                assert (status, body) == (200, {"files": []})
                status, body = await asyncio.to_thread(
                    http, "DELETE", f"{gw.http_url}/files/{file_id}", None, auth
                )
                assert (status, body["error"]) == (404, "unknown_file")
    assert not path.exists()  # the server's files went with it


def _chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // 1024):
        yield b"x" * 1024


async def test_upload_limits_each_have_a_clear_error(tmp_path: Path) -> None:
    async with serve_in_background(settings(agent_config(tmp_path, "http://127.0.0.1:9/v1"))) as gw:
        gw.gateway.files.max_file_bytes = 4096
        url = f"{gw.http_url}/files"
        auth = {"Authorization": f"Bearer {ALICE}", "Content-Type": "text/plain"}

        async def post(query: str, data: Any, headers: dict[str, str]) -> tuple[int, str]:
            status, body = await asyncio.to_thread(http, "POST", url + query, data, headers)
            return status, body.get("error", "")

        assert await post("?name=a.txt", b"x" * 5000, auth) == (413, "too_large")
        # No Content-Length (chunked): cut off while streaming.
        assert await post("?name=a.txt", _chunks(8192), auth) == (413, "too_large")
        assert await post("", b"x", auth) == (400, "bad_name")
        assert await post("?name=../up.txt", b"x", auth) == (400, "bad_name")
        form = {**auth, "Content-Type": "multipart/form-data; boundary=x"}
        assert await post("?name=a.txt", b"x", form) == (415, "bad_content_type")
        assert await post("?name=a.txt", b"x", {"Content-Type": "text/plain"}) == (
            401,
            "unauthorized",
        )
        bad = {**auth, "Authorization": "Bearer not-a-valid-token-at-all"}
        assert await post("?name=a.txt", b"x", bad) == (401, "unauthorized")
        gw.gateway.files.max_files = 1
        assert (await post("?name=a.txt", b"ok", auth))[0] == 201
        assert await post("?name=b.txt", b"ok", auth) == (413, "quota")
        assert gw.gateway.files.list("bob") == []  # bob's quota is his own


async def test_files_follow_the_tasks_retention(tmp_path: Path) -> None:
    async with (
        fake_llm_server() as llm,
        serve_in_background(settings(agent_config(tmp_path, llm.openai_url))) as gw,
    ):
        if True:  # one block for the server's lifetime
            store = gw.gateway.files
            llm.add(Stream(openai_stream(text="reading")[:3], hang=True))
            async with GatewayClient(gw.url, token=ALICE) as alice:
                file_id = await alice.upload(b"data", "d.csv", "text/csv")
                path = store.get("alice", file_id).path
                task = await alice.start("Use it", task_id="r1", options={"files": [file_id]})
                await asyncio.wait_for(llm.streaming.wait(), 60)
                store.retain_s = 0  # from now on, retention ends as soon as nothing uses a file
                store.get("alice", file_id).expires = 0.0
                store.prune()
                assert path.exists()  # in use: kept past its retention
                await task.cancel()
                assert isinstance(await task.wait(), TaskCancelled)
                store.prune()
                assert not path.exists() and store.list("alice") == []
