"""Where the code tool runs code: a local bubblewrap sandbox, or an E2B cloud sandbox.

The local sandbox (``bwrap``, Debian package ``bubblewrap``) is a separate process tree with:

- **no network**: a new network namespace holding only its own loopback;
- **its own file system view**: ``/usr`` (and the ``/bin``, ``/lib`` links) read-only, a fresh
  ``/proc`` and ``/dev``, a small private ``/tmp`` (tmpfs), and one read/write scratch directory
  per server process (one per task) at ``/scratch``, its working directory and ``HOME``; the
  root is read-only and nothing else of the host is visible, so writing anywhere else fails;
- **new user, PID, IPC, UTS and cgroup namespaces**, no capabilities, no nested user
  namespaces, a new session (no terminal injection), and ``--die-with-parent``;
- **resource limits** set inside the sandbox before the program starts: processes
  (``RLIMIT_NPROC``, so a fork bomb hits a wall), address space, CPU seconds, file size, open
  files, no core dumps; plus a wall-clock deadline after which the whole process group is killed;
- when the server runs as root, the sandbox runs as the unprivileged user ``nobody``, so
  root's exemption from the process limit does not apply.

A run that exceeds the deadline, or whose MCP request is cancelled, is killed (``SIGKILL`` to
the group; the PID namespace takes every descendant with it). Output is capped, with a note.
If ``bwrap`` is missing or cannot create its namespaces, the tool says so and runs nothing: code
is never run unsandboxed.

E2B (``E2B_API_KEY`` set, or ``OSPARK_CODE_SANDBOX=e2b``) runs the code in the cloud sandbox
MiroFlow uses, through the ``e2b-code-interpreter`` SDK (``pip install 'ospark-gateway[e2b]'``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._common import Finished, ToolError, env_float, env_int, env_str, run_bounded, truncate

SCRATCH = "/scratch"
INPUT = "/input"
_CODE_FILE = "/run/ospark/main.py"

# Runs inside the sandbox: set the limits, then become the program. Lowering limits needs no
# privilege; raising them back does, and the sandbox has none.
_LAUNCHER = (
    "import os,resource as r,sys\n"
    "a=sys.argv\n"
    "n=[int(x) for x in a[1:6]]\n"
    "r.setrlimit(r.RLIMIT_NPROC,(n[0],n[0]))\n"
    "r.setrlimit(r.RLIMIT_AS,(n[1],n[1]))\n"
    "r.setrlimit(r.RLIMIT_CPU,(n[2],n[2]+1))\n"
    "r.setrlimit(r.RLIMIT_FSIZE,(n[3],n[3]))\n"
    "r.setrlimit(r.RLIMIT_NOFILE,(n[4],n[4]))\n"
    "r.setrlimit(r.RLIMIT_CORE,(0,0))\n"
    "os.execv(a[7],a[7:])\n"
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-run limits of the code tool (each from an ``OSPARK_CODE_*`` variable)."""

    timeout_s: float = 60.0
    memory_mb: int = 1024
    max_processes: int = 64
    max_file_mb: int = 100
    max_open_files: int = 256
    tmp_mb: int = 64
    max_output_chars: int = 20_000

    @classmethod
    def from_env(cls) -> Limits:
        d = cls()
        return cls(
            timeout_s=env_float("OSPARK_CODE_TIMEOUT_S", d.timeout_s),
            memory_mb=env_int("OSPARK_CODE_MEMORY_MB", d.memory_mb, minimum=64),
            max_processes=env_int("OSPARK_CODE_MAX_PROCESSES", d.max_processes, minimum=4),
            max_file_mb=env_int("OSPARK_CODE_MAX_FILE_MB", d.max_file_mb),
            max_open_files=env_int("OSPARK_CODE_MAX_OPEN_FILES", d.max_open_files, minimum=16),
            tmp_mb=env_int("OSPARK_CODE_TMP_MB", d.tmp_mb),
            max_output_chars=env_int("OSPARK_CODE_MAX_OUTPUT_CHARS", d.max_output_chars),
        )


@dataclass(frozen=True, slots=True)
class RunOutput:
    """What a run printed and how it ended (``exit_code`` ``None``: killed at the deadline)."""

    exit_code: int | None
    stdout: str
    stderr: str
    note: str = ""

    def render(self) -> str:
        status = "timed out" if self.exit_code is None else f"exit code {self.exit_code}"
        parts = [status + (f" ({self.note})" if self.note else "")]
        if self.stdout:
            parts += ["--- stdout ---", self.stdout.rstrip("\n")]
        if self.stderr:
            parts += ["--- stderr ---", self.stderr.rstrip("\n")]
        if not self.stdout and not self.stderr:
            parts.append("(no output)")
        return "\n".join(parts)


class Sandbox(Protocol):
    async def run_python(self, code: str) -> RunOutput: ...

    async def run_shell(self, command: str) -> RunOutput: ...

    async def aclose(self) -> None: ...


def _sandbox_identity() -> tuple[int, int] | None:
    """(uid, gid) to run the sandbox as: ``nobody`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _default_python() -> str:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return "/usr/bin/python3"


class BwrapSandbox:
    """The local sandbox (see the module docstring). One per server process, so one per task:
    its scratch directory lives as long as the server and is removed by :meth:`aclose`."""

    def __init__(
        self,
        limits: Limits,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        scratch_root: str | None = None,
        input_dir: str | None = None,
    ) -> None:
        self.limits = limits
        self.bwrap = bwrap or env_str("OSPARK_BWRAP", "bwrap")
        self.python = python or env_str("OSPARK_SANDBOX_PYTHON") or _default_python()
        self._scratch_root = scratch_root or env_str("OSPARK_CODE_SCRATCH_ROOT") or None
        self.input_dir = input_dir or env_str("OSPARK_CODE_INPUT_DIR") or None
        self._identity = _sandbox_identity()
        self.shell = "/bin/bash" if os.access("/usr/bin/bash", os.X_OK) else "/bin/sh"
        self._workdir: Path | None = None
        self._runs = 0
        self._checked = False

    @property
    def scratch(self) -> Path | None:
        """The host directory mounted at ``/scratch`` (``None`` before the first run)."""
        return None if self._workdir is None else self._workdir / "scratch"

    def _prepare(self) -> Path:
        if self._workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="ospark-code-", dir=self._scratch_root))
            if self._identity is not None:
                self._check_reachable(workdir.parent)
            (workdir / "scratch").mkdir()
            (workdir / "run").mkdir()
            if self._identity is not None:
                uid, gid = self._identity
                for path in (workdir, workdir / "scratch", workdir / "run"):
                    os.chown(path, uid, gid)
            self._workdir = workdir
        return self._workdir

    def _check_reachable(self, directory: Path) -> None:
        """As root the sandbox runs as ``nobody``, who must be able to walk to the scratch
        directory: every ancestor needs the others' execute bit."""
        for path in (directory, *directory.parents):
            if not path.stat().st_mode & 0o001:
                raise ToolError(
                    f"the sandbox user (uid {self._identity[0] if self._identity else '?'}) "
                    f"cannot reach {directory}: {path} is closed to others; set "
                    "OSPARK_CODE_SCRATCH_ROOT to a directory others can traverse"
                )

    def _argv(self, program: list[str], code_file: Path | None) -> list[str]:
        workdir = self._prepare()
        lim = self.limits
        argv = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / link
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{link}"]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), f"/{link}"]
        for path in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime"):
            argv += ["--ro-bind-try", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--size", str(lim.tmp_mb * 1024 * 1024), "--tmpfs", "/tmp"]
        argv += ["--bind", str(workdir / "scratch"), SCRATCH, "--chdir", SCRATCH]
        if self.input_dir:
            argv += ["--ro-bind", self.input_dir, INPUT]
        if code_file is not None:
            argv += ["--ro-bind", str(code_file), _CODE_FILE]
        argv += ["--remount-ro", "/"]  # the sandbox's own root: no writes outside the mounts
        argv += ["--clearenv"]
        for key, value in (
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", SCRATCH),
            ("TMPDIR", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("PYTHONPATH", SCRATCH),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("PYTHONUNBUFFERED", "1"),
            ("MPLBACKEND", "Agg"),
        ):
            argv += ["--setenv", key, value]
        limits = [
            lim.max_processes,
            lim.memory_mb * 1024 * 1024,
            max(1, int(lim.timeout_s + 0.999)),
            lim.max_file_mb * 1024 * 1024,
            lim.max_open_files,
        ]
        argv += ["--", self.python, "-I", "-S", "-c", _LAUNCHER, *map(str, limits), "--"]
        return argv + program

    async def _check(self) -> None:
        """Make sure ``bwrap`` exists and can build its namespaces here (once)."""
        if self._checked:
            return
        if shutil.which(self.bwrap) is None:
            raise ToolError(
                f"the code sandbox needs bubblewrap (`{self.bwrap}` not found): install it with "
                "`apt-get install bubblewrap` (or `make sysdeps`), or set E2B_API_KEY to use an "
                "E2B cloud sandbox. Nothing was run: code never runs unsandboxed."
            )
        if not os.access(self.python, os.X_OK):
            raise ToolError(f"no Python at {self.python} for the sandbox (OSPARK_SANDBOX_PYTHON)")
        probe = await self._execute(["/bin/true"], None, check=False)
        if probe.returncode != 0:
            reason = probe.stderr.decode(errors="replace").strip() or f"exit {probe.returncode}"
            raise ToolError(
                f"the code sandbox cannot start here ({reason}); bubblewrap needs user "
                "namespaces, and the sandbox user must be able to reach the scratch directory. "
                "Nothing was run: code never runs unsandboxed."
            )
        self._checked = True

    async def _execute(
        self, program: list[str], code: str | None, *, check: bool = True
    ) -> Finished:
        if check:
            await self._check()
        workdir = self._prepare()
        code_file: Path | None = None
        if code is not None:
            self._runs += 1
            code_file = workdir / "run" / f"main-{self._runs}.py"
            code_file.write_text(code, encoding="utf-8")
            if self._identity is not None:
                os.chown(code_file, *self._identity)
        uid, gid = self._identity if self._identity is not None else (None, None)
        try:
            return await run_bounded(
                self._argv(program, code_file),
                timeout_s=self.limits.timeout_s,
                max_output_bytes=self.limits.max_output_chars * 4 + 4096,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                user=uid,
                group=gid,
            )
        finally:
            if code_file is not None:
                code_file.unlink(missing_ok=True)

    def _output(self, finished: Finished) -> RunOutput:
        lim = self.limits
        stdout = truncate(
            finished.stdout.decode("utf-8", errors="replace"),
            lim.max_output_chars,
            "stdout",
            finished.stdout_dropped,
        )
        stderr = truncate(
            finished.stderr.decode("utf-8", errors="replace"),
            lim.max_output_chars,
            "stderr",
            finished.stderr_dropped,
        )
        code = finished.returncode
        note = ""
        if code is None:
            note = f"killed after the {lim.timeout_s:g} s time limit"
        elif code in (128 + 24, -24):  # SIGXCPU
            note = f"killed: CPU time limit of {int(lim.timeout_s + 0.999)} s"
        elif code in (128 + 9, -9):
            note = "killed (SIGKILL): CPU or memory limit"
        return RunOutput(code, stdout, stderr, note)

    async def run_python(self, code: str) -> RunOutput:
        return self._output(await self._execute([self.python, "-B", _CODE_FILE], code))

    async def run_shell(self, command: str) -> RunOutput:
        return self._output(await self._execute([self.shell, "-c", command], None))

    async def aclose(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


class E2BSandbox:
    """Runs code in an E2B cloud sandbox, created on first use and killed by :meth:`aclose`."""

    def __init__(self, limits: Limits, api_key: str) -> None:
        self.limits = limits
        self._api_key = api_key
        self._sandbox: Any = None

    async def _get(self) -> Any:
        if self._sandbox is None:
            try:
                from e2b_code_interpreter import AsyncSandbox
            except ImportError:
                raise ToolError(
                    "E2B is selected but its SDK is not installed: "
                    "pip install 'ospark-gateway[e2b]'"
                ) from None
            self._sandbox = await AsyncSandbox.create(api_key=self._api_key)
        return self._sandbox

    async def run_python(self, code: str) -> RunOutput:
        sandbox = await self._get()
        execution = await sandbox.run_code(code, timeout=self.limits.timeout_s)
        stdout = "".join(execution.logs.stdout)
        stderr = "".join(execution.logs.stderr)
        for result in execution.results:
            if getattr(result, "text", None):
                stdout += f"{result.text}\n"
        if execution.error is not None:
            error = execution.error
            stderr += f"{error.name}: {error.value}\n{error.traceback}"
        limit = self.limits.max_output_chars
        return RunOutput(
            1 if execution.error is not None else 0,
            truncate(stdout, limit, "stdout"),
            truncate(stderr, limit, "stderr"),
            "E2B sandbox",
        )

    async def run_shell(self, command: str) -> RunOutput:
        sandbox = await self._get()
        try:
            result = await sandbox.commands.run(command, timeout=self.limits.timeout_s)
        except Exception as exc:  # the SDK raises on a non-zero exit, with the output attached
            result = exc
        limit = self.limits.max_output_chars
        return RunOutput(
            int(getattr(result, "exit_code", 1) or 0),
            truncate(str(getattr(result, "stdout", "") or ""), limit, "stdout"),
            truncate(str(getattr(result, "stderr", "") or str(result)), limit, "stderr"),
            "E2B sandbox",
        )

    async def aclose(self) -> None:
        if self._sandbox is not None:
            sandbox, self._sandbox = self._sandbox, None
            await sandbox.kill()


def make_sandbox() -> Sandbox:
    """The sandbox ``OSPARK_CODE_SANDBOX`` asks for: ``auto`` (default: E2B when
    ``E2B_API_KEY`` is set, else bubblewrap), ``bwrap`` or ``e2b``."""
    kind = env_str("OSPARK_CODE_SANDBOX", "auto").lower()
    if kind not in ("auto", "bwrap", "e2b"):
        raise ToolError(f"OSPARK_CODE_SANDBOX must be auto, bwrap or e2b, got {kind!r}")
    limits = Limits.from_env()
    key = env_str("E2B_API_KEY")
    if kind == "e2b" and not key:
        raise ToolError("OSPARK_CODE_SANDBOX=e2b but E2B_API_KEY is not set")
    if kind == "e2b" or (kind == "auto" and key):
        return E2BSandbox(limits, key)
    return BwrapSandbox(limits)
