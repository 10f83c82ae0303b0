"""The reading tool: a file or a URL as text — PDF, Word, Excel, PowerPoint, HTML, plain text.

``python -m gateway.tools.reading`` serves ``read_file(uri)`` over stdio. ``uri`` is a path, a
``file:`` URI, a ``data:`` URI or an ``http(s)://`` URL. Plain text (``.txt``, ``.md``, ``.csv``,
``.json``, …) is decoded directly; every other format goes through markitdown in a worker
process (:mod:`gateway.tools._convert`) with a deadline and a memory cap, killed when the deadline
passes or the request is cancelled, so a hostile document costs the task its time limit and no
more.

Limits (environment, with defaults): ``OSPARK_READING_MAX_BYTES`` (20 MB per document),
``OSPARK_READING_MAX_CHARS`` (50,000 characters returned, then a truncation note),
``OSPARK_READING_TIMEOUT_S`` (60 s per conversion), ``OSPARK_READING_MEMORY_MB`` (1024 MB for
the worker beyond its own code).

What it may open: local files only under ``OSPARK_READING_ROOTS`` (directories separated by
``:``, default: the server's working directory), never a hidden file or directory (``.env``,
``.ssh``) unless ``OSPARK_READING_ALLOW_HIDDEN=1``; URLs only on public addresses unless
``OSPARK_READING_ALLOW_PRIVATE=1`` (so a model cannot make it read ``localhost`` services or a
cloud metadata endpoint). Every refusal is a clear tool error.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import mimetypes
import os
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp.server.mcpserver import MCPServer

from ._common import ToolError, env_float, env_int, env_str, kill_group, truncate
from ._http import fetch

TEXT_EXTENSIONS = frozenset(
    {
        ".txt",
        ".md",
        ".markdown",
        ".rst",
        ".csv",
        ".tsv",
        ".json",
        ".jsonl",
        ".yaml",
        ".yml",
        ".toml",
        ".ini",
        ".cfg",
        ".log",
        ".py",
        ".js",
        ".ts",
        ".sh",
        ".sql",
        ".xml",
        ".tex",
    }
)


@dataclass(frozen=True, slots=True)
class Settings:
    max_bytes: int
    max_chars: int
    timeout_s: float
    memory_mb: int

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            max_bytes=env_int("OSPARK_READING_MAX_BYTES", 20 * 1024 * 1024),
            max_chars=env_int("OSPARK_READING_MAX_CHARS", 50_000),
            timeout_s=env_float("OSPARK_READING_TIMEOUT_S", 60.0),
            memory_mb=env_int("OSPARK_READING_MEMORY_MB", 1024, minimum=64),
        )


# --- where documents may come from ------------------------------------------------------------


def _roots() -> list[Path]:
    raw = env_str("OSPARK_READING_ROOTS")
    entries = [p for p in raw.split(":") if p] if raw else [os.getcwd()]
    return [Path(p).resolve() for p in entries]


def local_path(text: str) -> Path:
    """The file ``text`` names, if reading it is allowed (see the module docstring)."""
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ToolError(f"only local file: URIs can be read, not {text!r}")
        text = unquote(parts.path)
    path = Path(text).expanduser()
    roots = _roots()
    if not path.is_absolute():
        path = roots[0] / path
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise ToolError(f"{text!r} is outside the directories this tool may read ({shown})")
    root = next(r for r in roots if resolved.is_relative_to(r))
    hidden = [p for p in resolved.relative_to(root).parts if p.startswith(".")]
    if hidden and env_str("OSPARK_READING_ALLOW_HIDDEN") != "1":
        raise ToolError(f"{text!r} is a hidden file or inside a hidden directory; not read")
    if not resolved.exists():
        raise ToolError(f"no such file: {text!r}")
    if not resolved.is_file():
        raise ToolError(f"not a regular file: {text!r}")
    return resolved


async def public_only(url: str) -> None:
    """Refuse a URL whose host resolves to a loopback, private, link-local or reserved
    address, unless ``OSPARK_READING_ALLOW_PRIVATE=1``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"not a web address (http:// or https://): {url!r}")
    if env_str("OSPARK_READING_ALLOW_PRIVATE") == "1":
        return
    try:
        addresses = [ipaddress.ip_address(parts.hostname)]
    except ValueError:  # a name, not an address literal
        try:
            infos = await anyio.getaddrinfo(
                parts.hostname, parts.port or 443, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ToolError(f"cannot resolve {parts.hostname!r}: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    for address in addresses:
        if not address.is_global:
            raise ToolError(
                f"{url} points to a non-public address ({address}); refused "
                "(OSPARK_READING_ALLOW_PRIVATE=1 allows it)"
            )


def _data_uri(uri: str, max_bytes: int) -> tuple[bytes, str]:
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise ToolError("a data: URI needs a comma before its payload")
    if len(payload) > max_bytes * 2:
        raise ToolError(f"the data: URI is larger than the limit of {max_bytes:,} bytes")
    fields = header.split(";")
    mimetype = fields[0] or "text/plain"
    try:
        data = (
            base64.b64decode(payload, validate=False)
            if "base64" in fields[1:]
            else unquote_to_bytes(payload)
        )
    except ValueError as exc:
        raise ToolError(f"the data: URI does not decode: {exc}") from None
    if len(data) > max_bytes:
        raise ToolError(f"the data: URI is larger than the limit of {max_bytes:,} bytes")
    return data, mimetype


# --- the conversion worker --------------------------------------------------------------------


class Worker:
    """One markitdown worker process, started on first use and replaced after a kill."""

    def __init__(self) -> None:
        self._process: Process | None = None
        self._reader: BufferedByteReceiveStream | None = None
        self._lock = anyio.Lock()
        self.started = 0  # how many worker processes were started (for tests)

    async def _start(self, settings: Settings) -> tuple[Process, BufferedByteReceiveStream]:
        if self._process is None or self._process.returncode is not None:
            process = await anyio.open_process(
                [sys.executable, "-m", "gateway.tools._convert", str(settings.memory_mb)],
                start_new_session=True,
                stderr=None,
            )
            self.started += 1
            assert process.stdout is not None
            self._process, self._reader = process, BufferedByteReceiveStream(process.stdout)
            await self._line(settings.max_chars)  # {"ready": true}, after the import
        assert self._process is not None and self._reader is not None
        return self._process, self._reader

    async def _line(self, max_chars: int) -> dict[str, Any]:
        assert self._reader is not None
        try:
            raw = await self._reader.receive_until(b"\n", max_chars * 8 + 65536)
        except (anyio.EndOfStream, anyio.IncompleteRead):
            raise ToolError("the conversion worker stopped (out of memory?)") from None
        reply = json.loads(raw)
        if not isinstance(reply, dict):
            raise ToolError("the conversion worker answered nonsense")
        return reply

    async def discard(self) -> None:
        """Kill the worker (its whole group) and reap it; the next request starts a new one."""
        process, self._process, self._reader = self._process, None, None
        if process is not None:
            kill_group(process.pid)
            with anyio.CancelScope(shield=True):
                await process.wait()
                await process.aclose()

    async def convert(
        self, path: Path, extension: str, mimetype: str, url: str | None, settings: Settings
    ) -> tuple[str, int]:
        """The document's markdown (cut to ``max_chars``) and its full length."""
        request = {
            "path": str(path),
            "extension": extension,
            "mimetype": mimetype,
            "url": url,
            "max_chars": settings.max_chars,
        }
        async with self._lock:
            done = False
            try:
                with anyio.move_on_after(settings.timeout_s):
                    process, _ = await self._start(settings)
                    assert process.stdin is not None
                    await process.stdin.send((json.dumps(request) + "\n").encode())
                    reply = await self._line(settings.max_chars)
                    done = True
            finally:
                if not done:  # deadline, cancellation or a broken worker: start afresh next time
                    await self.discard()
        if not done:
            raise ToolError(f"reading the document took longer than {settings.timeout_s:g} s")
        if not reply.get("ok"):
            raise ToolError(str(reply.get("error") or "conversion failed"))
        return str(reply.get("text", "")), int(reply.get("chars", 0))

    async def aclose(self) -> None:
        await self.discard()


_worker = Worker()


@contextlib.asynccontextmanager
async def _lifespan(_: MCPServer[Any]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await _worker.aclose()


server: MCPServer[None] = MCPServer(
    "reading",
    instructions="Read documents (PDF, Office, HTML, text) from files or URLs as markdown text.",
    log_level="WARNING",
    lifespan=_lifespan,
)


def _is_text(extension: str, mimetype: str) -> bool:
    if extension in TEXT_EXTENSIONS:
        return True
    return mimetype.startswith("text/") and mimetype not in ("text/html", "text/xml")


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ():
        with contextlib.suppress(UnicodeDecodeError):
            return data.decode(encoding)
    return data.decode("utf-8", errors="replace")


def _render(text: str, total: int, limit: int, source: str) -> str:
    if not text.strip():
        return f"(the document {source} has no text)"
    return truncate(text, limit, "document", max(0, total - len(text)))


async def read_document(uri: str, settings: Settings | None = None) -> str:
    """The text of ``uri`` (the tool's logic, without the MCP layer)."""
    settings = settings or Settings.from_env()
    uri = uri.strip()
    if not uri:
        raise ToolError("uri is empty")
    url: str | None = None
    mimetype = ""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme not in ("http", "https", "file"):
        raise ToolError(
            f"cannot read {scheme}:// addresses: give a path, a file: or data: URI, "
            "or an http(s):// URL (not a web address it can fetch)"
        )
    if uri.startswith(("http://", "https://")):
        response = await fetch(
            "GET",
            uri,
            service="reading",
            timeout_s=settings.timeout_s,
            max_bytes=settings.max_bytes,
            guard=public_only,
        )
        if response.status >= 400:
            raise ToolError(f"{uri} answered HTTP {response.status}")
        data, url = response.body, response.url
        mimetype = response.content_type.split(";", 1)[0].strip().lower()
        extension = Path(urlsplit(url).path).suffix.lower()
        if mimetype and mimetypes.guess_extension(mimetype):
            extension = mimetypes.guess_extension(mimetype) or extension
    elif uri.startswith("data:"):
        data, mimetype = _data_uri(uri, settings.max_bytes)
        extension = mimetypes.guess_extension(mimetype) or ""
    else:
        path = local_path(uri)
        size = path.stat().st_size
        if size > settings.max_bytes:
            raise ToolError(
                f"{uri} is {size:,} bytes, more than the limit of {settings.max_bytes:,}"
            )
        extension = path.suffix.lower()
        mimetype = mimetypes.guess_type(path.name)[0] or ""
        if _is_text(extension, mimetype):
            text = _decode(await anyio.Path(path).read_bytes())
            return _render(text[: settings.max_chars], len(text), settings.max_chars, uri)
        text, total = await _worker.convert(path, extension, mimetype, None, settings)
        return _render(text, total, settings.max_chars, uri)
    if _is_text(extension, mimetype):
        text = _decode(data)
        return _render(text[: settings.max_chars], len(text), settings.max_chars, uri[:200])
    with tempfile.TemporaryDirectory(prefix="ospark-reading-") as tmp:
        path = Path(tmp) / f"document{extension}"
        await anyio.Path(path).write_bytes(data)
        text, total = await _worker.convert(path, extension, mimetype, url, settings)
    return _render(text, total, settings.max_chars, uri[:200])


@server.tool()
async def read_file(uri: str) -> str:
    """Read a document and return its content as markdown text: PDF, Word (.docx), Excel
    (.xlsx), PowerPoint (.pptx), HTML, CSV, JSON or plain text.

    Args:
        uri: a local file path, a file: or data: URI, or an http(s):// URL.
    """
    return await read_document(uri)


def main() -> None:
    server.run("stdio")


if __name__ == "__main__":
    main()
