"""The benchmark suite: starts each server in its own process, drives it from a client process,
and measures every figure against its baselines in the same run (median, min and max of
several runs). See :mod:`bench` for what is measured and why."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.capacity import Plan, Step, Sweep, merge, percentile, sweep, verdict
from bench.redis_mode import RedisServer, cpu_s, serve_workers
from bench.replay import replay_input
from gateway.testing import write_demo_config

__all__ = ["SIZES", "STEPS", "CapacitySizes", "Sizes", "Suite", "environment"]

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CapacitySizes:
    """The capacity sweep (:mod:`bench.capacity`) at one size."""

    start: int  # tasks of the first step
    max_tasks: int
    max_steps: int  # per sweep
    resolution: float  # bisect until the bracket is within this fraction of the figure
    seconds: float  # time budget per sweep
    ramp: float  # seconds over which the tasks start
    warmup: float  # seconds of steady state before the window
    window: float  # seconds measured
    p99_ms: float  # the latency bound
    min_delivered: float  # share of the scheduled events that must arrive in the window
    clients: int  # load-generator processes
    tasks_per_conn: int
    pace_ms: float = 20.0  # ~50 tokens/s


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; ``full`` keeps ``make bench`` under 15 minutes."""

    runs: int
    tp_events: tuple[int, int, int]  # events per task for 1×1, 1×100, 100×10
    tp_peer_events: tuple[int, int, int]
    demo_tasks: int  # end-to-end demo agent: tasks on one connection
    lat_conns: int
    lat_tasks: int  # per connection
    lat_seconds: float
    lat_warmup: float
    idle: tuple[int, ...]
    tasks: tuple[int, ...]
    cancel_samples: int
    tool_samples: int
    first_samples: int
    capacity: CapacitySizes
    redis_samples: int  # cross-node resumes and cancels per run
    redis_tp_events: int  # events per task of the Redis-mode throughput and cost rows
    workers_load: tuple[int, int]  # conns × tasks per conn of the workers row


SIZES = {
    "smoke": Sizes(
        runs=1,
        tp_events=(200, 20, 5),
        tp_peer_events=(100, 10, 5),
        demo_tasks=4,
        lat_conns=2,
        lat_tasks=2,
        lat_seconds=0.5,
        lat_warmup=0.3,
        idle=(10,),
        tasks=(10,),
        cancel_samples=2,
        tool_samples=1,
        first_samples=3,
        # One step per sweep and a bound no busy test machine misses: the smoke run checks
        # that the code works, not what it measures (tests/bench/test_capacity.py checks the
        # sweep's logic).
        capacity=CapacitySizes(
            start=3,
            max_tasks=3,
            max_steps=1,
            resolution=0.5,
            seconds=60,
            ramp=0.2,
            warmup=0.2,
            window=0.8,
            p99_ms=5000,
            min_delivered=0.2,
            clients=2,
            tasks_per_conn=1,
        ),
        redis_samples=2,
        redis_tp_events=50,
        workers_load=(2, 2),
    ),
    "quick": Sizes(
        runs=2,
        tp_events=(5000, 100, 20),
        tp_peer_events=(2000, 50, 10),
        demo_tasks=50,
        lat_conns=20,
        lat_tasks=10,
        lat_seconds=3.0,
        lat_warmup=1.0,
        idle=(200, 1000),
        tasks=(200, 1000),
        cancel_samples=10,
        tool_samples=4,
        first_samples=20,
        capacity=CapacitySizes(
            start=50,
            max_tasks=20_000,
            max_steps=6,
            resolution=0.25,
            seconds=60,
            ramp=0.5,
            warmup=0.5,
            window=1.5,
            p99_ms=50,
            min_delivered=0.95,
            clients=2,
            tasks_per_conn=10,
        ),
        redis_samples=10,
        redis_tp_events=200,
        workers_load=(8, 10),
    ),
    "full": Sizes(
        runs=3,
        tp_events=(20_000, 300, 50),
        tp_peer_events=(5000, 100, 20),
        demo_tasks=200,
        lat_conns=100,
        lat_tasks=10,
        lat_seconds=6.0,
        lat_warmup=2.0,
        idle=(1000, 5000),
        tasks=(1000, 10_000),
        cancel_samples=40,
        tool_samples=12,
        first_samples=50,
        capacity=CapacitySizes(
            start=100,
            max_tasks=40_000,
            max_steps=9,
            resolution=0.1,
            seconds=75,
            ramp=1.0,
            warmup=1.0,
            window=2.5,
            p99_ms=50,
            min_delivered=0.95,
            clients=2,
            tasks_per_conn=10,
        ),
        redis_samples=40,
        redis_tp_events=300,
        workers_load=(16, 10),
    ),
}

STEPS = ("throughput", "latency", "scale", "cancel", "first_event", "capacity", "redis")
"""The suite's parts, in the order they run (``python -m bench --only capacity,redis``)."""


# --------------------------------------------------------------------------- processes


class Server:
    """One server process (``python -m bench.servers``)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        # A file, not a pipe: a server that logs a lot must never block on a full pipe. It
        # lives as long as the process; stop() closes it.
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.servers", *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            self.stderr.seek(0)
            err = self.stderr.read()
            self.stderr.close()
            raise RuntimeError(f"server {args} did not start:\n{err[-3000:]}")
        info = json.loads(line)
        self.port: int = info["port"]
        self.pid: int = info["pid"]

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


@contextlib.contextmanager
def server(*args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    s = Server(*args, env=env)
    try:
        yield s
    finally:
        s.stop()


def client(spec: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Run one client workload to completion in its own process."""
    spec = {"host": "127.0.0.1", **spec}
    out = subprocess.run(
        [PY, "-m", "bench.client", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith('{"result"')]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"client {spec['workload']} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])["result"]
    return result


@contextlib.contextmanager
def holding_client(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A client that holds its connections (and tasks) until the block ends."""
    spec = {"host": "127.0.0.1", **spec, "workload": "hold"}
    proc = subprocess.Popen(
        [PY, "-m", "bench.client", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"holding client failed:\n{proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
        yield json.loads(line)
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write("\n")
            proc.stdin.flush()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# --------------------------------------------------------------------------- figures


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": values,
    }


@dataclass
class Row:
    """One figure: ours against its baselines, each a summary of several runs."""

    group: str
    case: str
    metric: str
    unit: str
    higher_is_better: bool
    ours: dict[str, Any]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    target: str = ""
    met: bool | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    """More of what was measured, for results.json (a sweep's steps)."""

    def ratio(self, name: str) -> float | None:
        base = self.baselines.get(name)
        if base is None or not base["median"] or not self.ours["median"]:
            return None
        r: float = self.ours["median"] / base["median"]
        return r

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "case": self.case,
            "metric": self.metric,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "ours": self.ours,
            "baselines": self.baselines,
            "ratios": {name: self.ratio(name) for name in self.baselines},
            "target": self.target,
            "met": self.met,
            "note": self.note,
            **({"detail": self.detail} if self.detail else {}),
        }


def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import uvicorn.protocols.websockets.auto as ws_auto

    versions = {}
    for dist in (
        "uvicorn",
        "websockets",
        "msgspec",
        "starlette",
        "uvloop",
        "python-socketio",
        "python-engineio",
        "sse-starlette",
        "aiohttp",
        "redis",
        "hiredis",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        versions["redis-server"] = out.split("v=", 1)[1].split()[0] if "v=" in out else "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "uvicorn_ws": getattr(ws_auto.AutoWebSocketsProtocol, "__name__", "?"),
        "loop": "uvloop",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --------------------------------------------------------------------------- the suite


class Suite:
    """Runs every workload at one size; ``rows`` collects the figures."""

    def __init__(
        self, size: str, log: Callable[[str], None] = print, only: Iterable[str] = STEPS
    ) -> None:
        self.size_name = size
        self.sizes = SIZES[size]
        self.log = log
        self.only = [step for step in STEPS if step in set(only)]
        self.rows: list[Row] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="ospark-bench-"))
        self._redis: RedisServer | None = None
        self._latency_ours: list[dict[str, Any]] = []  # the in-memory latency runs, for Redis

    # ------------------------------------------------------------------ helpers

    def demo_config(self, pace_ms: float, **overrides: Any) -> str:
        """A config file: the demo agent without its sub-agent (the figures measure one agent
        per task), at ``pace_ms`` per word; ``overrides`` as in ``load_config``."""
        return write_demo_config(self.tmp, pace_ms, **{"sub_agents": {}, **overrides})

    def repeat(self, fn: Callable[[], float]) -> dict[str, Any]:
        return summary([fn() for _ in range(self.sizes.runs)])

    def rate(self, spec: dict[str, Any]) -> dict[str, Any]:
        """events/s of a throughput client run, over several runs."""
        return summary([client(spec)["rate"] for _ in range(self.sizes.runs)])

    def add(self, row: Row) -> None:
        self.rows.append(row)
        ratios = ", ".join(
            f"{k} {v:.2f}×" for k, v in ((k, row.ratio(k)) for k in row.baselines) if v
        )
        self.log(f"  {row.group} · {row.case}: {row.ours['median']:.4g} {row.unit} ({ratios})")

    def run(self) -> list[Row]:
        try:
            for name in self.only:
                started = time.monotonic()
                self.log(f"[{name}]")
                getattr(self, name)()
                self.log(f"  ({time.monotonic() - started:.0f} s)")
        finally:
            if self._redis is not None:
                self._redis.stop()
        return self.rows

    def redis_server(self) -> RedisServer:
        """The run's own ``redis-server`` (started on first use, emptied for each user)."""
        if self._redis is None:
            self._redis = RedisServer()
        self._redis.flushall()
        return self._redis

    # ------------------------------------------------------------------ 1. throughput

    def throughput(self) -> None:
        s = self.sizes
        cases = [
            ("1 conn × 1 task", 1, 1),
            ("1 conn × 100 tasks", 1, 100),
            ("100 conns × 10 tasks", 100, 10),
        ]
        with (
            server("gateway", "--source", "replay") as gw,
            server("raw") as raw,
            server("socketio", "--source", "replay") as sio,
            server("sse", "--source", "replay") as sse,
        ):
            for (name, conns, tasks), events, peer_events in zip(
                cases, s.tp_events, s.tp_peer_events, strict=True
            ):
                peers: dict[str, dict[str, Any]] = {}
                for label, srv, proto in (("socket.io", sio, "socketio"), ("SSE", sse, "sse")):
                    spec = {"workload": "throughput", "proto": proto, "port": srv.port}
                    spec |= {"conns": conns, "tasks": tasks, "events": peer_events}
                    peers[label] = self.rate(spec)
                for encoding in ("json", "msgpack"):
                    base = {"workload": "throughput", "encoding": encoding, "conns": conns}
                    base |= {"tasks": tasks, "events": events}
                    cpu0 = gw.cpu_s()
                    t0 = time.monotonic()
                    ours = self.rate({**base, "proto": "gateway", "port": gw.port})
                    busy = (gw.cpu_s() - cpu0) / max(1e-9, time.monotonic() - t0)
                    raws = {
                        f"raw, batch {b}": self.rate(
                            {**base, "proto": "raw", "port": raw.port, "batch": b}
                        )
                        for b in (1, 32)
                    }
                    ours_ratio_b32 = ours["median"] / raws["raw, batch 32"]["median"]
                    worst_peer = max(p["median"] for p in peers.values())
                    met = ours["median"] >= 2 * worst_peer
                    # One task at a time is bound by its own loop, not by the transport: its
                    # goal is against the peers only (issue 16).
                    target = "≥ 2× each peer"
                    if tasks > 1:
                        met = met and ours_ratio_b32 >= 0.5
                        target = "≥ 0.5× raw batch 32, ≥ 2× each peer"
                    self.add(
                        Row(
                            "throughput",
                            f"{name}, {encoding}",
                            "events/s",
                            "events/s",
                            True,
                            ours,
                            {**raws, **peers},
                            target,
                            met,
                            f"gateway process CPU {busy:.0%} during its runs",
                        )
                    )
        # End to end: the real demo agent (zero pacing) behind each transport.
        demo = self.demo_config(0)
        text = "What is 17*23+4?"
        spec = {"workload": "throughput", "conns": 1, "tasks": s.demo_tasks, "events": 0}
        spec["input"] = text
        with server("gateway", "--source", "demo", "--config", demo) as gw:
            ours = self.rate({**spec, "proto": "gateway", "port": gw.port})
        peers = {}
        for label, kind in (("socket.io", "socketio"), ("SSE", "sse")):
            with server(kind, "--source", "demo", "--config", demo) as srv:
                peers[label] = self.rate({**spec, "proto": kind, "port": srv.port})
        self.add(
            Row(
                "throughput",
                f"demo agent, 1 conn × {s.demo_tasks} tasks, json",
                "events/s",
                "events/s",
                True,
                ours,
                peers,
                "≥ 2× each peer",
                ours["median"] >= 2 * max(p["median"] for p in peers.values()),
                "the agent itself is the bottleneck here (same agent behind every transport)",
            )
        )

    # ------------------------------------------------------------------ 2. latency

    def latency(self) -> None:
        s = self.sizes
        words = int((s.lat_seconds + s.lat_warmup) * 20 * 1.5) + 40
        text = "What is 17*23+4? " + " ".join(f"w{i}" for i in range(words))
        common = {"workload": "latency", "conns": s.lat_conns, "tasks": s.lat_tasks}
        common |= {"seconds": s.lat_seconds, "warmup": s.lat_warmup, "pace_ms": 50.0}
        runs: dict[str, list[dict[str, Any]]] = {}

        def measure(label: str, srv_args: tuple[str, ...], spec: dict[str, Any]) -> None:
            results = []
            for _ in range(s.runs):
                with server(*srv_args) as srv:
                    results.append(client({**common, **spec, "port": srv.port}))
            runs[label] = results

        measure(
            "ours",
            ("gateway", "--source", "demo", "--config", self.demo_config(50)),
            {"proto": "gateway", "input": text},
        )
        self._latency_ours = runs["ours"]
        measure("raw", ("raw",), {"proto": "raw"})
        replay = f"replay:{words * 2}:50"
        measure(
            "socket.io", ("socketio", "--source", "replay"), {"proto": "socketio", "input": replay}
        )
        measure("SSE", ("sse", "--source", "replay"), {"proto": "sse", "input": replay})
        n = s.lat_conns * s.lat_tasks
        for pct in ("p50", "p99", "p999"):
            ours = summary([r[pct] for r in runs["ours"]])
            bases = {k: summary([r[pct] for r in v]) for k, v in runs.items() if k != "ours"}
            self.add(
                Row(
                    "latency",
                    f"{n} tasks / {s.lat_conns} conns, ~20 deltas/s each, {pct}",
                    pct,
                    "ms",
                    False,
                    ours,
                    bases,
                    {"p99": "≤ 1.5× raw, ≤ 10 ms", "p999": "≤ 3× raw"}.get(pct, ""),
                    {
                        "p99": ours["median"] <= min(10.0, 1.5 * bases["raw"]["median"]),
                        "p999": ours["median"] <= 3 * bases["raw"]["median"],
                    }.get(pct),
                    "ours: demo agent; raw: pre-built events; peers: replayed events; events "
                    f"sampled per run: {int(statistics.median(r['n'] for r in runs['ours']))}",
                )
            )

    # ------------------------------------------------------------------ 3. scale

    def scale(self) -> None:
        s = self.sizes
        for n in s.idle:
            per_conn: dict[str, list[float]] = {"ours": [], "raw": []}
            for _ in range(max(1, s.runs - 1)):
                for label, args, proto in (
                    ("ours", ("gateway",), "gateway"),
                    ("raw", ("raw",), "raw"),
                ):
                    with server(*args) as srv:
                        # Warm up: one connection, so lazy imports and buffers are counted once.
                        client(
                            {
                                "workload": "first_event",
                                "proto": proto,
                                "port": srv.port,
                                "samples": 1,
                                "input": "replay:3:0",
                            }
                        )
                        time.sleep(0.3)
                        before = srv.rss_kb()
                        with holding_client({"proto": proto, "port": srv.port, "conns": n}):
                            time.sleep(0.5)
                            after = srv.rss_kb()
                        per_conn[label].append((after - before) * 1024 / n / 1000)
            ours = summary(per_conn["ours"])
            raw_kb = summary(per_conn["raw"])
            self.add(
                Row(
                    "scale",
                    f"{n} idle connections: server memory per connection",
                    "KB/conn",
                    "KB",
                    False,
                    ours,
                    {"raw": raw_kb},
                    "≤ 1.15× raw, ≤ 40 KB",
                    ours["median"] <= min(40, 1.15 * raw_kb["median"]),
                )
            )
        conns = 100
        config = self.demo_config(1000)
        words = 200
        text = "What is 17*23+4? " + " ".join(f"w{i}" for i in range(words))
        for n in s.tasks:
            ours_kb: list[float] = []
            base_kb: list[float] = []
            running: list[int] = []
            for _ in range(max(1, s.runs - 1)):
                with server("gateway", "--source", "demo", "--config", config) as gw:
                    client(
                        {
                            "workload": "first_event",
                            "proto": "gateway",
                            "port": gw.port,
                            "samples": 1,
                            "input": "hello",
                            "wait": False,
                        }
                    )
                    with holding_client({"proto": "gateway", "port": gw.port, "conns": conns}):
                        time.sleep(0.3)
                        before = gw.rss_kb()
                        with holding_client(
                            {
                                "proto": "gateway",
                                "port": gw.port,
                                "conns": conns,
                                "tasks": n,
                                "input": text,
                            }
                        ) as ready:
                            time.sleep(0.5)
                            after = gw.rss_kb()
                            running.append(ready["running"])
                    ours_kb.append((after - before) * 1024 / n / 1000)
                with server("raw") as raw:
                    import urllib.request

                    url = f"http://127.0.0.1:{raw.port}/agents?n=1&config={config}&input=hello"
                    urllib.request.urlopen(
                        urllib.request.Request(url, method="POST"), timeout=60
                    ).read()
                    time.sleep(0.3)
                    before = raw.rss_kb()
                    url = f"http://127.0.0.1:{raw.port}/agents?n={n}&config={config}&input=" + (
                        urllib.parse.quote(text)
                    )
                    urllib.request.urlopen(
                        urllib.request.Request(url, method="POST"), timeout=600
                    ).read()
                    time.sleep(0.5)
                    base_kb.append((raw.rss_kb() - before) * 1024 / n / 1000)
            ours = summary(ours_kb)
            self.add(
                Row(
                    "scale",
                    f"{n} concurrent demo tasks: server memory per task",
                    "KB/task",
                    "KB",
                    False,
                    ours,
                    {"agent alone": summary(base_kb)},
                    f"{n} tasks running in one process",
                    min(running) == n,
                    f"tasks still running when measured: {min(running)}/{n}; "
                    "baseline: the same demo runs consumed in-process with no gateway",
                )
            )

    # ------------------------------------------------------------------ 4. cancel

    def cancel(self) -> None:
        s = self.sizes
        probe = self.tmp / "probe.txt"
        with server("fakellm") as llm:
            llm_config = {
                "provider": "openai",
                "model_name": "bench",
                "base_url": f"http://127.0.0.1:{llm.port}/v1",
                "api_key": "bench",
                "timeout_s": 60,
            }
            slow_tool = {
                "name": "bench",
                "command": PY,
                "args": ["-m", "bench.mcp_slow"],
                "env": {"BENCH_PROBE": str(probe), "PYTHONPATH": str(ROOT)},
                "timeout_s": 120,
            }
            config = self.demo_config(
                0,
                llm=llm_config,
                tools=[slow_tool],
                main_agent={"tool_config": ["bench"], "max_turns": 4},
            )
            # The LLM-streaming case has no stdio tool server: its shutdown is not in the figure.
            stream_config = self.demo_config(
                0, llm=llm_config, main_agent={"tool_config": [], "max_turns": 4}
            )
            results: dict[str, list[dict[str, Any]]] = {"stream": [], "tool": []}
            for _ in range(s.runs):
                with server("gateway", "--source", "demo", "--config", stream_config) as gw:
                    spec = {"workload": "cancel", "proto": "gateway", "port": gw.port}
                    results["stream"].append(
                        client(
                            {
                                **spec,
                                "trigger": "llm",
                                "input": "BENCH_STREAM",
                                "samples": s.cancel_samples,
                                "concurrency": 4,
                            }
                        )
                    )
                with server("gateway", "--source", "demo", "--config", config) as gw:
                    spec = {"workload": "cancel", "proto": "gateway", "port": gw.port}
                    results["tool"].append(
                        client(
                            {
                                **spec,
                                "trigger": "tool",
                                "input": "BENCH_TOOL",
                                "samples": s.tool_samples,
                                "concurrency": 4,
                            }
                        )
                    )
                    time.sleep(0.5)
            stats = json.loads(
                __import__("urllib.request")
                .request.urlopen(f"http://127.0.0.1:{llm.port}/stats", timeout=10)
                .read()
            )
        probes = probe.read_text().split() if probe.exists() else []
        peer: dict[str, list[dict[str, Any]]] = {}
        for label, args, proto in (
            ("ours, replayed stream", ("gateway", "--source", "replay"), "gateway"),
            ("socket.io", ("socketio", "--source", "replay"), "socketio"),
            ("SSE", ("sse", "--source", "replay"), "sse"),
        ):
            peer[label] = []
            for _ in range(s.runs):
                with server(*args) as srv:
                    peer[label].append(
                        client(
                            {
                                "workload": "cancel",
                                "proto": proto,
                                "port": srv.port,
                                "trigger": "llm",
                                "input": "replay:100000:10",
                                "samples": s.cancel_samples,
                                "concurrency": 4,
                            }
                        )
                    )
        stopped = (
            f"fake LLM: {stats['open']} streams still open of {stats['streams']}; "
            f"MCP tool: {probes.count('cancelled')} cancelled of {probes.count('started')} started"
        )
        for label, key in (
            ("during LLM streaming (fake OpenAI)", "stream"),
            ("during a slow MCP tool call", "tool"),
        ):
            for pct in ("p50", "p99"):
                ours = summary([r[pct] for r in results[key]])
                kinds = {k for r in results[key] for k in r["terminal_kinds"]}
                self.add(
                    Row(
                        "cancel",
                        f"cancel {label}, {pct}",
                        pct,
                        "ms",
                        False,
                        ours,
                        {k: summary([r[pct] for r in v]) for k, v in peer.items()},
                        "p99 ≤ 20 ms" if pct == "p99" else "",
                        (ours["median"] <= 20 and kinds == {"TaskCancelled"})
                        if pct == "p99"
                        else None,
                        f"terminal events: {sorted(kinds)}; {stopped}; "
                        "baselines cancel a replayed stream",
                    )
                )

    # ------------------------------------------------------------------ 5. first event

    def first_event(self) -> None:
        s = self.sizes
        demo = self.demo_config(0)
        text = "What is 17*23+4?"
        spec = {"workload": "first_event", "samples": s.first_samples, "input": text}
        res: dict[str, list[dict[str, Any]]] = {}
        for label, args, proto in (
            ("ours", ("gateway", "--source", "demo", "--config", demo), "gateway"),
            ("raw", ("raw",), "raw"),
            ("socket.io", ("socketio", "--source", "demo", "--config", demo), "socketio"),
            ("SSE", ("sse", "--source", "demo", "--config", demo), "sse"),
        ):
            res[label] = []
            for _ in range(s.runs):
                with server(*args) as srv:
                    res[label].append(client({**spec, "proto": proto, "port": srv.port}))
        for pct in ("p50", "p99"):
            ours = summary([r[pct] for r in res["ours"]])
            bases = {k: summary([r[pct] for r in v]) for k, v in res.items() if k != "ours"}
            self.add(
                Row(
                    "first event",
                    f"time to first event after start (demo agent), {pct}",
                    pct,
                    "ms",
                    False,
                    ours,
                    bases,
                    "≤ 1.5× raw" if pct == "p50" else "",
                    ours["median"] <= 1.5 * bases["raw"]["median"] if pct == "p50" else None,
                    "raw: request → pre-built event; peers run the same demo agent",
                )
            )

    # ------------------------------------------------------------------ 6. capacity

    def capacity(self) -> None:
        """The capacity sweep of every server (:mod:`bench.capacity`), then ours in Redis
        mode."""
        c = self.sizes.capacity
        plan = Plan(c.start, c.max_tasks, c.max_steps, c.resolution, c.seconds)
        # Long enough that no task ends before the window does, even when started last.
        text = replay_input(int((c.ramp + c.warmup + c.window + 2.0) * 1000 / c.pace_ms), c.pace_ms)
        sweeps: dict[str, Sweep] = {}
        for label, args, proto in (
            ("ours", ("gateway", "--source", "replay"), "gateway"),
            ("socket.io", ("socketio", "--source", "replay"), "socketio"),
            ("SSE", ("sse", "--source", "replay"), "sse"),
            ("raw", ("raw",), "raw"),
        ):
            sweeps[label] = self._sweep(label, args, proto, text, plan)
        redis = self.redis_server()
        sweeps["ours, Redis mode"] = self._sweep(
            "ours, Redis mode",
            ("gateway", "--source", "replay", "--redis", redis.url),
            "gateway",
            text,
            plan,
            redis,
        )
        case = (
            f"tasks streaming ~{1000 / c.pace_ms:.0f} tokens/s each, one process, "
            f"delivery p99 ≤ {c.p99_ms:g} ms"
        )
        peers = ("socket.io", "SSE")
        for ours_label, others in (
            ("ours", ("socket.io", "SSE", "raw")),
            ("ours, Redis mode", ("ours", "socket.io", "SSE", "raw")),
        ):
            figure = sweeps[ours_label].capacity
            bases = {
                ("ours, in memory" if k == "ours" else k): summary([sweeps[k].capacity])
                for k in others
            }
            raw = sweeps["raw"].capacity
            met = (
                figure > 0
                and figure >= 2 * max(sweeps[k].capacity for k in peers)
                and figure >= 0.5 * raw
            )
            self.add(
                Row(
                    "capacity",
                    case if ours_label == "ours" else f"{case}, Redis mode",
                    "tasks",
                    "tasks",
                    True,
                    summary([float(figure)]),
                    bases,
                    "≥ 2× each peer, ≥ 0.5× raw",
                    met,
                    "; ".join(self._sweep_note(k, sweeps[k]) for k in (ours_label, *others))
                    if ours_label == "ours"
                    else self._sweep_note(ours_label, sweeps[ours_label])
                    + "; the others as in the row above",
                    {k: self._sweep_detail(sweeps[k]) for k in (ours_label, *others)},
                )
            )

    def _sweep(
        self,
        label: str,
        args: tuple[str, ...],
        proto: str,
        text: str,
        plan: Plan,
        redis: RedisServer | None = None,
    ) -> Sweep:
        result = sweep(lambda n: self._capacity_step(label, args, proto, text, n, redis), plan)
        bracket = f" (fails at {result.failed_at})" if result.failed_at else " (no failure)"
        self.log(f"  {label}: {result.capacity} tasks{bracket}, {result.stopped}")
        return result

    def _capacity_step(
        self,
        label: str,
        args: tuple[str, ...],
        proto: str,
        text: str,
        n: int,
        redis: RedisServer | None,
    ) -> Step:
        """``n`` paced tasks on a fresh server, measured by several load-generator processes
        over one common window."""
        c = self.sizes.capacity
        conns = max(1, -(-n // c.tasks_per_conn))
        procs = max(1, min(c.clients, conns))
        if redis is not None:
            redis.flushall()
        with server(*args) as srv:
            spec: dict[str, Any] = {"workload": "capacity", "host": "127.0.0.1"}
            spec["proto"] = proto
            spec |= {"port": srv.port, "total": n, "conns": conns, "procs": procs}
            spec |= {"ramp": c.ramp, "warmup": c.warmup, "window": c.window}
            spec |= {"pace_ms": c.pace_ms, "input": text}
            gens = [_Generator({**spec, "index": j}) for j in range(procs)]
            try:
                for gen in gens:
                    gen.ready()
                start_at = time.time() + 0.3
                for gen in gens:
                    gen.go(start_at)
                window_start = start_at + c.ramp + c.warmup
                time.sleep(max(0.0, window_start - time.time()))
                cpu0 = srv.cpu_s()
                redis0 = redis.cpu_s() if redis is not None else 0.0
                time.sleep(max(0.0, window_start + c.window - time.time()))
                server_cpu = (srv.cpu_s() - cpu0) / c.window
                redis_cpu = (redis.cpu_s() - redis0) / c.window if redis is not None else 0.0
                results = [gen.result() for gen in gens]
            except _GeneratorFailed as exc:
                self.log(f"    {label} {n}: the load generator failed: {exc}")
                why = f"load generator failed: {exc}"
                detail = {"n": n, "conns": conns, "ok": False, "why": why, "delivered": 0.0}
                return Step(n, False, detail | {"errors": n, "client_procs": procs})
            finally:
                for gen in gens:
                    gen.stop()
        hist = merge(r["hist"] for r in results)
        delivered = sum(r["events"] for r in results)
        expected = n * c.window * 1000 / c.pace_ms
        errors = sum(r["errors"] for r in results)
        ok, why = verdict(
            hist, delivered, expected, errors, p99_ms=c.p99_ms, min_delivered=c.min_delivered
        )
        detail = {
            "n": n,
            "conns": conns,
            "ok": ok,
            "why": why,
            # None: no event at all in the window
            **{k: _finite(percentile(hist, q)) for k, q in (("p50", 0.5), ("p99", 0.99))},
            "p999": _finite(percentile(hist, 0.999)),
            "delivered": delivered / expected,
            "errors": errors,
            "server_cpu": server_cpu,
            "redis_cpu": redis_cpu,
            "client_cpu": sum(r["client_cpu"] for r in results),
            "client_cpu_max": max(r["client_cpu"] for r in results),
            "client_procs": procs,
        }
        p99 = "–" if detail["p99"] is None else f"{detail['p99']:.3g}"
        self.log(
            f"    {label} {n} tasks: p99 {p99} ms, {detail['delivered']:.1%} "
            f"delivered, server {server_cpu:.2f} cores"
            + (f" + Redis {redis_cpu:.2f}" if redis is not None else "")
            + f", load generator {detail['client_cpu']:.2f} ({procs} proc.) → "
            + ("pass" if ok else f"fail: {why}")
        )
        return Step(n, ok, detail)

    @staticmethod
    def _sweep_detail(result: Sweep) -> dict[str, Any]:
        return {
            "capacity": result.capacity,
            "failed_at": result.failed_at,
            "stopped": result.stopped,
            "steps": [s.detail for s in result.steps],
        }

    def _sweep_note(self, label: str, result: Sweep) -> str:
        """The bracket and what was busy at its two ends."""

        def cpu(step: Step | None) -> str:
            if step is None or "server_cpu" not in step.detail:
                return ""
            d = step.detail
            redis = f" + Redis {d['redis_cpu']:.2f}" if d["redis_cpu"] else ""
            saturated = " (saturated)" if d["client_cpu_max"] >= 0.9 else ""
            cores = os.cpu_count() or 1
            busy = d["server_cpu"] + d["redis_cpu"] + d["client_cpu"]
            machine = f", all {cores} cores busy" if busy >= 0.9 * cores else ""
            return (
                f"server {d['server_cpu']:.2f}{redis} cores, clients {d['client_cpu']:.2f} "
                f"({d['client_procs']} proc.){saturated}{machine}"
            )

        passed = result.step(result.capacity)
        text = f"{label} {result.capacity}"
        if passed is not None and passed.detail.get("p99") is not None:
            text += f" (p99 {passed.detail['p99']:.3g} ms, {cpu(passed)})"
        if result.failed_at is None:
            return text + f", no failing step up to it ({result.stopped}: a lower bound)"
        failed = result.step(result.failed_at)
        assert failed is not None
        why = "; ".join(x for x in (failed.detail.get("why", ""), cpu(failed)) if x)
        return text + f", fails at {result.failed_at} ({why})"

    # ------------------------------------------------------------------ 7. Redis mode

    def redis(self) -> None:
        """Redis mode against the in-memory backend in the same run (issue 11). Per run, one
        in-memory gateway (M) and two Redis-mode gateways on the run's Redis (A, B) serve the
        throughput, resume and cancel figures; the latency and workers rows have their own."""
        s = self.sizes
        redis = self.redis_server()
        url = ("--redis", redis.url)
        replay = ("gateway", "--source", "replay")
        tp: dict[str, Any] = {"workload": "throughput", "proto": "gateway", "encoding": "json"}
        tp |= {"conns": 1, "tasks": 100, "events": s.redis_tp_events}
        stream = replay_input(100_000, 10)
        resume: dict[str, Any] = {"workload": "resume", "proto": "gateway", "input": stream}
        resume["samples"] = s.redis_samples
        cancel: dict[str, Any] = {"workload": "cancel", "proto": "gateway", "input": stream}
        cancel |= {"trigger": "llm", "samples": s.redis_samples, "concurrency": 4}
        rates: dict[str, list[float]] = {"memory": [], "redis": []}
        costs: dict[str, list[float]] = {"memory": [], "redis": []}
        split: list[tuple[float, float]] = []
        pairs = ("other node", "same node, Redis", "same node, in memory")
        res: dict[str, list[dict[str, Any]]] = {label: [] for label in pairs}
        can: dict[str, list[dict[str, Any]]] = {label: [] for label in pairs}
        for _ in range(s.runs):
            redis.flushall()
            with server(*replay) as m, server(*replay, *url) as a:
                for mode, gw in (("memory", m), ("redis", a)):
                    client({**tp, "port": gw.port, "tasks": 10, "events": 20})  # warm-up
                    cpu0, redis0 = gw.cpu_s(), redis.cpu_s()
                    result = client({**tp, "port": gw.port})
                    gw_cpu, redis_cpu = gw.cpu_s() - cpu0, redis.cpu_s() - redis0
                    rates[mode].append(result["rate"])
                    events = max(1, result["covered"])
                    costs[mode].append((gw_cpu + redis_cpu) / events * 1e6)
                    if mode == "redis":
                        split.append((gw_cpu / events * 1e6, redis_cpu / events * 1e6))
                with server(*replay, *url) as b:
                    for label, (x, y) in zip(pairs, ((a, b), (a, None), (m, None)), strict=True):
                        ports = {"port": x.port, "port_b": y.port if y is not None else None}
                        res[label].append(client({**resume, **ports}))
                        can[label].append(client({**cancel, **ports}))

        name = f"1 conn × 100 tasks ({s.redis_tp_events} events each), json"
        ours = summary(rates["redis"])
        base = summary(rates["memory"])
        self.add(
            Row(
                "redis",
                f"throughput, {name}",
                "events/s",
                "events/s",
                True,
                ours,
                {"in memory": base},
                "≥ 0.5× in memory",
                ours["median"] >= 0.5 * base["median"],
                "replayed tasks, as the throughput rows; every event is stored in Redis before "
                "it is sent",
            )
        )
        ours = summary(costs["redis"])
        base = summary(costs["memory"])
        gw_us = statistics.median(g for g, _ in split)
        redis_us = statistics.median(r for _, r in split)
        self.add(
            Row(
                "redis",
                f"CPU per event (gateway + redis-server), {name}",
                "CPU µs/event",
                "µs",
                False,
                ours,
                {"in memory": base},
                "≤ 2× in memory",
                ours["median"] <= 2 * base["median"],
                f"CPU time of the server processes ÷ events delivered (clock ticks of 10 ms); "
                f"Redis mode: gateway {gw_us:.3g} µs + redis-server {redis_us:.3g} µs (medians)",
            )
        )

        # Delivery latency, as the latency rows (demo agent, ~20 deltas/s per task).
        words = int((s.lat_seconds + s.lat_warmup) * 20 * 1.5) + 40
        text = "What is 17*23+4? " + " ".join(f"w{i}" for i in range(words))
        lat: dict[str, Any] = {"workload": "latency", "proto": "gateway", "input": text}
        lat |= {"conns": s.lat_conns, "tasks": s.lat_tasks, "pace_ms": 50.0}
        lat |= {"seconds": s.lat_seconds, "warmup": s.lat_warmup}
        demo50 = ("gateway", "--source", "demo", "--config", self.demo_config(50))
        memory_runs = self._latency_ours
        if not memory_runs:  # the latency step did not run (--only)
            for _ in range(s.runs):
                with server(*demo50) as gw:
                    memory_runs.append(client({**lat, "port": gw.port}))
        redis_runs = []
        for _ in range(s.runs):
            redis.flushall()
            with server(*demo50, *url) as gw:
                redis_runs.append(client({**lat, "port": gw.port}))
        ours = summary([r["p99"] for r in redis_runs])
        base = summary([r["p99"] for r in memory_runs])
        p50s = (
            statistics.median(r["p50"] for r in redis_runs),
            statistics.median(r["p50"] for r in memory_runs),
        )
        n = s.lat_conns * s.lat_tasks
        self.add(
            Row(
                "redis",
                f"delivery latency, {n} tasks / {s.lat_conns} conns, ~20 deltas/s each, p99",
                "p99",
                "ms",
                False,
                ours,
                {"in memory": base},
                "≤ 2× in memory",
                ours["median"] <= 2 * base["median"],
                f"demo agent, as the latency rows (in memory: the same runs); p50 "
                f"{p50s[0]:.3g} ms in Redis mode, {p50s[1]:.3g} ms in memory",
            )
        )

        # Resume and cancel across two gateways on one Redis, against one gateway.
        for what, runs, target in (
            ("resume: subscribe on gateway B → first replayed event, task on A", res, None),
            ("cancel on gateway B → `task_cancelled` on B, task on A", can, 20.0),
        ):
            kinds = {k for r in runs["other node"] for k in r.get("terminal_kinds", {})}
            for pct in ("p50", "p99"):
                ours = summary([r[pct] for r in runs["other node"]])
                bases = {k: summary([r[pct] for r in v]) for k, v in runs.items()}
                del bases["other node"]
                met = None
                if target is not None and pct == "p99":
                    met = ours["median"] <= target and kinds == {"TaskCancelled"}
                note = "replayed tasks streaming an event every 10 ms; Redis mode: two gateway "
                note += "processes on one Redis; baselines: both connections on one gateway"
                if kinds:
                    note += f"; terminal events: {sorted(kinds)}"
                self.add(
                    Row(
                        "redis",
                        f"{what}, {pct}",
                        pct,
                        "ms",
                        False,
                        ours,
                        bases,
                        f"p99 ≤ {target:g} ms" if met is not None else "",
                        met,
                        note,
                    )
                )

        # `ospark serve --workers 2` against 1, as users run it (default limits).
        conns, tasks = s.workers_load
        spec: dict[str, Any] = {"workload": "throughput", "proto": "gateway", "encoding": "json"}
        spec |= {"conns": conns, "tasks": tasks, "events": 0, "input": "What is 17*23+4?"}
        demo0 = self.demo_config(0)
        per_workers: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(s.runs):
            for workers in (1, 2):
                redis.flushall()
                with serve_workers(demo0, redis.url, workers) as port:
                    client({**spec, "port": port, "conns": 2, "tasks": 2})  # warm-up
                    per_workers[workers].append(client({**spec, "port": port})["rate"])
        ours = summary(per_workers[2])
        self.add(
            Row(
                "redis",
                f"throughput, {conns} conns × {tasks} demo tasks, `ospark serve --workers 2`",
                "events/s",
                "events/s",
                True,
                ours,
                {"--workers 1": summary(per_workers[1])},
                note=f"Redis mode, default limits; {os.cpu_count()} cores shared by the "
                "workers, redis-server and the load generator",
            )
        )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class _GeneratorFailed(RuntimeError):
    """A load-generator process of a capacity step exited or said nothing."""


class _Generator:
    """One load-generator process of a capacity step (``bench.client`` ``capacity``)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.client", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            cwd=ROOT,
        )

    def _line(self, key: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(f'{{"{key}"'):
                value: dict[str, Any] = json.loads(line)
                return value
        self.proc.wait(10)
        self.stderr.seek(0)
        lines = self.stderr.read().strip().splitlines()
        raise _GeneratorFailed(lines[-1] if lines else f"exit code {self.proc.returncode}")

    def ready(self) -> None:
        self._line("ready")

    def go(self, start_at: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"start_at": start_at}) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = self._line("result")["result"]
        return result

    def stop(self) -> None:
        """Its result is in (or the step failed): it need not close its connections nicely,
        and the next step should not wait for it."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()
