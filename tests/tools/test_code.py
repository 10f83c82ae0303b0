"""The code tool in its bubblewrap sandbox, as a real MCP stdio server: limits hold, runs fail
cleanly, the session goes on, and cancelling a call kills what it started."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.tools._common import ToolError
from gateway.tools.sandbox import BwrapSandbox, E2BSandbox, Limits, make_sandbox

from .support import (
    call,
    commands_with,
    fake_service,
    read_fifo_line,
    tool_client,
    wait_all_exit,
)

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="needs bubblewrap (make sysdeps)"
)


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    """A scratch root the sandbox user can reach (pytest's tmp_path is closed to others)."""
    root = Path(tempfile.mkdtemp(prefix="ospark-test-code-"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def scratch_dir(root: Path) -> Path:
    (workdir,) = root.glob("ospark-code-*")
    return workdir / "scratch"


async def test_runs_python_and_shell_with_a_shared_scratch_directory(scratch_root: Path) -> None:
    tmp_path = scratch_root
    env = {"OSPARK_CODE_SCRATCH_ROOT": str(scratch_root), "OSPARK_CODE_MAX_OUTPUT_CHARS": "500"}
    async with tool_client("code", env) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {
            "run_python_code",
            "run_command",
        }
        first = await call(
            client,
            "run_python_code",
            code_block="open('data.txt', 'w').write('kept')\nprint(2**10)",
        )
        second = await call(
            client, "run_command", command="cat data.txt; pwd; echo oops >&2; exit 3"
        )
        failing = await call(client, "run_python_code", code_block="raise ValueError('bad input')")
        flood = await call(client, "run_python_code", code_block="print('x' * 50_000)")
        assert (scratch_dir(tmp_path) / "data.txt").read_text() == "kept"
    assert first == ("exit code 0\n--- stdout ---\n1024", False)
    assert second == ("exit code 3\n--- stdout ---\nkept/scratch\n--- stderr ---\noops", False)
    text, is_error = failing
    assert not is_error and text.startswith("exit code 1") and "ValueError: bad input" in text
    text, is_error = flood
    assert not is_error
    assert text.endswith("[stdout truncated: 49,501 more characters not shown; limit 500]")
    assert list(tmp_path.iterdir()) == []  # the scratch directory goes with the server


async def test_limits_hold_and_the_session_goes_on(tmp_path: Path) -> None:
    """An infinite loop, a fork bomb, a network call, writes outside /scratch and a memory hog
    each fail cleanly, and the next call in the same session still works."""
    outside = tmp_path / "outside.txt"
    env = {
        "OSPARK_CODE_TIMEOUT_S": "3",
        "OSPARK_CODE_MEMORY_MB": "256",
        "OSPARK_CODE_MAX_PROCESSES": "32",
        "OSPARK_CODE_MAX_OUTPUT_CHARS": "2000",
    }
    async with fake_service() as fake, tool_client("code", env) as client:
        loop = await call(client, "run_python_code", code_block="while True:\n    pass")
        bomb = await call(
            client,
            "run_command",
            command="python3 -c 'import os  # bomb-31337\nwhile True: os.fork()'",
        )
        await wait_all_exit("bomb-31337")
        network = await call(
            client,
            "run_python_code",
            code_block=(
                f"import socket\nsocket.create_connection(('127.0.0.1', {fake.port}), timeout=2)"
            ),
        )
        dns = await call(
            client,
            "run_python_code",
            code_block="import socket; socket.getaddrinfo('example.com', 80)",
        )
        writes = await call(
            client,
            "run_command",
            command=(
                f"echo x > {outside}; echo y > /usr/evil; echo z > /etc/evil; "
                "echo ok > /tmp/t; cat /tmp/t"
            ),
        )
        memory = await call(client, "run_python_code", code_block="b = bytearray(1024**3)")
        after = await call(client, "run_python_code", code_block="print('still here')")
    text, is_error = loop
    assert is_error and text.endswith(": timed out (killed after the 3 s time limit)\n(no output)")
    text, _ = bomb
    assert "Resource temporarily unavailable" in text or "timed out" in text
    text, is_error = network
    assert not is_error and text.startswith("exit code 1")
    assert "Network is unreachable" in text or "Connection refused" in text
    assert not fake.requests  # nothing reached the host's loopback
    assert dns[0].startswith("exit code 1") and "gaierror" in dns[0]
    text, _ = writes
    assert f"{outside}: No such file or directory" in text
    assert "/usr/evil: Read-only file system" in text
    assert "/etc/evil: Read-only file system" in text
    assert "--- stdout ---\nok\n" in text  # the private /tmp is writable
    assert not outside.exists()
    assert memory[0].startswith("exit code 1") and "MemoryError" in memory[0]
    assert after == ("exit code 0\n--- stdout ---\nstill here", False)


async def test_cancel_kills_the_sandboxed_processes(scratch_root: Path) -> None:
    tmp_path = scratch_root
    env = {"OSPARK_CODE_SCRATCH_ROOT": str(scratch_root)}
    async with tool_client("code", env) as client:
        assert (await call(client, "run_command", command="true"))[1] is False
        fifo = scratch_dir(tmp_path) / "started"
        os.mkfifo(fifo)
        fifo.chmod(0o666)  # the sandbox may run as another user
        # Popen returns once exec is under way, before the new command line is in place:
        # the program signals only when both command lines read back.
        code = (
            "import subprocess\n"
            "sleepers = [subprocess.Popen(['sleep', '4242.5']) for _ in range(2)]\n"
            "for s in sleepers:\n"
            "    while open(f'/proc/{s.pid}/cmdline', 'rb').read() != b'sleep\\x004242.5\\x00':\n"
            "        pass\n"
            "open('started', 'w').write('started\\n')\n"
            "for s in sleepers: s.wait()"
        )
        running = asyncio.create_task(call(client, "run_python_code", code_block=code))
        assert await read_fifo_line(fifo) == "started"
        assert list(commands_with("4242.5").values()) == ["sleep 4242.5", "sleep 4242.5"]
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await wait_all_exit("sleep 4242.5")  # every process of the run is gone
        after = await call(client, "run_python_code", code_block="print('next call')")
    assert after == ("exit code 0\n--- stdout ---\nnext call", False)


async def test_without_bubblewrap_nothing_runs(tmp_path: Path) -> None:
    env = {"OSPARK_BWRAP": str(tmp_path / "no-bwrap"), "OSPARK_CODE_SCRATCH_ROOT": str(tmp_path)}
    async with tool_client("code", env) as client:
        text, is_error = await call(client, "run_python_code", code_block="print(1)")
    assert is_error
    assert "needs bubblewrap" in text and "Nothing was run: code never runs unsandboxed" in text


async def test_an_unreachable_scratch_root_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the sandbox to nobody")
    sandbox = BwrapSandbox(Limits(), scratch_root=str(tmp_path))
    try:
        with pytest.raises(ToolError, match="closed to others; set OSPARK_CODE_SCRATCH_ROOT"):
            await sandbox.run_python("print(1)")
    finally:
        await sandbox.aclose()


def test_sandbox_choice_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    monkeypatch.delenv("OSPARK_CODE_SANDBOX", raising=False)
    assert isinstance(make_sandbox(), BwrapSandbox)
    monkeypatch.setenv("OSPARK_CODE_TIMEOUT_S", "7")
    monkeypatch.setenv("E2B_API_KEY", "e2b-key")
    chosen = make_sandbox()
    assert isinstance(chosen, E2BSandbox) and chosen.limits == Limits(timeout_s=7.0)
    monkeypatch.setenv("OSPARK_CODE_SANDBOX", "bwrap")
    assert isinstance(make_sandbox(), BwrapSandbox)
    monkeypatch.delenv("E2B_API_KEY")
    monkeypatch.setenv("OSPARK_CODE_SANDBOX", "e2b")
    with pytest.raises(ToolError, match="E2B_API_KEY is not set"):
        make_sandbox()
    monkeypatch.setenv("OSPARK_CODE_SANDBOX", "docker")
    with pytest.raises(ToolError, match="must be auto, bwrap or e2b"):
        make_sandbox()
    monkeypatch.setenv("OSPARK_CODE_SANDBOX", "auto")
    monkeypatch.setenv("OSPARK_CODE_MEMORY_MB", "lots")
    with pytest.raises(ToolError, match="OSPARK_CODE_MEMORY_MB must be an integer"):
        make_sandbox()


async def test_task_files_open_read_only_at_their_own_paths(
    scratch_root: Path, tmp_path: Path
) -> None:
    """OSPARK_TASK_FILES (what the core tells a task's tool servers) is bound read-only at the
    same paths, even inside a directory closed to the sandbox user (pytest's tmp_path, like the
    upload store's); a directory, a symlink to outside and a path under /proc are left out with
    a note, and writing to a task file fails."""
    folder = tmp_path / "uploads" / "file_1"
    folder.mkdir(parents=True)
    data = folder / "sales.csv"
    data.write_text("region,total\nnorth,12\n")
    data.chmod(0o666)  # writable by anyone on the host: only the read-only bind stops a write
    directory = tmp_path / "elsewhere"
    (directory / "inside").mkdir(parents=True)
    link = folder / "hostname.txt"
    link.symlink_to("/etc/hostname")
    proc = "/proc/self/environ"
    env = {
        "OSPARK_CODE_SCRATCH_ROOT": str(scratch_root),
        "OSPARK_TASK_FILES": os.pathsep.join([str(data), str(directory), str(link), proc]),
    }
    probe = (
        "import os\n"
        f"print(open({str(data)!r}).read(), end='')\n"
        f"print([os.path.exists(p) for p in {[str(directory), str(link), str(folder)]!r}])\n"
        f"print(sorted(os.listdir({str(folder)!r})))\n"
    )
    async with tool_client("code", env) as client:
        read, read_error = await call(client, "run_python_code", code_block=probe)
        write, write_error = await call(
            client, "run_python_code", code_block=f"open({str(data)!r}, 'a').write('x')"
        )
        shell, _ = await call(client, "run_command", command=f"wc -l < {data}")
    notes = (
        f"task file {directory} is not available in the sandbox: a directory; only regular "
        f"files are bound; task file {link} is not available in the sandbox: a symbolic link or "
        f"a path through one (only the file's own path is bound); task file {proc} is not "
        "available in the sandbox: a symbolic link or a path through one (only the file's own "
        "path is bound)"
    )
    assert not read_error
    assert read == (
        f"exit code 0 ({notes})\n--- stdout ---\nregion,total\nnorth,12\n"
        "[False, False, True]\n['sales.csv']"
    )
    assert not write_error and write.startswith(f"exit code 1 ({notes})")
    assert "OSError: [Errno 30] Read-only file system" in write
    assert data.read_text() == "region,total\nnorth,12\n"  # untouched on the host
    assert shell.endswith("--- stdout ---\n2")


async def test_a_task_file_the_sandbox_user_cannot_read_is_left_out(
    scratch_root: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the sandbox to nobody")
    secret = tmp_path / "secret.txt"
    secret.write_text("root only")
    secret.chmod(0o600)
    sandbox = BwrapSandbox(Limits(), scratch_root=str(scratch_root), task_files=[str(secret)])
    try:
        output = await sandbox.run_python(f"import os; print(os.path.exists({str(secret)!r}))")
    finally:
        await sandbox.aclose()
    assert output.stdout == "False\n"
    assert output.note.startswith(
        f"task file {secret} is not available in the sandbox: not readable by the sandbox user"
    )


@pytest.fixture
def shm_root(tmp_path: Path) -> Iterator[Path]:
    """A scratch root on another file system than ``tmp_path`` (``/dev/shm``)."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary directory")
    root = Path(tempfile.mkdtemp(prefix="ospark-test-code-", dir="/dev/shm"))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_task_file_on_another_file_system_is_copied_read_only(
    shm_root: Path, tmp_path: Path
) -> None:
    """With the scratch root on another file system than the file, the file cannot be
    hard-linked: it is staged as a read-only copy, and opens at its own path all the same."""
    data = tmp_path / "report.txt"
    data.write_text("copied\n")
    data.chmod(0o644)
    sandbox = BwrapSandbox(Limits(), scratch_root=str(shm_root), task_files=[str(data)])
    try:
        output = await sandbox.run_python(f"print(open({str(data)!r}).read(), end='')")
        assert sandbox.scratch is not None
        staged = os.stat(sandbox.scratch.parent / "files" / "0")
        assert (staged.st_nlink, staged.st_mode & 0o777) == (1, 0o444)
    finally:
        await sandbox.aclose()
    assert (output.exit_code, output.stdout, output.note) == (0, "copied\n", "")
