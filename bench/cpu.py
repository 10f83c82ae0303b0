"""CPU per event and memory per idle connection of a server process, on a busy machine.

Wall-clock figures are meaningless while other jobs share the cores; the server's own CPU
time (user + system, from ``/proc``) per event barely moves with contention. Runs::

    python -m bench.cpu throughput --conns 1 --tasks 100 --events 300 [--encoding msgpack]
    python -m bench.cpu throughput --tasks 100 --profile prof.txt   # + py-spy of the gateway
    python -m bench.cpu throughput --redis         # Redis mode: + redis-server's CPU
    python -m bench.cpu first --samples 200        # CPU per start → first event → end (demo)
    python -m bench.cpu idle --conns 1000 [--trace] # KB per idle connection, ours and raw

Each prints one JSON line per measured case. ``--profile`` samples the gateway with py-spy
during the measured runs and prints the functions with the most samples (own and total);
``--trace`` runs the gateway under ``tracemalloc`` and prints the allocation sites that grew
with the idle connections.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from bench.redis_mode import RedisServer, cpu_s
from bench.suite import PY, ROOT, client, holding_client, server
from gateway.testing import write_demo_config

__all__ = ["main"]


def _throughput(args: argparse.Namespace) -> None:
    spec = {
        "workload": "throughput",
        "proto": "gateway",
        "encoding": args.encoding,
        "conns": args.conns,
        "tasks": args.tasks,
        "events": args.events,
    }
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer()) if args.redis else None
        extra = ("--redis", redis.url) if redis is not None else ()
        srv = stack.enter_context(server("gateway", "--source", "replay", *extra))
        client({**spec, "port": srv.port})  # warm-up: imports, caches, allocator
        per_event: list[float] = []
        redis_per_event: list[float] = []
        rates: list[float] = []
        spy = _spy(srv.pid, args.profile) if args.profile else None
        for _ in range(args.runs):
            if redis is not None:
                redis0 = redis.cpu_s()
            before = cpu_s(srv.pid)
            result = client({**spec, "port": srv.port})
            spent = cpu_s(srv.pid) - before
            events = max(1, result["events"])
            per_event.append(spent / events * 1e6)
            if redis is not None:
                redis_per_event.append((redis.cpu_s() - redis0) / events * 1e6)
            rates.append(result["rate"])
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    case = f"{args.conns} conn × {args.tasks} tasks × {args.events}, {args.encoding}"
    out: dict[str, object] = {
        "case": case + (", Redis mode" if args.redis else ""),
        "server_cpu_us_per_event_median": round(statistics.median(per_event), 3),
        "min": round(min(per_event), 3),
        "runs_us": [round(x, 3) for x in per_event],
        "events_per_s_wall_median": round(statistics.median(rates)),
    }
    if redis_per_event:
        out["redis_cpu_us_per_event_median"] = round(statistics.median(redis_per_event), 3)
    print(json.dumps(out))


def _spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or str(Path(PY).with_name("py-spy"))
    proc = subprocess.Popen(
        [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached
    return proc


def _top(path: str, n: int = 25) -> None:
    """The functions with the most samples in a py-spy raw (collapsed) profile."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        samples += k
        # "function (file:line)" → "function (file)": one entry per function.
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in stack.split(";")]
        own[frames[-1]] += k
        for name in set(frames):
            total[name] += k
    print(json.dumps({"profile": path, "samples": samples}))
    print("own %   total %  function")
    for name, k in own.most_common(n):
        print(f"{100 * k / samples:5.1f}   {100 * total[name] / samples:6.1f}   {name}")


def _first(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp()
    config = write_demo_config(Path(tmp), 0, sub_agents={})
    spec = {
        "workload": "first_event",
        "proto": "gateway",
        "samples": args.samples,
        "input": "What is 17*23+4?",
    }
    with server("gateway", "--source", "demo", "--config", config) as srv:
        client({**spec, "port": srv.port, "samples": 20})
        per_start: list[float] = []
        p50: list[float] = []
        for _ in range(args.runs):
            before = cpu_s(srv.pid)
            result = client({**spec, "port": srv.port})
            per_start.append((cpu_s(srv.pid) - before) / args.samples * 1e6)
            p50.append(result["p50"])
    print(
        json.dumps(
            {
                "case": "start → first event → end, demo agent",
                "server_cpu_us_per_start_median": round(statistics.median(per_start), 1),
                "min": round(min(per_start), 1),
                "runs_us": [round(x, 1) for x in per_start],
                "wall_p50_ms_median": round(statistics.median(p50), 3),
            }
        )
    )


_TRACED = """
import signal, sys, tracemalloc
tracemalloc.start(12)
out = sys.argv[1]
def dump(*_):
    tracemalloc.take_snapshot().dump(out + "." + str(dump.n))
    dump.n += 1
dump.n = 0
signal.signal(signal.SIGUSR1, dump)
from bench.servers import main
main(["gateway", "--source", "replay"])
"""


def _idle(args: argparse.Namespace) -> None:
    warm = {"workload": "first_event", "samples": 1, "input": "replay:3:0"}
    for label, kind in (("ours", "gateway"), ("raw", "raw")):
        per_conn = []
        for _ in range(args.runs):
            with server(kind) as srv:
                client({**warm, "proto": kind, "port": srv.port})
                time.sleep(0.3)
                before = srv.rss_kb()
                with holding_client({"proto": kind, "port": srv.port, "conns": args.conns}):
                    time.sleep(0.5)
                    after = srv.rss_kb()
                per_conn.append((after - before) * 1024 / args.conns / 1000)
        print(
            json.dumps(
                {
                    "case": f"{args.conns} idle connections, {label}",
                    "kb_per_conn_median": round(statistics.median(per_conn), 2),
                    "runs": [round(x, 2) for x in per_conn],
                }
            )
        )
    if args.trace:
        _trace_idle(args.conns)


def _trace(args: argparse.Namespace) -> None:
    _trace_idle(args.conns)


def _trace_idle(conns: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = str(Path(tmp) / "snap")
        proc = subprocess.Popen(
            [PY, "-c", _TRACED, base],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            port, pid = info["port"], info["pid"]
            warm = {"workload": "first_event", "proto": "gateway", "port": port, "samples": 1}
            client({**warm, "input": "replay:3:0"})
            time.sleep(0.3)
            os.kill(pid, signal.SIGUSR1)
            with holding_client({"proto": "gateway", "port": port, "conns": conns}):
                time.sleep(0.5)
                os.kill(pid, signal.SIGUSR1)
                for _ in range(100):
                    if Path(base + ".1").exists():
                        break
                    time.sleep(0.1)
                time.sleep(1.0)  # the dump is written
            first = tracemalloc.Snapshot.load(base + ".0")
            second = tracemalloc.Snapshot.load(base + ".1")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    stats = second.compare_to(first, "traceback")
    total = sum(s.size_diff for s in stats)
    print(json.dumps({"case": "tracemalloc growth per idle connection", "bytes": total / conns}))
    for stat in stats[:60]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback]
        where = " < ".join(frames[-4:][::-1])
        print(f"{stat.size_diff / conns:8.1f} B/conn {stat.count_diff / conns:5.2f} obj  {where}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu")
    sub = parser.add_subparsers(dest="what", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--conns", type=int, default=1)
    tp.add_argument("--tasks", type=int, default=100)
    tp.add_argument("--events", type=int, default=300)
    tp.add_argument("--encoding", choices=["json", "msgpack"], default="json")
    tp.add_argument("--runs", type=int, default=5)
    tp.add_argument("--profile", default=None, help="py-spy raw profile to write")
    tp.add_argument("--redis", action="store_true", help="Redis mode, on a redis-server of its own")
    first = sub.add_parser("first")
    first.add_argument("--samples", type=int, default=200)
    first.add_argument("--runs", type=int, default=3)
    idle = sub.add_parser("idle")
    idle.add_argument("--conns", type=int, default=1000)
    idle.add_argument("--runs", type=int, default=2)
    idle.add_argument("--trace", action="store_true")
    trace = sub.add_parser("trace", help="only the tracemalloc part of idle")
    trace.add_argument("--conns", type=int, default=1000)
    args = parser.parse_args(argv)
    {"throughput": _throughput, "first": _first, "idle": _idle, "trace": _trace}[args.what](args)
    if getattr(args, "profile", None):
        _top(args.profile)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
