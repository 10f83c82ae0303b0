"""The benchmark suite: starts each server in its own process, drives it from a client process,
and measures every figure against its baselines in the same run (median, min and max of
several runs). See :mod:`bench` for what is measured and why."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway.testing import write_demo_config

__all__ = ["SIZES", "Sizes", "Suite", "environment"]

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]


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


SIZES = {
    "smoke": Sizes(1, (200, 20, 5), (100, 10, 5), 4, 2, 2, 0.5, 0.3, (10,), (10,), 2, 1, 3),
    "quick": Sizes(
        2,
        (5000, 100, 20),
        (2000, 50, 10),
        50,
        20,
        10,
        3.0,
        1.0,
        (200, 1000),
        (200, 1000),
        10,
        4,
        20,
    ),
    "full": Sizes(
        3,
        (20_000, 300, 50),
        (5000, 100, 20),
        200,
        100,
        10,
        6.0,
        2.0,
        (1000, 5000),
        (1000, 10_000),
        40,
        12,
        50,
    ),
}


# --------------------------------------------------------------------------- processes


class Server:
    """One server process (``python -m bench.servers``)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.servers", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
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
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


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
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
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

    def __init__(self, size: str, log: Callable[[str], None] = print) -> None:
        self.size_name = size
        self.sizes = SIZES[size]
        self.log = log
        self.rows: list[Row] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="ospark-bench-"))

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
        for step in (self.throughput, self.latency, self.scale, self.cancel, self.first_event):
            started = time.monotonic()
            self.log(f"[{step.__name__}]")
            step()
            self.log(f"  ({time.monotonic() - started:.0f} s)")
        return self.rows

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
                    met = ours_ratio_b32 >= 0.5 and ours["median"] >= 2 * worst_peer
                    self.add(
                        Row(
                            "throughput",
                            f"{name}, {encoding}",
                            "events/s",
                            "events/s",
                            True,
                            ours,
                            {**raws, **peers},
                            "≥ 0.5× raw batch 32, ≥ 2× each peer",
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
                    "p99 ≤ 10 ms" if pct == "p99" else "",
                    ours["median"] <= 10.0 if pct == "p99" else None,
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
            self.add(
                Row(
                    "scale",
                    f"{n} idle connections: server memory per connection",
                    "KB/conn",
                    "KB",
                    False,
                    ours,
                    {"raw": summary(per_conn["raw"])},
                    "≤ 40 KB",
                    ours["median"] <= 40,
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
                        "p99 ≤ 50 ms" if pct == "p99" else "",
                        (ours["median"] <= 50 and kinds == {"TaskCancelled"})
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
            self.add(
                Row(
                    "first event",
                    f"time to first event after start (demo agent), {pct}",
                    pct,
                    "ms",
                    False,
                    ours,
                    {k: summary([r[pct] for r in v]) for k, v in res.items() if k != "ours"},
                    note="raw: request → pre-built event; peers run the same demo agent",
                )
            )
