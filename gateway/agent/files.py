"""Files that come with a task: what the agent is told about them.

The core takes files like MiroFlow's ``run_main_agent(task, task_file_name, task_id)``: a local
path (``task_file_name``) or :class:`TaskFile` values (the gateway's uploads). The agent is told
each file's absolute path, name, type and size in its task message, so its reading and code
tools open it by path; the file itself is never pasted into the prompt.

:class:`FileSource` is how the streaming layer turns the file ids of a ``start`` into
:class:`TaskFile` values for one owner (the gateway's upload store implements it).
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import TaskInputError

__all__ = ["PATH_LISTS", "FileSource", "TaskFile", "describe_files", "local_file", "task_env"]

PATH_LISTS = frozenset({"OSPARK_READING_ROOTS"})
"""Variables of :func:`task_env` that extend a server's own value instead of replacing it."""


@dataclass(frozen=True, slots=True)
class TaskFile:
    """A file the agent may open: where it is and what it is."""

    path: Path
    """Absolute path on this machine."""
    name: str
    """The name it was given (an upload's file name)."""
    content_type: str = "application/octet-stream"
    size: int = 0
    file_id: str | None = None
    """The upload's id, when it came through the gateway."""


def local_file(path: str | Path) -> TaskFile:
    """A :class:`TaskFile` for a local path (MiroFlow's ``task_file_name``); raises
    :class:`TaskInputError` when there is no such file."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise TaskInputError(f"task file not found: {path}")
    content_type = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
    return TaskFile(resolved, resolved.name, content_type, resolved.stat().st_size)


def describe_files(files: Sequence[TaskFile]) -> str:
    """The note appended to the task: one line per file (empty without files)."""
    if not files:
        return ""
    lines = [
        "",
        "",
        "## Files of this task",
        "These files come with the task. Open them with your reading or code tools using the "
        "full local path given here (a sub-agent needs the full path too):",
    ]
    lines.extend(f"- {f.path} ({f.name}, {f.content_type}, {f.size:,} bytes)" for f in files)
    return "\n".join(lines)


def task_env(files: Sequence[TaskFile]) -> dict[str, str]:
    """What the task's stdio tool servers are told about its files: ``OSPARK_TASK_FILES`` (the
    paths, separated by ``os.pathsep``), and the files' directories are added to
    ``OSPARK_READING_ROOTS`` so the reading tool may open them (the tool's own roots stay)."""
    if not files:
        return {}
    directories = dict.fromkeys(str(f.path.parent) for f in files)
    return {
        "OSPARK_TASK_FILES": os.pathsep.join(str(f.path) for f in files),
        "OSPARK_READING_ROOTS": os.pathsep.join(directories),
    }


class FileSource(Protocol):
    """Uploaded files, per owner."""

    def acquire(self, owner: str, file_ids: Sequence[str]) -> list[TaskFile]:
        """The files of ``owner`` with these ids, kept until :meth:`release`; raises
        :class:`TaskInputError` naming the first id this owner has no file for (another
        owner's file looks exactly like a missing one)."""
        ...

    def release(self, owner: str, file_ids: Sequence[str]) -> None:
        """The task that acquired these files has ended: their retention clock starts."""
        ...
