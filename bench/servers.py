"""The servers under test, each run in its own process: ``python -m bench.servers KIND``.

Kinds:

- ``gateway``: the OSpark gateway with limits raised for load (every task runs at once, no start
  rate limit); ``--source replay`` replays synthetic tasks (see :mod:`bench.replay`),
  ``--source demo`` runs the real agent stack from ``--config``.
  ``--redis URL`` keeps its tasks in that Redis (Redis mode).
- ``raw``: the physical limit: a minimal Starlette WebSocket endpoint that sends pre-encoded
  event frames as fast as it can (one event per frame, or ``batch`` frames).
- ``socketio``: python-socketio on uvicorn, one room per task (the peer a user would pick).
- ``sse``: server-sent events, one stream per task, with sse-starlette (the other peer).
- ``fakellm``: the fake OpenAI server of :mod:`gateway.testing`, scripted for the cancel
  benchmark.

Each prints one JSON line ``{"port": ..., "pid": ...}`` on stdout once it listens, and serves
until SIGTERM. Every server runs on uvloop with uvicorn's default WebSocket implementation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import msgspec
import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.replay import events, frames, replay_factory
from gateway.streaming.runner import Runner, TaskStream
from protocol import Batch, EventFrame, Hello, codec_for_subprotocol, select_subprotocol
from protocol.events import TERMINAL_KINDS

__all__ = ["main"]


def _announce(port: int) -> None:
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)


async def _serve(app: Any, **kw: Any) -> None:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ws_per_message_deflate=False,
        ws_max_size=64 << 20,
        lifespan="off",
        backlog=8192,
        **kw,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.01)
    _announce(server.servers[0].sockets[0].getsockname()[1])
    await task


def _runner(source: str, config: str | None) -> Runner:
    if source == "replay":
        return replay_factory
    from gateway.streaming import runner_factory

    return runner_factory(config)


def _spec(task_id: str, text: str) -> Any:
    from gateway.tasks import TaskSpec
    from protocol.frames import StartOptions

    return TaskSpec("bench", task_id, text, StartOptions())


# --------------------------------------------------------------------------- gateway


async def _gateway(args: argparse.Namespace) -> None:
    from gateway.connection import ConnectionSettings
    from gateway.server import GatewayServer, Settings, create_app
    from gateway.server import uvicorn_config as gateway_uvicorn_config
    from gateway.tasks import TaskManagerConfig
    from protocol import Limits

    many = 1_000_000
    settings = Settings(
        port=0,
        agent_config=args.config,
        web_root=None,
        shutdown_deadline=0.0,
        tasks=TaskManagerConfig(
            max_tasks_per_owner=many, max_tasks_total=many, max_running=many, retain_finished=60.0
        ),
        connection=ConnectionSettings(
            limits=Limits(max_tasks_per_connection=many, max_starts_per_second=1e9)
        ),
        redis_url=args.redis,
    )
    factory = replay_factory if args.source == "replay" else None
    app = create_app(settings, runner_factory=factory)
    config = gateway_uvicorn_config(app, settings, log_level="warning", lifespan="on", backlog=8192)
    server = GatewayServer(config, app.state.gateway)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.01)
    _announce(server.port)
    await task


# --------------------------------------------------------------------------- raw


class _RawRequest(msgspec.Struct, kw_only=True):
    op: str
    tasks: int = 1
    events: int = 100
    batch: int = 1
    pace_ms: float = 0.0
    seconds: float = 0.0


_raw_decoder = msgspec.json.Decoder(_RawRequest)


async def _raw_ws(websocket: WebSocket) -> None:
    subprotocol = select_subprotocol(websocket.scope.get("subprotocols", []))
    codec = codec_for_subprotocol(subprotocol)
    await websocket.accept(subprotocol=subprotocol)
    encoding: Literal["json", "msgpack"] = "msgpack" if codec.binary else "json"

    async def send(payload: bytes) -> None:
        if codec.binary:
            await websocket.send_bytes(payload)
        else:
            await websocket.send_text(payload.decode())

    await send(codec.encode(Hello(server="raw", encoding=encoding)))
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            request = _raw_decoder.decode(message.get("text") or message.get("bytes") or b"{}")
            if request.op == "stream":
                # Everything is encoded before the first byte is sent: only the sending is timed.
                per_task = [frames(f"t{i}", request.events) for i in range(request.tasks)]
                interleaved = [f for group in zip(*per_task, strict=True) for f in group]
                size = max(1, request.batch)
                payloads = [
                    codec.encode(chunk[0] if len(chunk) == 1 else Batch(events=chunk))
                    for chunk in (
                        interleaved[i : i + size] for i in range(0, len(interleaved), size)
                    )
                ]
                for payload in payloads:
                    await send(payload)
            elif request.op == "paced":
                await _raw_paced(request, send, codec.encode)
            elif request.op == "first":  # time to first event: answer at once
                await send(codec.encode(frames("t0", 3)[0]))
    except WebSocketDisconnect:
        return


async def _raw_paced(
    request: _RawRequest, send: Callable[[bytes], Any], encode: Callable[[Any], bytes]
) -> None:
    """``tasks`` streams of one event every ``pace_ms`` for ``seconds``, each event stamped when
    it is sent. The events are those of a replayed task (:func:`bench.replay.events`: mostly
    ``llm_response`` deltas), and each stream keeps to its schedule like a paced replay task, so
    every server of the paced benchmarks is offered the same load. The streams' phases are
    spread over one pace interval. Ends quietly when the client goes away."""
    loop = asyncio.get_running_loop()
    pace = request.pace_ms / 1000.0
    deadline = loop.time() + request.seconds
    body = list(events(64))[1:-1]

    async def one(i: int) -> None:
        task_id = f"t{i}"
        due = loop.time() + pace * (i / max(1, request.tasks))
        seq = 0
        while due < deadline:
            await asyncio.sleep(max(0.0, due - loop.time()))
            seq += 1
            event = body[seq % len(body)]
            await send(encode(EventFrame(task_id=task_id, seq=seq, ts=time.time(), event=event)))
            due += pace

    try:
        await asyncio.gather(*(one(i) for i in range(request.tasks)))
        await send(encode(frames("t0", 3)[-1]))
    except Exception:  # the client left (its window is over): nothing to report
        return


class _AgentPool:
    """Demo-agent runs consumed in-process, with no transport (memory baseline per task)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []


async def _raw_agents(request: Request) -> Response:
    """POST /agents?n=N&config=PATH&input=TEXT: start N demo runs, answer once all started."""
    from gateway.streaming import runner_factory

    n = int(request.query_params["n"])
    factory = runner_factory(request.query_params.get("config") or None)
    text = request.query_params.get("input", "hello")
    pool: _AgentPool = request.app.state.pool
    started = asyncio.Semaphore(0)

    async def consume(i: int) -> None:
        run = TaskStream(factory, _spec(f"a{i}", text))
        first = True
        async for _ in run:
            if first:
                started.release()
                first = False

    pool.tasks.extend(asyncio.create_task(consume(i)) for i in range(n))
    for _ in range(n):
        await started.acquire()
    return JSONResponse({"started": n})


def _raw_app() -> Starlette:
    app = Starlette(
        routes=[WebSocketRoute("/ws", _raw_ws), Route("/agents", _raw_agents, methods=["POST"])]
    )
    app.state.pool = _AgentPool()
    return app


# --------------------------------------------------------------------------- socket.io


def _socketio_app(runner: Runner) -> Any:
    import socketio

    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=[])
    runs: dict[str, Any] = {}
    drivers: set[asyncio.Task[None]] = set()

    async def drive(task_id: str, run: Any) -> None:
        seq = 0
        try:
            async for event in run:
                seq += 1
                body = {
                    "task_id": task_id,
                    "seq": seq,
                    "ts": time.time(),
                    "event": msgspec.to_builtins(event),
                }
                await sio.emit("event", body, room=task_id)
                if event.__struct_config__.tag in TERMINAL_KINDS:
                    break
        finally:
            runs.pop(task_id, None)

    @sio.on("start")  # type: ignore[untyped-decorator]
    async def start(sid: str, data: dict[str, Any]) -> dict[str, Any]:
        task_id = data["task_id"]
        await sio.enter_room(sid, task_id)
        run = TaskStream(runner, _spec(task_id, data["input"]))
        runs[task_id] = run
        drivers.add(task := asyncio.create_task(drive(task_id, run)))
        task.add_done_callback(drivers.discard)
        return {"task_id": task_id}

    @sio.on("cancel")  # type: ignore[untyped-decorator]
    async def cancel(sid: str, data: dict[str, Any]) -> None:
        run = runs.get(data["task_id"])
        if run is not None:
            run.cancel()

    return socketio.ASGIApp(sio)


# --------------------------------------------------------------------------- SSE


def _sse_app(runner: Runner) -> Starlette:
    from sse_starlette import EventSourceResponse

    runs: dict[str, Any] = {}
    encoder = msgspec.json.Encoder()

    async def stream(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        run = TaskStream(runner, _spec(task_id, request.query_params.get("input", "")))
        runs[task_id] = run

        async def body() -> AsyncIterator[dict[str, str]]:
            seq = 0
            try:
                async for event in run:
                    seq += 1
                    frame = EventFrame(task_id=task_id, seq=seq, ts=time.time(), event=event)
                    yield {"data": encoder.encode(frame).decode()}
                    if event.__struct_config__.tag in TERMINAL_KINDS:
                        break
            finally:
                runs.pop(task_id, None)
                with contextlib.suppress(Exception):
                    await run.aclose()

        return EventSourceResponse(body(), ping=3600)

    async def cancel(request: Request) -> Response:
        run = runs.get(request.path_params["task_id"])
        if run is not None:
            run.cancel()
        return JSONResponse({"ok": run is not None})

    return Starlette(
        routes=[
            Route("/tasks/{task_id}", stream),
            Route("/tasks/{task_id}/cancel", cancel, methods=["POST"]),
        ]
    )


# --------------------------------------------------------------------------- fake OpenAI


def _fakellm_app() -> Starlette:
    """The fake OpenAI server of :mod:`gateway.testing`, answering by the task's text:
    ``BENCH_STREAM``: endless word deltas every 10 ms until the client leaves; ``BENCH_TOOL``: a
    call of ``bench__slow``, then a short answer once it has a result. ``GET /stats`` tells how
    many streams were started and how many are still open."""
    from gateway.testing import FakeLLMServer, Reply, Stream, openai_chunk, openai_stream

    async def endless() -> AsyncIterator[str]:
        yield openai_chunk({"role": "assistant", "content": ""})
        while True:
            yield openai_chunk({"content": "word "})
            await asyncio.sleep(0.01)

    def respond(request: dict[str, Any]) -> Reply:
        messages = request.get("messages", [])
        task = next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")
        if any(m.get("role") == "tool" for m in messages):
            return Stream(openai_stream(text="done"))
        if "BENCH_TOOL" in task:
            return Stream(openai_stream(tool_calls=[("call-1", "bench__slow", '{"seconds": 60}')]))
        if "BENCH_STREAM" in task:
            return Stream(endless())
        return Stream(openai_stream(text="done"))

    fake = FakeLLMServer(respond=respond)

    async def stats(request: Request) -> Response:
        return JSONResponse({"open": fake.streams_open, "streams": fake.streams_started})

    return Starlette(routes=[*fake.routes(), Route("/stats", stats)])


# --------------------------------------------------------------------------- main


async def _main(args: argparse.Namespace) -> None:
    if args.kind == "gateway":
        await _gateway(args)
    elif args.kind == "raw":
        await _serve(_raw_app())
    elif args.kind == "socketio":
        await _serve(_socketio_app(_runner(args.source, args.config)))
    elif args.kind == "sse":
        await _serve(_sse_app(_runner(args.source, args.config)))
    elif args.kind == "fakellm":
        await _serve(_fakellm_app(), http="h11")
    else:
        raise SystemExit(f"unknown server kind {args.kind!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=["gateway", "raw", "socketio", "sse", "fakellm"])
    parser.add_argument("--source", choices=["replay", "demo"], default="replay")
    parser.add_argument("--config", default=None, help="agent config YAML (demo source)")
    parser.add_argument("--redis", default=None, help="gateway: keep tasks in this Redis (URL)")
    args = parser.parse_args(argv)
    _raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_main(args))
    sys.stdout.flush()


def _raise_fd_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    main()
