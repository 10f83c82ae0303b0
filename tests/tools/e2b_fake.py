"""A small fake of E2B on 127.0.0.1, speaking enough of its HTTP API for the real SDK
(``e2b-code-interpreter``) that the code tool uses: create and kill a sandbox (the control-plane
API), write files (the sandbox daemon's ``/files``) and run code (the code interpreter's streamed
``/execute``), and start a shell command (the daemon's Connect RPC ``process.Process/Start``,
JSON codec, server streaming). It runs nothing: each ``/execute`` answers with the next scripted
output lines, each command with the next scripted ``(stdout, stderr, exit code)``.

Point the SDK at it with ``E2B_API_URL`` and ``E2B_SANDBOX_URL`` (both this server; the SDK
tells the sandbox's two services apart by its ``E2b-Sandbox-Port`` header) and
``E2B_HTTP_VERSION=1.1`` (plain HTTP here)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ENVD_PORT = "49983"
JUPYTER_PORT = "49999"
HANG = "# hang"
"""Code containing this never finishes: the answer streams nothing until the client leaves."""


def stdout(text: str) -> str:
    return json.dumps({"type": "stdout", "text": text, "timestamp": 0})


def stderr(text: str) -> str:
    return json.dumps({"type": "stderr", "text": text, "timestamp": 0})


def error(name: str, value: str) -> str:
    trace = f"Traceback (most recent call last):\n{name}: {value}"
    return json.dumps({"type": "error", "name": name, "value": value, "traceback": trace})


@dataclass
class FakeE2B:
    port: int = 0
    api_key: str = "e2b-test-key"
    created: list[dict[str, Any]] = field(default_factory=list)
    """The body of each create request."""
    killed: list[str] = field(default_factory=list)
    files: dict[str, tuple[bytes, str | None, str]] = field(default_factory=dict)
    """Path → (bytes, ``username``, sandbox id) of every file written."""
    executed: list[tuple[str, str]] = field(default_factory=list)
    """(sandbox id, code) of every ``/execute``."""
    outputs: list[list[str]] = field(default_factory=list)
    """The lines each ``/execute`` answers with, in order."""
    commands: list[tuple[str, str, str]] = field(default_factory=list)
    """(sandbox id, user, command line) of every process started."""
    command_results: list[tuple[str, str, int]] = field(default_factory=list)
    """The (stdout, stderr, exit code) each started process ends with, in order."""
    hanging: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a hanging ``/execute`` has started."""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The code tool's environment for this fake."""
        return {
            "E2B_API_KEY": self.api_key,
            "E2B_API_URL": self.url,
            "E2B_SANDBOX_URL": self.url,
            "E2B_HTTP_VERSION": "1.1",
        }

    async def until(self, predicate: Any) -> None:
        async with self.changed:
            await self.changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # --- the control plane -------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != self.api_key:
            return JSONResponse({"code": 401, "message": "Invalid API key"}, status_code=401)
        body = await request.json()
        self.created.append(body)
        await self._notify()
        return JSONResponse(
            {
                "templateID": body.get("templateID", "base"),
                "sandboxID": f"sbx{len(self.created)}",
                "clientID": "fake",
                "envdVersion": "0.6.7",
                "envdAccessToken": f"envd-token-{len(self.created)}",
            },
            status_code=201,
        )

    async def kill(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != self.api_key:
            return JSONResponse({"code": 401, "message": "Invalid API key"}, status_code=401)
        self.killed.append(request.path_params["sandbox_id"])
        await self._notify()
        return Response(status_code=204)

    # --- inside the sandbox --------------------------------------------------------------------

    def _sandbox(self, request: Request, port: str) -> str | None:
        sandbox = request.headers.get("e2b-sandbox-id", "")
        known = f"envd-token-{sandbox.removeprefix('sbx')}"
        if request.headers.get("e2b-sandbox-port") != port:
            return None
        if request.headers.get("x-access-token") != known or sandbox in self.killed:
            return None
        return sandbox

    async def write(self, request: Request) -> Response:
        sandbox = self._sandbox(request, ENVD_PORT)
        if sandbox is None:
            return JSONResponse({"code": 502, "message": "sandbox not found"}, status_code=502)
        user = request.query_params.get("username")
        written: list[dict[str, str]] = []
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form() as form:
                for _, value in form.multi_items():
                    assert isinstance(value, UploadFile) and value.filename
                    path = request.query_params.get("path") or value.filename
                    self.files[path] = (await value.read(), user, sandbox)
                    written.append({"name": path.rsplit("/", 1)[-1], "type": "file", "path": path})
        else:
            path = request.query_params["path"]
            self.files[path] = (await request.body(), user, sandbox)
            written.append({"name": path.rsplit("/", 1)[-1], "type": "file", "path": path})
        await self._notify()
        return JSONResponse(written)

    async def execute(self, request: Request) -> Response:
        sandbox = self._sandbox(request, JUPYTER_PORT)
        if sandbox is None:
            return JSONResponse({"code": 502, "message": "sandbox not found"}, status_code=502)
        code = (await request.json())["code"]
        self.executed.append((sandbox, code))
        await self._notify()
        if HANG in code:
            return StreamingResponse(self._hang(), media_type="application/x-ndjson")
        lines = self.outputs.pop(0)
        return Response("".join(line + "\n" for line in lines), media_type="application/x-ndjson")

    async def start(self, request: Request) -> Response:
        """``process.Process/Start`` in the Connect protocol: one enveloped JSON request, a
        stream of enveloped JSON events, then the end-of-stream envelope."""
        sandbox = self._sandbox(request, ENVD_PORT)
        if sandbox is None:
            return JSONResponse({"code": "unavailable", "message": "no sandbox"}, status_code=503)
        body = await request.body()
        flags, size = struct.unpack(">BI", body[:5])
        assert flags == 0 and request.headers["content-type"] == "application/connect+json"
        process = json.loads(body[5 : 5 + size])["process"]
        user = request.headers.get("authorization", "")
        self.commands.append((sandbox, user, " ".join([process["cmd"], *process.get("args", [])])))
        await self._notify()
        out, err, code = self.command_results.pop(0)
        events: list[dict[str, Any]] = [{"start": {"pid": 7}}]
        if out:
            events.append({"data": {"stdout": base64.b64encode(out.encode()).decode()}})
        if err:
            events.append({"data": {"stderr": base64.b64encode(err.encode()).decode()}})
        events.append({"end": {"exitCode": code, "exited": True, "status": f"exit status {code}"}})
        frames = [_envelope(0, {"event": event}) for event in events]
        frames.append(_envelope(2, {}))
        return Response(b"".join(frames), media_type="application/connect+json")

    async def _hang(self) -> AsyncIterator[bytes]:
        self.hanging.set()
        await asyncio.Event().wait()  # until the client goes away
        yield b""


def _envelope(flags: int, message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(data)) + data


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


@asynccontextmanager
async def fake_e2b() -> AsyncIterator[FakeE2B]:
    fake = FakeE2B()
    app = Starlette(
        routes=[
            Route("/v2/sandboxes", fake.create, methods=["POST"]),
            Route("/sandboxes/{sandbox_id}", fake.kill, methods=["DELETE"]),
            Route("/files", fake.write, methods=["POST"]),
            Route("/execute", fake.execute, methods=["POST"]),
            Route("/process.Process/Start", fake.start, methods=["POST"]),
        ]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    fake.port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", lifespan="off", http="h11", ws="none")
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield fake
    finally:
        server.should_exit = True
        server.force_exit = True  # a hanging /execute does not hold the test up
        await task
        sock.close()
