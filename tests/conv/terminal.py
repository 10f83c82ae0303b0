"""A child ``ospark`` on a real pseudo-terminal, for the interactive commands' tests."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import struct
import sys
import termios
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """``ospark`` with a pty (120x40) as its stdin, stdout and stderr."""

    def __init__(self) -> None:
        self.raw = ""
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self.proc: Any = None
        self.master = -1

    async def spawn(self, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", *args,
            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.closed.set()
        self.raw += data.decode(errors="replace")
        self._changed.set()

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw)

    async def expect(self, needle: str, after: int = 0) -> int:
        """Wait until ``needle`` appears at or after ``after``; return the end of it."""
        while (at := self.text.find(needle, after)) == -1:
            assert not self.closed.is_set(), f"{needle!r} never appeared in:\n{self.text}"
            self._changed.clear()
            await self._changed.wait()
        return at + len(needle)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    async def wait(self) -> int:
        await self.closed.wait()
        code: int = await self.proc.wait()
        return code
