"""Where the code tool runs code: a local bubblewrap sandbox, or an E2B cloud sandbox.

The local sandbox (``bwrap``, Debian package ``bubblewrap``) is a separate process tree with:

- **no network**: a new network namespace holding only its own loopback;
- **its own file system view**: ``/usr`` (and the ``/bin``, ``/lib`` links) read-only, a fresh
  ``/proc`` and ``/dev``, a small private ``/tmp`` (tmpfs), and one read/write scratch directory
  per server process (one per task) at ``/scratch``, its working directory and ``HOME``; the
  root is read-only and nothing else of the host is visible, so writing anywhere else fails;
- **the task's files** (``OSPARK_TASK_FILES``, the absolute paths the agent is told, separated
  by ``os.pathsep``) each bound read-only at the same path, so that path opens inside too. Only
  regular files at canonical paths are bound: a directory, a device, a symbolic link (or a path
  through one), a path under ``/proc``, ``/sys``, ``/dev`` or the sandbox's own mounts, or a
  file the sandbox user may not read is left out, with a note in every result. At the first
  run each file is opened (no symlink following), checked on that open file, and staged in the
  task's work directory by a hard link to it (a copy across file systems), so a path swapped
  after the check changes nothing and the files may sit in a directory the sandbox user cannot
  enter (the upload store's);
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
MiroFlow uses, through the ``e2b-code-interpreter`` SDK (``pip install 'ospark-gateway[e2b]'``),
with the task's files uploaded at their own paths (see :class:`E2BSandbox`).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import anyio
import anyio.to_thread

from ._common import Finished, ToolError, env_float, env_int, env_str, run_bounded, truncate

log = logging.getLogger("gateway.tools.sandbox")

SCRATCH = "/scratch"
INPUT = "/input"
_CODE_FILE = "/run/ospark/main.py"
_RUN_DIR = "/run/ospark"
# Where a task file is never bound: the host's kernel interfaces, and what the sandbox mounts.
_RESERVED = ("/proc", "/sys", "/dev", SCRATCH, INPUT, _RUN_DIR)

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


class _Mount(NamedTuple):
    source: Path
    """The staged file in the task's work directory."""
    path: str
    """Where it appears inside the sandbox: its own host path."""


def task_file_paths() -> list[str]:
    """The task's files from ``OSPARK_TASK_FILES`` (``os.pathsep``-separated)."""
    return [p for p in env_str("OSPARK_TASK_FILES").split(os.pathsep) if p.strip()]


def _link_open_file(fd: int, target: Path) -> None:
    """Hard-link the open file ``fd`` at ``target``: ``linkat`` following ``/proc/self/fd``
    (a directory descriptor makes :func:`os.link` use ``linkat`` with ``AT_SYMLINK_FOLLOW``)."""
    directory = os.open(target.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", target.name, dst_dir_fd=directory)
    finally:
        os.close(directory)


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + "/")


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
        task_files: Sequence[str] | None = None,
    ) -> None:
        self.limits = limits
        self.bwrap = bwrap or env_str("OSPARK_BWRAP", "bwrap")
        self.python = python or env_str("OSPARK_SANDBOX_PYTHON") or _default_python()
        self._scratch_root = scratch_root or env_str("OSPARK_CODE_SCRATCH_ROOT") or None
        self.input_dir = input_dir or env_str("OSPARK_CODE_INPUT_DIR") or None
        self.task_files = task_file_paths() if task_files is None else list(task_files)
        self._identity = _sandbox_identity()
        self.shell = "/bin/bash" if os.access("/usr/bin/bash", os.X_OK) else "/bin/sh"
        self._workdir: Path | None = None
        self._runs = 0
        self._checked = False
        self._mounts: list[_Mount] | None = None
        self._mount_notes: list[str] = []
        self._staging = anyio.Lock()

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

    def _stage_task_file(self, path: str, target: Path) -> _Mount | str:
        """The checked task file staged at ``target``, or why it is left out of the sandbox."""
        opened = _open_task_file(path, _RESERVED, "bound")
        if isinstance(opened, str):
            return opened
        fd, info = opened
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != path:
                raise ValueError("it changed while it was checked")
            if self._identity is not None:
                uid, gid = self._identity
                readable = (
                    (info.st_uid == uid and info.st_mode & stat.S_IRUSR)
                    or (info.st_gid == gid and info.st_mode & stat.S_IRGRP)
                    or info.st_mode & stat.S_IROTH
                )
                if not readable:
                    raise ValueError(f"not readable by the sandbox user (uid {uid})")
            try:  # the very file that was checked, whatever its path points at now
                _link_open_file(fd, target)
            except OSError:  # another file system, or not ours to link: a read-only copy
                with open(target, "xb") as out:
                    while os.sendfile(out.fileno(), fd, None, 1 << 20):
                        pass
                target.chmod(0o444)
        except (OSError, ValueError) as exc:
            target.unlink(missing_ok=True)
            return str(exc.strerror if isinstance(exc, OSError) else exc)
        finally:
            os.close(fd)
        return _Mount(target, path)

    def _task_mounts(self, workdir: Path) -> tuple[list[_Mount], list[str]]:
        """The task files to bind (staged once per server), and a note for each left out."""
        if self._mounts is None:
            mounts: list[_Mount] = []
            notes: list[str] = []
            staging = workdir / "files"
            staging.mkdir(mode=0o711, exist_ok=True)
            staging.chmod(0o711)  # the sandbox user passes through, cannot list or write
            for index, path in enumerate(dict.fromkeys(self.task_files)):
                staged = self._stage_task_file(path, staging / str(index))
                if isinstance(staged, str):
                    notes.append(f"task file {path} is not available in the sandbox: {staged}")
                else:
                    mounts.append(staged)
            self._mounts, self._mount_notes = mounts, notes
        return self._mounts, self._mount_notes

    def _argv(
        self, program: list[str], code_file: Path | None, mounts: Sequence[_Mount] = ()
    ) -> list[str]:
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
        for mount in mounts:
            argv += ["--ro-bind", str(mount.source), mount.path]
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
        probe, _ = await self._execute(["/bin/true"], None, check=False)
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
    ) -> tuple[Finished, list[str]]:
        if check:
            await self._check()
        workdir = self._prepare()
        # Staging may copy a file (across file systems): off the event loop.
        mounts: list[_Mount] = []
        notes: list[str] = []
        if check:
            async with self._staging:  # once, even when calls come at the same time
                mounts, notes = await anyio.to_thread.run_sync(self._task_mounts, workdir)
        code_file: Path | None = None
        if code is not None:
            self._runs += 1
            code_file = workdir / "run" / f"main-{self._runs}.py"
            code_file.write_text(code, encoding="utf-8")
            if self._identity is not None:
                os.chown(code_file, *self._identity)
        uid, gid = self._identity if self._identity is not None else (None, None)
        try:
            finished = await run_bounded(
                self._argv(program, code_file, mounts),
                timeout_s=self.limits.timeout_s,
                max_output_bytes=self.limits.max_output_chars * 4 + 4096,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                user=uid,
                group=gid,
            )
            return finished, notes
        finally:
            if code_file is not None:
                code_file.unlink(missing_ok=True)

    def _output(self, executed: tuple[Finished, list[str]]) -> RunOutput:
        finished, notes = executed
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
        return RunOutput(code, stdout, stderr, "; ".join(filter(None, [note, *notes])))

    async def run_python(self, code: str) -> RunOutput:
        return self._output(await self._execute([self.python, "-B", _CODE_FILE], code))

    async def run_shell(self, command: str) -> RunOutput:
        return self._output(await self._execute([self.shell, "-c", command], None))

    async def aclose(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


E2B_FILE_USER = "root"
"""Task files are written into an E2B sandbox as root: its default user (``user``) can read them
but not change them. E2B has no read-only mounts for uploads, and that user has ``sudo`` there,
so this keeps a program from changing them by mistake, not by intent."""


def _open_task_file(
    path: str, reserved: tuple[str, ...], verb: str, used: str | None = None
) -> tuple[int, os.stat_result] | str:
    """A task file opened for reading (without following a link) with its status, or why it
    is left out: not absolute, not canonical (a link or a path through one), under one of the
    ``reserved`` directories, or not a regular file (only regular files are ``verb``)."""
    if not os.path.isabs(path):
        return "not an absolute path"
    try:
        canonical = os.path.realpath(path, strict=True)
    except OSError as exc:
        return f"cannot be opened ({exc.strerror or exc})"
    if canonical != path:
        return f"a symbolic link or a path through one (only the file's own path is {used or verb})"
    if any(_under(path, r) for r in reserved):
        return "under a directory the sandbox provides itself"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot be opened ({exc.strerror or exc})"
    try:
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        return f"cannot be opened ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return f"{kind}; only regular files are {verb}"
    return fd, info


def _read_task_file(path: str, max_bytes: int) -> bytes | str:
    """A task file's bytes for an upload, or why it is left out (the local sandbox's rules:
    an absolute, canonical path to a regular file), opened without following a link."""
    opened = _open_task_file(path, ("/proc", "/sys", "/dev"), "uploaded", used="used")
    if isinstance(opened, str):
        return opened
    fd, info = opened
    try:
        if info.st_size > max_bytes:
            return f"larger than the {max_bytes // (1024 * 1024)} MB file limit"
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                return f"larger than the {max_bytes // (1024 * 1024)} MB file limit"
        return b"".join(chunks)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    finally:
        os.close(fd)


class E2BSandbox:
    """Runs code in an E2B cloud sandbox (one per server process, so one per task), created on
    first use with the task's files uploaded at their own paths, and killed by :meth:`aclose`.

    A run that is cancelled or hits its time limit may still be running over there, so the
    sandbox is killed at once and the next call starts a fresh one (files uploaded again; what
    earlier calls left in it is gone). Settings: ``OSPARK_E2B_TEMPLATE`` (the sandbox template;
    default: the SDK's code interpreter template), ``OSPARK_E2B_SANDBOX_TIMEOUT_S`` (how long
    the sandbox may live, 1800 s). The SDK's own variables (``E2B_DOMAIN``, ``E2B_API_URL``,
    ``E2B_SANDBOX_URL``, ``E2B_HTTP_VERSION``) reach it from the environment."""

    def __init__(
        self,
        limits: Limits,
        api_key: str,
        *,
        template: str | None = None,
        lifetime_s: int | None = None,
        task_files: Sequence[str] | None = None,
    ) -> None:
        self.limits = limits
        self._api_key = api_key
        self.template = template or env_str("OSPARK_E2B_TEMPLATE") or None
        self.lifetime_s = lifetime_s or env_int("OSPARK_E2B_SANDBOX_TIMEOUT_S", 1800)
        self.task_files = task_file_paths() if task_files is None else list(task_files)
        self._sandbox: Any = None
        self._notes: list[str] = []
        self._creating = anyio.Lock()

    async def _get(self) -> Any:
        async with self._creating:  # one sandbox, even when calls come at the same time
            if self._sandbox is None:
                try:
                    from e2b_code_interpreter import AsyncSandbox
                except ImportError:
                    raise ToolError(
                        "E2B is selected but its SDK is not installed: "
                        "pip install 'ospark-gateway[e2b]'"
                    ) from None
                try:
                    sandbox = await AsyncSandbox.create(
                        template=self.template, timeout=self.lifetime_s, api_key=self._api_key
                    )
                except Exception as exc:
                    raise ToolError(f"the E2B sandbox could not be created: {exc}") from None
                try:
                    self._notes = await self._upload(sandbox)
                except BaseException:
                    await _kill(sandbox)
                    raise
                self._sandbox = sandbox
        return self._sandbox

    async def _upload(self, sandbox: Any) -> list[str]:
        """Write the task's files into the sandbox at their own paths; a note for each one
        left out."""
        notes: list[str] = []
        limit = self.limits.max_file_mb * 1024 * 1024
        for path in dict.fromkeys(self.task_files):
            data = await anyio.to_thread.run_sync(_read_task_file, path, limit)
            if isinstance(data, str):
                notes.append(f"task file {path} is not available in the sandbox: {data}")
                continue
            try:
                await sandbox.files.write(path, data, user=E2B_FILE_USER)
            except Exception as exc:
                notes.append(f"task file {path} could not be uploaded to the sandbox: {exc}")
        return notes

    async def _discard(self) -> None:
        """Kill the sandbox (shielded: also while the call is being cancelled)."""
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            await _kill(sandbox)

    async def _run(self, how: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """``await work(sandbox)``. A cancelled call kills the sandbox; a time-out kills it and
        returns ``None``; a shell command's non-zero exit is returned; another SDK error is a
        tool error (and a sandbox that is gone or unreachable is replaced at the next call)."""
        from e2b import (
            CommandExitException,
            SandboxNotRunningException,
            SandboxUnreachableException,
            TimeoutException,
        )

        sandbox = await self._get()
        try:
            return await work(sandbox)
        except anyio.get_cancelled_exc_class():
            await self._discard()
            raise
        except CommandExitException as exc:
            return exc
        except (SandboxNotRunningException, SandboxUnreachableException) as exc:
            await self._discard()
            raise ToolError(f"the E2B sandbox failed to {how}: {exc}") from None
        except TimeoutException:
            await self._discard()
            return None
        except Exception as exc:
            raise ToolError(f"the E2B sandbox failed to {how}: {exc}") from None

    def _note(self, extra: str = "") -> str:
        return "; ".join(filter(None, [extra or "E2B sandbox", *self._notes]))

    def _timed_out(self) -> RunOutput:
        return RunOutput(
            None,
            "",
            "",
            self._note(
                f"killed after the {self.limits.timeout_s:g} s time limit: the E2B sandbox "
                "was discarded, the next call gets a new one"
            ),
        )

    async def run_python(self, code: str) -> RunOutput:
        execution = await self._run(
            "run the code",
            lambda sandbox: sandbox.run_code(code, timeout=self.limits.timeout_s),
        )
        if execution is None:
            return self._timed_out()
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
            self._note(),
        )

    async def run_shell(self, command: str) -> RunOutput:
        result = await self._run(
            "run the command",
            lambda sandbox: sandbox.commands.run(command, timeout=self.limits.timeout_s),
        )
        if result is None:
            return self._timed_out()
        limit = self.limits.max_output_chars
        return RunOutput(
            int(getattr(result, "exit_code", 1) or 0),
            truncate(str(getattr(result, "stdout", "") or ""), limit, "stdout"),
            truncate(str(getattr(result, "stderr", "") or ""), limit, "stderr"),
            self._note(),
        )

    async def aclose(self) -> None:
        await self._discard()


async def _kill(sandbox: Any) -> None:
    """Kill an E2B sandbox, shielded from cancellation and bounded; a failure is only logged
    (E2B ends it anyway at its lifetime)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(30):
        try:
            await sandbox.kill()
        except Exception as exc:
            log.warning(
                "could not kill E2B sandbox %s: %s", getattr(sandbox, "sandbox_id", "?"), exc
            )


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
