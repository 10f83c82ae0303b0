"""Benchmark rows of the Redis mode, against the in-memory backend in the same run.

Run from the checkout, alone (it starts its own ``redis-server`` and gateway processes)::

    python bench/redis_mode.py            # full size
    python bench/redis_mode.py --quick    # a smaller run

Rows: throughput and per-event cost at 1 conn × 100 tasks (demo agent, no pacing), delivery
latency at N tasks / M conns (~20 deltas/s per task), cross-node resume latency (subscribe on
gateway B → first replayed event of a task running on A), cross-node cancel latency (cancel on
B → ``task_cancelled`` on B for a task running on A; the same-node cancel beside it), and
throughput with 2 worker processes against 1 (Redis mode, several connections). Each gateway
is an ``ospark serve`` process; the load generator is this process. Prints a Markdown table
and writes ``docs/bench/redis.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import websockets

from protocol import (
    JSON,
    Accepted,
    Cancel,
    ClientSession,
    ErrorFrame,
    EventFrame,
    ProtocolError,
    Start,
    Subscribe,
)
from protocol.events import TERMINAL_STATES, TaskCancelled

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "gateway" / "configs" / "demo.yaml"
TASK = "Research the number 42 please"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server is not installed (make sysdeps)")
    with tempfile.TemporaryDirectory() as directory:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                directory,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ready to accept connections" in line:
                break
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait()


def demo_config(directory: Path, pace_ms: int) -> str:
    path = directory / f"demo-{pace_ms}.yaml"
    text = DEMO.read_text().replace("${oc.env:OSPARK_DEMO_PACE_MS,20}", str(pace_ms))
    path.write_text(text)
    return str(path)


@asynccontextmanager
async def gateway(
    directory: Path, pace_ms: int, redis_url: str | None = None, workers: int = 1
) -> AsyncIterator[str]:
    args = ["--port", str(free_port()), "--config", demo_config(directory, pace_ms)]
    if redis_url:
        args += ["--redis", redis_url]
    if workers > 1:  # `ospark serve --workers N` as users run it (default limits)
        command = ["-m", "gateway.cli", "serve", *args, "--workers", str(workers)]
    else:  # one process with the limits raised, as the main benchmark's gateway
        command = [__file__, "--serve", *args]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        cwd=ROOT,
        env={**os.environ, "OSPARK_REDIS_LEASE": "3"},
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    listening = 0
    url = ""
    while listening < workers:
        line = await proc.stderr.readline()
        if not line:
            raise RuntimeError("the gateway exited before listening")
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "listening":
            listening += 1
            url = record["url"]
    drain = asyncio.create_task(_drain(proc.stderr))
    try:
        yield url
    finally:
        proc.terminate()
        await proc.wait()
        drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


class Conn:
    """One WebSocket client: frames in, events by task."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.session = ClientSession(JSON)
        self.n = 0

    @classmethod
    async def open(cls, url: str) -> Conn:
        ws = await websockets.connect(url, subprotocols=["ospark.v1.json"], max_size=None)  # type: ignore[list-item]
        conn = cls(ws)
        await conn.frames()  # hello
        return conn

    async def send(self, frame: Any) -> None:
        await self.ws.send(self.session.send(frame))

    def rid(self) -> str:
        self.n += 1
        return f"r{self.n}"

    async def frames(self) -> list[Any]:
        frames = self.session.receive(await self.ws.recv())
        if isinstance(frames, ProtocolError):
            raise RuntimeError(f"undecodable frame from the gateway: {frames.message}")
        for frame in frames:
            if isinstance(frame, ErrorFrame):  # a refusal would leave a run waiting forever
                raise RuntimeError(f"the gateway refused a request: {frame}")
        return frames

    async def close(self) -> None:
        await self.ws.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def throughput(url: str, conns: int, tasks_per_conn: int) -> dict[str, float]:
    """Events per second over ``conns`` connections each running ``tasks_per_conn`` tasks."""
    clients = [await Conn.open(url) for _ in range(conns)]
    started = time.perf_counter()
    counts = await asyncio.gather(*(_run_tasks(c, tasks_per_conn) for c in clients))
    elapsed = time.perf_counter() - started
    for c in clients:
        await c.close()
    events = sum(counts)
    return {"events": events, "seconds": elapsed, "events_per_s": events / elapsed}


async def _run_tasks(conn: Conn, n: int) -> int:
    for i in range(n):
        await conn.send(Start(id=conn.rid(), input=f"{TASK} {i}"))
    done = events = 0
    while done < n:
        for frame in await conn.frames():
            for item in getattr(frame, "events", None) or [frame]:
                if isinstance(item, EventFrame):
                    events += 1
                    if type(item.event) in TERMINAL_STATES:
                        done += 1
    return events


async def latency(url: str, conns: int, tasks_per_conn: int) -> dict[str, float]:
    """Delivery latency (receive time − the event's ``ts``) of every event of paced tasks."""
    clients = [await Conn.open(url) for _ in range(conns)]
    samples: list[float] = []

    async def one(conn: Conn) -> None:
        for i in range(tasks_per_conn):
            await conn.send(Start(id=conn.rid(), input=f"{TASK} {i}"))
        done = 0
        while done < tasks_per_conn:
            frames = await conn.frames()
            now = time.time()
            for frame in frames:
                for item in getattr(frame, "events", None) or [frame]:
                    if isinstance(item, EventFrame):
                        samples.append(now - item.ts)
                        if type(item.event) in TERMINAL_STATES:
                            done += 1

    await asyncio.gather(*(one(c) for c in clients))
    for c in clients:
        await c.close()
    ms = [s * 1000 for s in samples]
    return {"events": len(ms), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99)}


async def _start_running(conn: Conn, text: str) -> str:
    rid = conn.rid()
    await conn.send(Start(id=rid, input=text))
    task = ""
    seen = 0
    while seen < 3:  # a few events: the run is under way
        for frame in await conn.frames():
            if isinstance(frame, Accepted) and frame.id == rid:
                task = frame.task_id
            elif isinstance(frame, EventFrame) and frame.task_id == task:
                seen += 1
    return task


async def resume_latency(url_a: str, url_b: str, n: int) -> dict[str, float]:
    """Subscribe on B → first replayed event, for a task running on A."""
    a, b = await Conn.open(url_a), await Conn.open(url_b)
    samples = []
    for i in range(n):
        task = await _start_running(a, f"{TASK} resume {i}")
        sent = time.perf_counter()
        await b.send(Subscribe(id=b.rid(), task_id=task))
        got = False
        while not got:
            got = any(isinstance(f, EventFrame) and f.task_id == task for f in await b.frames())
        samples.append((time.perf_counter() - sent) * 1000)
        await b.send(Cancel(id=b.rid(), task_id=task))
        await _until_terminal(b, task)
    await a.close()
    await b.close()
    return {"n": n, "p50_ms": pct(samples, 0.5), "p99_ms": pct(samples, 0.99)}


async def cancel_latency(url_run: str, url_cancel: str, n: int) -> dict[str, float]:
    """Cancel sent on one gateway → ``task_cancelled`` received there, for a task running on
    ``url_run`` (the same gateway when both URLs are equal)."""
    runner = await Conn.open(url_run)
    canceller = runner if url_cancel == url_run else await Conn.open(url_cancel)
    samples = []
    for i in range(n):
        task = await _start_running(runner, f"{TASK} cancel {i}")
        if canceller is not runner:
            await canceller.send(Subscribe(id=canceller.rid(), task_id=task))
            got = False
            while not got:
                frames = await canceller.frames()
                got = any(isinstance(f, EventFrame) and f.task_id == task for f in frames)
        sent = time.perf_counter()
        await canceller.send(Cancel(id=canceller.rid(), task_id=task))
        final = await _until_terminal(canceller, task)
        assert isinstance(final.event, TaskCancelled), final
        samples.append((time.perf_counter() - sent) * 1000)
    await runner.close()
    if canceller is not runner:
        await canceller.close()
    return {"n": n, "p50_ms": pct(samples, 0.5), "p99_ms": pct(samples, 0.99)}


async def _until_terminal(conn: Conn, task: str) -> EventFrame:
    while True:
        for frame in await conn.frames():
            for item in getattr(frame, "events", None) or [frame]:
                if (
                    isinstance(item, EventFrame)
                    and item.task_id == task
                    and type(item.event) in TERMINAL_STATES
                ):
                    return item


async def main(quick: bool) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    lat_conns, lat_tasks = (30, 10) if quick else (100, 10)
    n_ops = 20 if quick else 50
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with redis_server() as redis_url:
            for mode, url_arg in (("memory", None), ("redis", redis_url)):
                async with gateway(directory, 0, url_arg) as url:
                    await throughput(url, 1, 10)  # warm-up
                    rows[f"throughput_1x100_{mode}"] = await throughput(url, 1, 100)
                async with gateway(directory, 50, url_arg) as url:
                    rows[f"latency_{mode}"] = await latency(url, lat_conns, lat_tasks)
                async with gateway(directory, 20, url_arg) as url:
                    rows[f"cancel_same_node_{mode}"] = await cancel_latency(url, url, n_ops)
            async with (
                gateway(directory, 20, redis_url) as a,
                gateway(directory, 20, redis_url) as b,
            ):
                rows["resume_cross_node"] = await resume_latency(a, b, n_ops)
                rows["cancel_cross_node"] = await cancel_latency(a, b, n_ops)
            for workers in (1, 2):
                async with gateway(directory, 0, redis_url, workers=workers) as url:
                    await throughput(url, 4, 5)  # warm-up
                    rows[f"throughput_workers_{workers}"] = await throughput(url, 8, 25)
    rows["environment"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "quick": quick,
        "latency_load": f"{lat_conns * lat_tasks} tasks / {lat_conns} conns",
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    return rows


def table(rows: dict[str, Any]) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}×" if b else "–"

    tm, tr = rows["throughput_1x100_memory"], rows["throughput_1x100_redis"]
    lm, lr = rows["latency_memory"], rows["latency_redis"]
    w1, w2 = rows["throughput_workers_1"], rows["throughput_workers_2"]
    cs, cx = rows["cancel_same_node_redis"], rows["cancel_cross_node"]
    rz = rows["resume_cross_node"]
    load = rows["environment"]["latency_load"]
    lines = [
        "| workload | Redis mode | in memory (same run) | ratio |",
        "|---|---|---|---|",
        f"| throughput, 1 conn × 100 demo tasks | {tr['events_per_s'] / 1000:.1f}k events/s "
        f"| {tm['events_per_s'] / 1000:.1f}k events/s "
        f"| {ratio(tr['events_per_s'], tm['events_per_s'])} |",
        f"| per-event cost (1 ÷ throughput) | {1e6 / tr['events_per_s']:.1f} µs "
        f"| {1e6 / tm['events_per_s']:.1f} µs "
        f"| {ratio(tm['events_per_s'], tr['events_per_s'])} |",
        f"| delivery latency p50, {load}, ~20 deltas/s each | {lr['p50_ms']:.2f} ms "
        f"| {lm['p50_ms']:.2f} ms | {ratio(lr['p50_ms'], lm['p50_ms'])} |",
        f"| delivery latency p99, same | {lr['p99_ms']:.2f} ms | {lm['p99_ms']:.2f} ms "
        f"| {ratio(lr['p99_ms'], lm['p99_ms'])} |",
        f"| cross-node resume (subscribe on B → first replayed event), p50 / p99 "
        f"| {rz['p50_ms']:.2f} / {rz['p99_ms']:.2f} ms | – | – |",
        f"| cancel → `task_cancelled`, other node, p50 / p99 | {cx['p50_ms']:.2f} / "
        f"{cx['p99_ms']:.2f} ms | same node (Redis): {cs['p50_ms']:.2f} / {cs['p99_ms']:.2f} ms "
        f"| {ratio(cx['p99_ms'], cs['p99_ms'])} (p99) |",
        f"| throughput, 8 conns × 25 demo tasks, 2 workers vs 1 (Redis) "
        f"| {w2['events_per_s'] / 1000:.1f}k events/s | 1 worker: {w1['events_per_s'] / 1000:.1f}k "
        f"events/s | {ratio(w2['events_per_s'], w1['events_per_s'])} |",
    ]
    return "\n".join(lines)


def serve(port: int, config: str, redis_url: str | None) -> None:
    """One gateway process with the limits out of the way (as ``python -m bench`` does)."""
    from gateway.connection import ConnectionSettings
    from gateway.server import configure_logging, serve_one
    from gateway.server.settings import Settings
    from gateway.tasks import TaskManagerConfig
    from protocol import Limits

    many = 1_000_000
    configure_logging("info")
    serve_one(
        Settings(
            port=port,
            agent_config=config,
            web_root=None,
            shutdown_deadline=0.0,
            redis_url=redis_url,
            redis_lease=3.0,
            tasks=TaskManagerConfig(
                max_tasks_per_owner=many,
                max_tasks_total=many,
                max_running=many,
                retain_finished=60.0,
            ),
            connection=ConnectionSettings(
                limits=Limits(max_tasks_per_connection=many, max_starts_per_second=1e9)
            ),
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "redis.json"))
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        sys.path.insert(0, str(ROOT))
        serve(opts.port, opts.config, opts.redis)
        sys.exit(0)
    results = asyncio.run(main(opts.quick))
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
