"""The code tool's E2B option through the real E2B SDK, against a fake E2B on loopback
(``e2b_fake``): the sandbox is created with the configured template and lifetime, the task's
files are uploaded at their own paths (as root), code runs and its output is rendered, and a
cancelled or timed-out run kills the sandbox."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from gateway.tools.sandbox import E2BSandbox, Limits, ToolError

from .e2b_fake import HANG, error, fake_e2b, stderr, stdout
from .support import call, tool_client


def task_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    data = tmp_path / "sales.csv"
    data.write_text("region,total\nnorth,41\n")
    link = tmp_path / "link.csv"
    link.symlink_to(data)
    folder = tmp_path / "folder"
    folder.mkdir()
    return data, link, folder


async def test_create_upload_run_and_kill_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, link, folder = task_files(tmp_path)
    async with fake_e2b() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        fake.outputs = [
            [stdout("north 41\n")],
            [
                stdout("partial\n"),
                stderr("warning\n"),
                error("ZeroDivisionError", "division by zero"),
            ],
        ]
        sandbox = E2BSandbox(
            Limits(),
            fake.api_key,
            template="my-template",
            lifetime_s=900,
            task_files=[str(data), str(link), str(folder), str(data)],
        )
        fake.command_results = [("hello\n", "", 0), ("", "no such file\n", 2)]
        first = await sandbox.run_python("print(open('/x').read())")
        second = await sandbox.run_python("1/0")
        shell = await sandbox.run_shell("echo hello")
        failed = await sandbox.run_shell("cat /nope")
        await sandbox.aclose()
        await fake.until(lambda: fake.killed == ["sbx1"])
    (created,) = fake.created
    assert (created["templateID"], created["timeout"]) == ("my-template", 900)
    # The task file at its own path, written as root; the link and the folder left out.
    assert fake.files == {str(data): (data.read_bytes(), "root", "sbx1")}
    assert fake.executed == [("sbx1", "print(open('/x').read())"), ("sbx1", "1/0")]
    assert first.exit_code == 0 and first.stdout == "north 41\n"
    assert first.note.startswith("E2B sandbox; ")
    assert f"task file {link} is not available in the sandbox: a symbolic link" in first.note
    assert f"task file {folder} is not available in the sandbox: a directory" in first.note
    assert second.exit_code == 1 and second.stdout == "partial\n"
    assert second.stderr.startswith("warning\nZeroDivisionError: division by zero\nTraceback")
    assert [(sandbox_id, line[-10:]) for sandbox_id, _, line in fake.commands] == [
        ("sbx1", "echo hello"),
        ("sbx1", " cat /nope"),
    ]
    assert (shell.exit_code, shell.stdout, shell.stderr) == (0, "hello\n", "")
    assert (failed.exit_code, failed.stdout, failed.stderr) == (2, "", "no such file\n")


async def test_a_refused_key_is_a_clear_tool_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async with fake_e2b() as fake:
        for name, value in fake.env().items():
            monkeypatch.setenv(name, value)
        sandbox = E2BSandbox(Limits(), "wrong-key", task_files=[])
        with pytest.raises(ToolError, match="the E2B sandbox could not be created"):
            await sandbox.run_python("print(1)")
    assert fake.created == []


async def test_without_its_sdk_the_tool_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "e2b_code_interpreter", None)  # import fails
    sandbox = E2BSandbox(Limits(), "e2b-key", task_files=[])
    with pytest.raises(ToolError, match=r"pip install 'ospark-gateway\[e2b\]'"):
        await sandbox.run_python("print(1)")


async def test_the_tool_server_uploads_runs_and_kills_on_cancel(tmp_path: Path) -> None:
    """``python -m gateway.tools.code`` with ``E2B_API_KEY`` set: a cancelled call kills its
    sandbox at once, and the next call gets a new one with the files uploaded again."""
    data, _, _ = task_files(tmp_path)
    async with fake_e2b() as fake:
        env = {
            **fake.env(),
            "OSPARK_TASK_FILES": os.pathsep.join([str(data)]),
            "OSPARK_E2B_TEMPLATE": "my-template",
            "OSPARK_E2B_SANDBOX_TIMEOUT_S": "900",
        }
        fake.outputs = [[stdout("42\n")], [stdout("again\n")]]
        async with tool_client("code", env) as client:
            first = await call(client, "run_python_code", code_block="print(6 * 7)")
            running = asyncio.create_task(
                call(client, "run_python_code", code_block=f"while True: pass  {HANG}")
            )
            await fake.hanging.wait()
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            await fake.until(lambda: fake.killed == ["sbx1"])  # killed on cancel
            after = await call(client, "run_python_code", code_block="print('again')")
    assert first == ("exit code 0 (E2B sandbox)\n--- stdout ---\n42", False)
    assert after == ("exit code 0 (E2B sandbox)\n--- stdout ---\nagain", False)
    assert [c["templateID"] for c in fake.created] == ["my-template", "my-template"]
    assert [sandbox for sandbox, _ in fake.executed] == ["sbx1", "sbx1", "sbx2"]
    assert fake.files[str(data)] == (data.read_bytes(), "root", "sbx2")  # uploaded again


async def test_a_run_past_its_time_limit_kills_the_sandbox(tmp_path: Path) -> None:
    async with fake_e2b() as fake:
        env = {**fake.env(), "OSPARK_CODE_TIMEOUT_S": "0.5"}
        async with tool_client("code", env) as client:
            text, is_error = await call(client, "run_python_code", code_block=f"x = 1  {HANG}")
            await fake.until(lambda: fake.killed == ["sbx1"])
    assert is_error
    assert text == (
        "Error executing tool run_python_code: timed out (killed after the 0.5 s time limit: "
        "the E2B sandbox was discarded, the next call gets a new one)\n(no output)"
    )
