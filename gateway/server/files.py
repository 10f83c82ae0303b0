"""Files with a task: ``POST /files`` (upload), ``GET /files`` (list), ``DELETE /files/{id}``.

An upload is the raw body of the request, with its ``Content-Type`` and ``?name=`` (the file
name), authenticated like the WebSocket (``Authorization: Bearer …`` or ``?token=``, the same
``Origin`` rule). It answers ``201`` with ``{"file_id", "name", "content_type", "size",
"expires_in"}``; ``start`` names the id in ``options.files`` and the agent is told the file's
path, which its reading and code tools open.

Files are stored per principal (``<root>/<hash of the principal>/<file id>/<name>``) and a
principal sees only its own: another principal's id is answered exactly like an unknown one.
They follow the task's retention: an upload is kept ``retain_s`` seconds (the task manager's
retention of finished tasks) after it was uploaded or after the last task that used it ended,
never while a task uses it. Limits, each with a clear error: ``max_file_bytes`` per file (413),
``max_files`` and ``max_bytes`` per principal (413 ``quota``), a file name of at most 255
characters without path separators (400), a ``Content-Type`` that is a real media type and not
``multipart/*`` (415: send the file's bytes as the body).

Environment: ``OSPARK_FILES_DIR`` (default: a new temporary directory per process, removed at
shutdown), ``OSPARK_MAX_FILE_BYTES`` (default 25 MiB).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.agent import TaskFile, TaskInputError
from gateway.server.auth import authenticate

__all__ = ["FileRecord", "FileStore", "FileStoreError", "file_routes"]

log = logging.getLogger("gateway.server.files")

DEFAULT_MAX_FILE_BYTES = 25 * 1024 * 1024
_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


class FileStoreError(Exception):
    """An upload or a lookup was refused; ``status`` is the HTTP status, ``code`` stable."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class FileRecord:
    """One upload."""

    file_id: str
    owner: str
    name: str
    content_type: str
    size: int
    path: Path
    created: float
    expires: float  # monotonic; ignored while ``users`` > 0
    users: int = 0

    def as_task_file(self) -> TaskFile:
        return TaskFile(self.path, self.name, self.content_type, self.size, self.file_id)

    def public(self, now: float) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "name": self.name,
            "content_type": self.content_type,
            "size": self.size,
            "expires_in": None if self.users else max(0.0, round(self.expires - now, 3)),
        }


@dataclass
class FileStore:
    """Uploaded files per principal (see the module docstring); a :class:`FileSource`."""

    root: Path | None
    """Where files are stored; ``None``: a temporary directory made on the first upload."""
    retain_s: float = 3600.0
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_files: int = 100
    """Files kept per principal."""
    max_bytes: int = 500 * 1024 * 1024
    """Bytes kept per principal."""
    owns_root: bool = False
    """Remove ``root`` itself on :meth:`close` (a temporary directory of our own)."""
    _files: dict[str, FileRecord] = field(default_factory=dict, init=False)

    @classmethod
    def from_env(cls, retain_s: float = 3600.0, env: dict[str, str] | None = None) -> FileStore:
        env = dict(os.environ) if env is None else env
        max_bytes = int(env.get("OSPARK_MAX_FILE_BYTES") or DEFAULT_MAX_FILE_BYTES)
        configured = env.get("OSPARK_FILES_DIR")
        if configured:
            root = Path(configured) / "ospark-files"
            # Our own sub-directory: what a previous process left there has no record any more.
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
            return cls(root, retain_s, max_bytes)
        return cls(None, retain_s, max_bytes, owns_root=True)

    def close(self) -> None:
        """Remove every stored file (server shutdown)."""
        self._files.clear()
        if self.root is None:
            return
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.root.is_dir():
            for child in self.root.iterdir():
                shutil.rmtree(child, ignore_errors=True)

    # -- the agent side (FileSource)

    def acquire(self, owner: str, file_ids: Sequence[str]) -> list[TaskFile]:
        self.prune()
        records = []
        for file_id in file_ids:
            record = self._files.get(file_id)
            if record is None or record.owner != owner:
                raise TaskInputError(f"unknown file {file_id!r} (upload it with POST /files)")
            records.append(record)
        for record in records:
            record.users += 1
        return [r.as_task_file() for r in records]

    def release(self, owner: str, file_ids: Sequence[str]) -> None:
        now = time.monotonic()
        for file_id in file_ids:
            record = self._files.get(file_id)
            if record is not None and record.owner == owner and record.users > 0:
                record.users -= 1
                record.expires = now + self.retain_s

    # -- the HTTP side

    def list(self, owner: str) -> list[FileRecord]:
        self.prune()
        return [r for r in self._files.values() if r.owner == owner]

    def get(self, owner: str, file_id: str) -> FileRecord:
        record = self._files.get(file_id)
        if record is None or record.owner != owner:
            raise FileStoreError(404, "unknown_file", f"no file {file_id!r}")
        return record

    def delete(self, owner: str, file_id: str) -> None:
        record = self.get(owner, file_id)
        if record.users:
            raise FileStoreError(409, "in_use", "a running task uses this file")
        self._remove(record)

    def prune(self) -> None:
        """Drop the files whose retention is over."""
        now = time.monotonic()
        for record in [r for r in self._files.values() if not r.users and r.expires <= now]:
            self._remove(record)

    def _remove(self, record: FileRecord) -> None:
        self._files.pop(record.file_id, None)
        shutil.rmtree(record.path.parent, ignore_errors=True)

    def _owner_dir(self, owner: str) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="ospark-files-"))
        return self.root / hashlib.sha256(owner.encode()).hexdigest()[:32]

    def check_upload(self, owner: str, name: str, content_type: str, length: int | None) -> None:
        """Refuse an upload before reading its body, when its headers already say why."""
        if not name or len(name) > 255 or "/" in name or "\\" in name or name in (".", ".."):
            raise FileStoreError(
                400, "bad_name", "give the file name as ?name=… (no path, at most 255 characters)"
            )
        if any(ord(c) < 32 for c in name):
            raise FileStoreError(400, "bad_name", "the file name has control characters")
        media = content_type.split(";", 1)[0].strip().lower()
        if not _MEDIA_TYPE.match(media):
            raise FileStoreError(415, "bad_content_type", "send the file's Content-Type")
        if media.startswith("multipart/"):
            raise FileStoreError(
                415, "bad_content_type", "send the file's bytes as the request body, not a form"
            )
        if length is not None and length > self.max_file_bytes:
            raise self._too_large()
        self.prune()
        mine = [r for r in self._files.values() if r.owner == owner]
        if len(mine) >= self.max_files:
            raise FileStoreError(
                413, "quota", f"at most {self.max_files} files are kept per principal"
            )
        if length is not None and sum(r.size for r in mine) + length > self.max_bytes:
            raise FileStoreError(
                413, "quota", f"at most {self.max_bytes} bytes of files are kept per principal"
            )

    def _too_large(self) -> FileStoreError:
        return FileStoreError(
            413, "too_large", f"a file may have at most {self.max_file_bytes} bytes"
        )

    async def upload(
        self, owner: str, name: str, content_type: str, request: Request
    ) -> FileRecord:
        """Store the body of ``request`` (streamed, never more than the limit in memory)."""
        file_id = f"file_{secrets.token_urlsafe(18)}"
        directory = self._owner_dir(owner) / file_id
        path = directory / name
        await asyncio.to_thread(directory.mkdir, parents=True)
        size = 0
        try:
            handle = await asyncio.to_thread(path.open, "wb")
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_file_bytes:
                        raise self._too_large()
                    if chunk:
                        await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
            mine = sum(r.size for r in self._files.values() if r.owner == owner)
            if mine + size > self.max_bytes:
                raise FileStoreError(
                    413, "quota", f"at most {self.max_bytes} bytes of files are kept per principal"
                )
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            raise
        media = content_type.split(";", 1)[0].strip().lower()
        now = time.monotonic()
        record = FileRecord(
            file_id, owner, name, media, size, path, time.time(), now + self.retain_s
        )
        self._files[file_id] = record
        return record


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _store(request: Request) -> FileStore:
    store: FileStore | None = getattr(request.app.state, "files", None)
    if store is None:
        raise FileStoreError(404, "no_files", "this server takes no files")
    return store


def _principal(request: Request) -> str:
    settings = request.app.state.gateway.settings
    auth = authenticate(request.headers, request.query_params, settings)
    if auth.principal is None:
        raise FileStoreError(401, "unauthorized", auth.reason)
    return auth.principal


async def upload_file(request: Request) -> Response:
    """``POST /files?name=report.pdf`` with the file as the body."""
    try:
        owner = _principal(request)
        store = _store(request)
        name = request.query_params.get("name", "")
        content_type = request.headers.get("content-type", "")
        length_header = request.headers.get("content-length")
        try:
            length = int(length_header) if length_header is not None else None
        except ValueError:
            return _error(400, "bad_length", "Content-Length is not a number")
        store.check_upload(owner, name, content_type, length)
        record = await store.upload(owner, name, content_type, request)
    except FileStoreError as exc:
        return _error(exc.status, exc.code, exc.message)
    except ClientDisconnect:
        return Response(status_code=400)
    return JSONResponse(record.public(time.monotonic()), status_code=201)


async def list_files(request: Request) -> Response:
    """``GET /files``: this principal's files."""
    try:
        owner = _principal(request)
        store = _store(request)
    except FileStoreError as exc:
        return _error(exc.status, exc.code, exc.message)
    now = time.monotonic()
    return JSONResponse({"files": [r.public(now) for r in store.list(owner)]})


async def delete_file(request: Request) -> Response:
    """``DELETE /files/{file_id}``."""
    try:
        owner = _principal(request)
        store = _store(request)
        store.delete(owner, request.path_params["file_id"])
    except FileStoreError as exc:
        return _error(exc.status, exc.code, exc.message)
    return Response(status_code=204)


def file_routes() -> list[Route]:
    """The routes to mount; the app needs ``app.state.files`` (a :class:`FileStore`)."""
    return [
        Route("/files", upload_file, methods=["POST"]),
        Route("/files", list_files, methods=["GET"]),
        Route("/files/{file_id}", delete_file, methods=["DELETE"]),
    ]
