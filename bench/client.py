"""The load generator, run in its own process: ``python -m bench.client SPEC_JSON``.

One *link* type per protocol under test (the gateway, the raw endpoint, python-socketio, SSE)
gives the workloads one interface: open, start a task, cancel it, and a callback for every
decoded event. The decoding work is the same everywhere: every event ends as a typed
:class:`protocol.frames.EventFrame` (msgspec), whatever carried it. The result is one JSON
object on stdout. ``hold`` prints ``{"ready": ...}`` and holds its connections until a line
arrives on stdin (the harness measures the server's memory in between); ``capacity`` prints
``{"ready": ...}``, waits for its start time on stdin (several load-generator processes start
together) and prints its result as soon as its measuring window is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import uvloop

from bench.capacity import histogram
from gateway.testing import FrameClient
from protocol import (
    JSON,
    MSGPACK,
    Cancel,
    ClientSession,
    EventFrame,
    ProtocolError,
    Start,
    Subscribe,
)
from protocol.events import TaskCancelled, TaskCompleted, TaskFailed

__all__ = ["main"]

_TERMINAL = (TaskCompleted, TaskFailed, TaskCancelled)
_RUN = uuid.uuid4().hex[:8]  # task ids are unique across client runs on one server
OnEvents = Callable[[list[EventFrame], float], None]


class Link:
    """One client connection of some protocol."""

    def __init__(self, host: str, port: int, encoding: str, on_events: OnEvents) -> None:
        self.host, self.port, self.encoding, self.on_events = host, port, encoding, on_events
        self.frames = 0

    async def open(self) -> None: ...

    async def start(self, task_id: str, text: str) -> None: ...

    async def cancel(self, task_id: str) -> None: ...

    async def close(self) -> None: ...


class WsLink(Link):
    """The gateway (and the raw endpoint, which speaks the same frames), over the test client
    of :mod:`gateway.testing`; its reader hands every event straight to the workload."""

    client: FrameClient
    _reader: asyncio.Task[None]

    async def open(self) -> None:
        self.client = await FrameClient.connect(
            f"ws://{self.host}:{self.port}/ws",
            codec=MSGPACK if self.encoding == "msgpack" else JSON,
            max_size=None,
            compression=None,
            ping_interval=None,
            open_timeout=120,
            close_timeout=1,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        receive = self.client.session.receive
        on_events = self.on_events
        with contextlib.suppress(Exception):
            async for message in self.client.ws:
                frames = receive(message)
                if isinstance(frames, ProtocolError):
                    continue
                self.frames += 1
                now = time.time()
                events = [f for f in frames if type(f) is EventFrame]
                if events:
                    on_events(events, now)

    async def start(self, task_id: str, text: str) -> None:
        await self.client.start(text, task_id=task_id)

    async def cancel(self, task_id: str) -> None:
        await self.client.cancel(task_id)

    async def subscribe(self, task_id: str, after_seq: int = 0) -> None:
        """Follow a task (of this gateway or, in Redis mode, of another one)."""
        await self.client.send(
            Subscribe(id=self.client.next_id(), task_id=task_id, after_seq=after_seq)
        )

    async def control(self, **request: Any) -> None:
        """A request to the raw endpoint (``op``: stream, paced, first)."""
        await self.client.ws.send(json.dumps(request))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
        self._reader.cancel()


class AioWsLink(Link):
    """The gateway (or the raw endpoint) over aiohttp's WebSocket client, with the protocol's
    own :class:`~protocol.ClientSession` for the frames. aiohttp parses WebSocket frames in
    compiled code: about half the CPU per message of ``websockets`` here. The capacity workload
    uses it, where the load generator shares two cores with the server and must cost less per
    event than the server does; python-socketio's client and the SSE link run on aiohttp too,
    so every server of that sweep is read by the same WebSocket/HTTP stack."""

    async def open(self) -> None:
        import aiohttp

        codec = MSGPACK if self.encoding == "msgpack" else JSON
        self.session = ClientSession(codec)
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(
            f"ws://{self.host}:{self.port}/ws",
            protocols=[codec.subprotocol],
            max_msg_size=0,
            compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=1.0),
        )
        hello = await self.ws.receive(timeout=120)
        self.session.receive(hello.data)
        self._ids = 0
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        import aiohttp

        receive = self.session.receive
        on_events = self.on_events
        data_kinds = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
        with contextlib.suppress(Exception):
            async for message in self.ws:
                if message.type not in data_kinds:
                    continue
                frames = receive(message.data)
                if isinstance(frames, ProtocolError):
                    continue
                self.frames += 1
                now = time.time()
                events = [f for f in frames if type(f) is EventFrame]
                if events:
                    on_events(events, now)

    async def _send(self, frame: Any) -> None:
        data = self.session.send(frame)
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    def _rid(self) -> str:
        self._ids += 1
        return f"r{self._ids}"

    async def start(self, task_id: str, text: str) -> None:
        await self._send(Start(id=self._rid(), input=text, task_id=task_id))

    async def cancel(self, task_id: str) -> None:
        await self._send(Cancel(id=self._rid(), task_id=task_id))

    async def control(self, **request: Any) -> None:
        """A request to the raw endpoint (``op``: stream, paced, first)."""
        await self.ws.send_str(json.dumps(request))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        await self.http.close()


class SocketIOLink(Link):
    async def open(self) -> None:
        import socketio

        self.sio = socketio.AsyncClient(reconnection=False)
        convert = msgspec.convert
        on_events = self.on_events

        def on_event(data: dict[str, Any]) -> None:
            self.frames += 1
            on_events([convert(data, EventFrame)], time.time())

        self.sio.on("event", on_event)
        await self.sio.connect(
            f"http://{self.host}:{self.port}", transports=["websocket"], wait_timeout=60
        )

    async def start(self, task_id: str, text: str) -> None:
        await self.sio.call("start", {"task_id": task_id, "input": text}, timeout=60)

    async def cancel(self, task_id: str) -> None:
        await self.sio.emit("cancel", {"task_id": task_id})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.sio.disconnect()


class SSELink(Link):
    """One HTTP stream per task (a client's "connection" is its HTTP session)."""

    async def open(self) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        self.readers: set[asyncio.Task[None]] = set()
        self.decoder = msgspec.json.Decoder(EventFrame)

    async def start(self, task_id: str, text: str) -> None:
        url = f"http://{self.host}:{self.port}/tasks/{task_id}"
        response = await self.http.get(url, params={"input": text})
        task = asyncio.create_task(self._read(response))
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    async def _read(self, response: Any) -> None:
        decode = self.decoder.decode
        on_events = self.on_events
        with contextlib.suppress(Exception):
            async with response:
                async for line in response.content:
                    if line.startswith(b"data: "):
                        self.frames += 1
                        frame = decode(line[6:])
                        on_events([frame], time.time())
                        if isinstance(frame.event, _TERMINAL):
                            return

    async def cancel(self, task_id: str) -> None:
        url = f"http://{self.host}:{self.port}/tasks/{task_id}/cancel"
        async with self.http.post(url) as response:
            await response.read()

    async def close(self) -> None:
        for task in list(self.readers):
            task.cancel()
        await self.http.close()


LINKS: dict[str, type[Link]] = {
    "gateway": WsLink,
    "raw": WsLink,
    "socketio": SocketIOLink,
    "sse": SSELink,
}


class Tracker:
    """Counts decoded events; futures for a task's first, trigger and terminal events."""

    def __init__(self, trigger: type | None = None) -> None:
        self.events = 0
        self.covered: dict[str, int] = {}
        self.first_at: float | None = None
        self.last_at = 0.0
        self.terminal: dict[str, asyncio.Future[tuple[float, Any]]] = {}
        self.first: dict[str, asyncio.Future[float]] = {}
        self.triggered: dict[str, asyncio.Future[float]] = {}
        self.trigger = trigger
        self.latencies: list[float] | None = None
        self.sample_after = 0.0
        self.sample_until = float("inf")

    def expect(self, task_id: str) -> None:
        loop = asyncio.get_running_loop()
        self.terminal[task_id] = loop.create_future()
        self.first[task_id] = loop.create_future()
        self.triggered[task_id] = loop.create_future()

    def __call__(self, frames: list[EventFrame], now: float) -> None:
        self.events += len(frames)
        if self.first_at is None:
            self.first_at = time.perf_counter()
        covered = self.covered
        latencies = self.latencies
        sampling = latencies is not None and self.sample_after <= now <= self.sample_until
        for f in frames:
            covered[f.task_id] = f.seq
            if sampling:
                latencies.append(now - f.ts)  # type: ignore[union-attr]
            if f.seq == 1 or self.trigger is not None:
                first = self.first.get(f.task_id)
                if first is not None and not first.done():
                    first.set_result(time.perf_counter())
                if self.trigger is not None and isinstance(f.event, self.trigger):
                    fut = self.triggered.get(f.task_id)
                    if fut is not None and not fut.done():
                        fut.set_result(time.perf_counter())
            if isinstance(f.event, _TERMINAL):
                self.last_at = time.perf_counter()
                done = self.terminal.get(f.task_id)
                if done is not None and not done.done():
                    done.set_result((time.perf_counter(), f.event))


async def _open_links(spec: dict[str, Any], n: int, on_events: OnEvents) -> list[Link]:
    cls = LINKS[spec["proto"]]
    if cls is WsLink and spec.get("ws_client") == "aiohttp":
        cls = AioWsLink
    links = [
        cls(spec["host"], spec["port"], spec.get("encoding", "json"), on_events) for _ in range(n)
    ]
    limit = asyncio.Semaphore(100)

    async def open_one(link: Link) -> None:
        async with limit:
            await link.open()

    await asyncio.gather(*(open_one(link) for link in links))
    return links


async def _close(links: list[Link]) -> None:
    await asyncio.gather(*(link.close() for link in links), return_exceptions=True)


def _percentiles(samples: list[float], scale: float = 1000.0) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    s = sorted(samples)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] * scale

    return {
        "n": len(s),
        "p50": at(0.50),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": s[-1] * scale,
        "mean": sum(s) / len(s) * scale,
    }


# --------------------------------------------------------------------------- workloads


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """``conns`` connections × ``tasks`` tasks of ``events`` events each; events/s decoded."""
    tracker = Tracker()
    n_tasks, n_events = spec["tasks"], spec["events"]
    # The raw endpoint names its tasks t0..tN on every connection: count the events.
    done = asyncio.get_running_loop().create_future()
    expected = spec["conns"] * n_tasks * n_events

    def count(frames: list[EventFrame], now: float) -> None:
        tracker(frames, now)
        if tracker.events >= expected and not done.done():
            done.set_result(None)

    links = await _open_links(spec, spec["conns"], count if spec["proto"] == "raw" else tracker)
    text = spec.get("input") or f"replay:{n_events}:0"
    cpu0 = time.process_time()
    started = time.perf_counter()
    if spec["proto"] == "raw":
        for link in links:
            assert isinstance(link, WsLink)
            await link.control(op="stream", tasks=n_tasks, events=n_events, batch=spec["batch"])
        await asyncio.wait_for(done, spec.get("timeout", 300))
        covered = tracker.events
    else:
        ids = [(link, f"{_RUN}c{i}-t{t}") for i, link in enumerate(links) for t in range(n_tasks)]
        for _, task_id in ids:
            tracker.expect(task_id)
        await asyncio.gather(*(link.start(task_id, text) for link, task_id in ids))
        await asyncio.wait_for(
            asyncio.gather(*(tracker.terminal[t] for _, t in ids)), spec.get("timeout", 300)
        )
        covered = sum(tracker.covered.values())
    cpu = time.process_time() - cpu0
    first = tracker.first_at or started
    seconds = max(1e-9, tracker.last_at - first)
    frames = sum(link.frames for link in links)
    await _close(links)
    return {
        "events": tracker.events,
        "covered": covered,
        "frames": frames,
        "seconds": seconds,
        "wall_seconds": time.perf_counter() - started,
        "rate": covered / seconds,
        "decoded_rate": tracker.events / seconds,
        "client_cpu": cpu / max(1e-9, time.perf_counter() - started),
    }


async def latency(spec: dict[str, Any]) -> dict[str, Any]:
    """Paced streams; (decode time − event ts) of every event in the sampling window."""
    tracker = Tracker()
    tracker.latencies = []
    links = await _open_links(spec, spec["conns"], tracker)
    warmup, seconds = spec.get("warmup", 2.0), spec["seconds"]
    now = time.time()
    tracker.sample_after, tracker.sample_until = now + warmup, now + warmup + seconds
    if spec["proto"] == "raw":
        for link in links:
            assert isinstance(link, WsLink)
            await link.control(
                op="paced", tasks=spec["tasks"], pace_ms=spec["pace_ms"], seconds=warmup + seconds
            )
    else:
        limit = asyncio.Semaphore(50)

        async def start(link: Link, task_id: str) -> None:
            async with limit:
                await link.start(task_id, spec["input"])

        await asyncio.gather(
            *(
                start(link, f"{_RUN}c{i}-t{t}")
                for i, link in enumerate(links)
                for t in range(spec["tasks"])
            )
        )
    await asyncio.sleep(max(0.0, tracker.sample_until - time.time()) + 0.2)
    await _close(links)
    result = _percentiles(tracker.latencies)
    result["rate"] = result["n"] / seconds
    return result


async def first_event(spec: dict[str, Any]) -> dict[str, Any]:
    """Time from ``start`` sent to the task's first event, one task at a time."""
    tracker = Tracker()
    (link,) = await _open_links(spec, 1, tracker)
    samples: list[float] = []
    for i in range(spec["samples"]):
        task_id = f"{_RUN}f{i}"
        tracker.expect(task_id)
        t0 = time.perf_counter()
        if spec["proto"] == "raw":
            assert isinstance(link, WsLink)
            tracker.first["t0"] = tracker.first[task_id]
            await link.control(op="first")
        else:
            await link.start(task_id, spec["input"])
        samples.append(await asyncio.wait_for(tracker.first[task_id], 30) - t0)
        if spec["proto"] != "raw" and spec.get("wait", True):
            await asyncio.wait_for(tracker.terminal[task_id], 60)
    await _close(links=[link])
    return _percentiles(samples)


async def cancel(spec: dict[str, Any]) -> dict[str, Any]:
    """Start, wait for the trigger event (``llm_response`` or ``tool_call_start``), cancel,
    time until ``task_cancelled``. ``concurrency`` samplers share one connection. With
    ``port_b`` (Redis mode: another gateway on the same Redis) the task runs on ``port``, and a
    second connection to ``port_b`` subscribes to it, sends the cancel and times the terminal
    event it receives."""
    from protocol.events import LlmResponse, ToolCallStart

    trigger = ToolCallStart if spec["trigger"] == "tool" else LlmResponse
    tracker = Tracker(trigger)
    (link,) = await _open_links(spec, 1, tracker)
    other: WsLink | None = None
    on_other = Tracker()
    if spec.get("port_b"):
        (b,) = await _open_links({**spec, "port": spec["port_b"]}, 1, on_other)
        assert isinstance(b, WsLink)
        other = b
    samples: list[float] = []
    kinds: dict[str, int] = {}
    counter = iter(range(spec["samples"]))

    async def sampler() -> None:
        for i in counter:
            task_id = f"{_RUN}x{i}"
            tracker.expect(task_id)
            await link.start(task_id, spec["input"])
            await asyncio.wait_for(tracker.triggered[task_id], 60)
            watcher, canceller = tracker, link
            if other is not None:
                on_other.expect(task_id)
                await other.subscribe(task_id)
                await asyncio.wait_for(on_other.first[task_id], 60)
                watcher, canceller = on_other, other
            await asyncio.sleep(spec.get("hold", 0.05))
            t0 = time.perf_counter()
            await canceller.cancel(task_id)
            t1, event = await asyncio.wait_for(watcher.terminal[task_id], 60)
            samples.append(t1 - t0)
            kind = type(event).__name__
            kinds[kind] = kinds.get(kind, 0) + 1

    await asyncio.gather(*(sampler() for _ in range(spec.get("concurrency", 1))))
    await _close([link] if other is None else [link, other])
    result = _percentiles(samples)
    result["terminal_kinds"] = kinds  # type: ignore[assignment]
    return result


async def resume(spec: dict[str, Any]) -> dict[str, Any]:
    """A task runs on ``port``; once it streams, a second connection (to ``port_b``: in Redis
    mode another gateway; default the same one) subscribes to it from ``seq`` 0: the time from
    ``subscribe`` sent to its first replayed event. The task is then cancelled."""
    from protocol.events import LlmResponse

    on_a, on_b = Tracker(LlmResponse), Tracker()
    (a,) = await _open_links(spec, 1, on_a)
    (b,) = await _open_links({**spec, "port": spec.get("port_b") or spec["port"]}, 1, on_b)
    assert isinstance(b, WsLink)
    samples: list[float] = []
    for i in range(spec["samples"]):
        task_id = f"{_RUN}r{i}"
        on_a.expect(task_id)
        on_b.expect(task_id)
        await a.start(task_id, spec["input"])
        await asyncio.wait_for(on_a.triggered[task_id], 60)
        t0 = time.perf_counter()
        await b.subscribe(task_id)
        samples.append(await asyncio.wait_for(on_b.first[task_id], 60) - t0)
        await a.cancel(task_id)
        await asyncio.wait_for(on_a.terminal[task_id], 60)
    await _close([a, b])
    return _percentiles(samples)


async def capacity(spec: dict[str, Any]) -> None:
    """One load-generator process of a capacity step (:mod:`bench.capacity`).

    The step has ``total`` tasks on ``conns`` connections (task *k* on connection
    ``k % conns``), shared by ``procs`` processes (connection *i* in process ``i % procs``);
    this one is number ``index``. Task *k* starts ``ramp × k / total`` seconds after the start
    time, the same on every server (for the raw endpoint, which starts its streams per
    connection, connection *i* starts at ``ramp × i / conns``). Every event received in the
    window ``[start + ramp + warmup, + window]`` is measured. Prints ``ready`` once the
    connections are open, reads ``{"start_at": epoch}`` on stdin, and prints its result as
    soon as the window is over (then closes its connections)."""
    total, conns, procs, index = spec["total"], spec["conns"], spec["procs"], spec["index"]
    ramp, warmup, window = spec["ramp"], spec["warmup"], spec["window"]
    pace_ms = spec["pace_ms"]
    mine = [i for i in range(conns) if i % procs == index]
    spec = {**spec, "ws_client": "aiohttp"}
    tracker = Tracker()
    tracker.latencies = []
    links = dict(zip(mine, await _open_links(spec, len(mine), tracker), strict=True))
    print(json.dumps({"ready": True, "conns": len(mine)}), flush=True)
    loop = asyncio.get_running_loop()
    start_at = float(json.loads(await loop.run_in_executor(None, sys.stdin.readline))["start_at"])
    tracker.sample_after = start_at + ramp + warmup
    tracker.sample_until = tracker.sample_after + window
    raw = spec["proto"] == "raw"
    starting: set[asyncio.Task[None]] = set()
    errors = 0
    task_ids: list[str] = []

    def launch(request: Any) -> None:
        def done(task: asyncio.Task[None]) -> None:
            nonlocal errors
            starting.discard(task)
            if not task.cancelled() and task.exception() is not None:
                errors += 1

        task = asyncio.ensure_future(request)
        starting.add(task)
        task.add_done_callback(done)

    if raw:
        seconds = ramp + warmup + window + 1.0
        for i in mine:
            link = links[i]
            assert isinstance(link, AioWsLink)
            tasks = total // conns + (1 if i < total % conns else 0)
            await asyncio.sleep(max(0.0, start_at + ramp * i / conns - time.time()))
            launch(link.control(op="paced", tasks=tasks, pace_ms=pace_ms, seconds=seconds))
    else:
        for k in range(total):
            if (k % conns) % procs != index:
                continue
            task_id = f"{_RUN}k{k}"
            task_ids.append(task_id)
            tracker.expect(task_id)
            await asyncio.sleep(max(0.0, start_at + ramp * k / total - time.time()))
            launch(links[k % conns].start(task_id, spec["input"]))
    await asyncio.sleep(max(0.0, tracker.sample_after - time.time()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, tracker.sample_until - time.time()))
    cpu = time.process_time() - cpu0
    latencies = tracker.latencies
    tracker.latencies = None  # stop sampling
    if raw:  # a stream request that failed or is still unsent
        errors += sum(1 for t in starting if not t.done())
    else:  # a task that sent nothing by the end of the window was refused or never served
        errors = sum(1 for t in task_ids if not tracker.first[t].done())
    result = {
        "hist": histogram(latencies),
        "events": len(latencies),
        "errors": errors,
        "client_cpu": cpu / window,
    }
    print(json.dumps({"result": result}), flush=True)
    for task in starting:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_close(list(links.values())), 5)


async def hold(spec: dict[str, Any]) -> dict[str, Any]:
    """``idle``: open connections; ``tasks``: also start tasks and wait for their first event.
    Then report ready and hold everything until a line arrives on stdin."""
    tracker = Tracker()
    links = await _open_links(spec, spec["conns"], tracker)
    n_tasks = spec.get("tasks", 0)
    if n_tasks:
        ids = [(links[i % len(links)], f"{_RUN}h{i}") for i in range(n_tasks)]
        for _, task_id in ids:
            tracker.expect(task_id)
        limit = asyncio.Semaphore(200)

        async def start(link: Link, task_id: str) -> None:
            async with limit:
                await link.start(task_id, spec["input"])

        await asyncio.gather(*(start(link, t) for link, t in ids))
        await asyncio.wait_for(asyncio.gather(*(tracker.first[t] for _, t in ids)), 300)
        running = sum(1 for _, t in ids if not tracker.terminal[t].done())
    else:
        running = 0
    print(json.dumps({"ready": True, "conns": len(links), "running": running}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    still = sum(1 for f in tracker.terminal.values() if not f.done())
    await _close(links)
    return {"conns": len(links), "running": running, "running_at_end": still}


WORKLOADS: dict[str, Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any] | None]]] = {
    "throughput": throughput,
    "latency": latency,
    "first_event": first_event,
    "cancel": cancel,
    "resume": resume,
    "hold": hold,
    "capacity": capacity,
}


def main(argv: list[str] | None = None) -> None:
    import resource

    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result: dict[str, Any] | None = uvloop.run(WORKLOADS[spec["workload"]](spec))
    if result is not None:  # (``capacity`` prints its own, before it closes)
        print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
