"""CPU time per event of the gateway process and of ``redis-server``, Redis mode against memory.

Wall-clock figures mean little on a shared machine; the CPU time a process spends per event is
far less disturbed by other load. Run from the checkout::

    python bench/redis_cpu.py [--rounds 5] [--conns 1] [--tasks 100] [--pace 0] [--profile DIR]

For each mode (in memory, Redis) it starts one gateway (the demo agent, by default without
pacing, as the throughput row of ``bench/redis_mode.py``; ``--pace 50`` is the latency row's
~20 deltas/s per task), runs ``--rounds`` times ``--conns`` connections × ``--tasks`` tasks
each, and reads the processes' CPU time (user + system, ``/proc/<pid>/stat``) around each
round. With ``--watchers`` a second gateway on the same Redis follows every task (a client
subscribes to each through it), so the subscriber path of another node is measured too. With
``--profile DIR`` the gateways are sampled by ``py-spy`` during the rounds; the top functions
(by samples on the CPU, own and with callees) are printed and the raw profiles kept in DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.redis_mode import TASK, Conn, demo_config, free_port, redis_server
from protocol import Accepted, Start, Subscribe
from protocol.events import TERMINAL_STATES
from protocol.frames import EventFrame

HERE = Path(__file__).resolve()
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, system: bool = False) -> float:
    """User + system CPU time of a process so far (only system time with ``system``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[12]) + (0 if system else int(fields[11]))) / TICK


@asynccontextmanager
async def gateway(
    directory: Path, redis_url: str | None, pace: int
) -> AsyncIterator[tuple[str, int]]:
    args = ["--port", str(free_port()), "--config", demo_config(directory, pace)]
    if redis_url:
        args += ["--redis", redis_url]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE.with_name("redis_mode.py")),
        "--serve",
        *args,
        cwd=HERE.parents[1],
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    url = ""
    while not url:
        line = await proc.stderr.readline()
        if not line:
            raise RuntimeError("the gateway exited before listening")
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "listening":
            url = record["url"]
    drain = asyncio.create_task(_drain(proc.stderr))
    try:
        yield url, proc.pid
    finally:
        proc.terminate()
        await proc.wait()
        drain.cancel()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def run_round(
    url: str, conns: int, tasks: int, watch_url: str | None
) -> tuple[int, int, int]:
    """``conns`` connections × ``tasks`` demo tasks. Returns (events, events watched,
    WebSocket messages received by the runner's clients)."""
    counts = await asyncio.gather(*(run_conn(url, tasks, watch_url) for _ in range(conns)))
    return sum(c[0] for c in counts), sum(c[1] for c in counts), sum(c[2] for c in counts)


async def run_conn(url: str, tasks: int, watch_url: str | None) -> tuple[int, int, int]:
    """1 connection × ``tasks`` demo tasks; with ``watch_url`` a connection to another gateway
    subscribes to each task once accepted. Returns (events on the runner, events watched,
    messages on the runner)."""
    conn = await Conn.open(url)
    watcher = await Conn.open(watch_url) if watch_url else None
    for i in range(tasks):
        await conn.send(Start(id=conn.rid(), input=f"{TASK} {i}"))
    done = events = watched = messages = 0
    watched_done = 0

    async def watch() -> None:
        nonlocal watched, watched_done
        assert watcher is not None
        while watched_done < tasks:
            for frame in await watcher.frames():
                for item in getattr(frame, "events", None) or [frame]:
                    if isinstance(item, EventFrame):
                        watched += 1
                        if type(item.event) in TERMINAL_STATES:
                            watched_done += 1

    watching = asyncio.create_task(watch()) if watcher else None
    while done < tasks:
        messages += 1
        for frame in await conn.frames():
            if isinstance(frame, Accepted) and watcher is not None:
                await watcher.send(Subscribe(id=watcher.rid(), task_id=frame.task_id))
            for item in getattr(frame, "events", None) or [frame]:
                if isinstance(item, EventFrame):
                    events += 1
                    if type(item.event) in TERMINAL_STATES:
                        done += 1
    if watching is not None:
        await watching
    await conn.close()
    if watcher is not None:
        await watcher.close()
    return events, watched, messages


def profile_summary(path: Path, top: int) -> str:
    """Top functions of a py-spy raw profile, by own samples and by samples with callees."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = stack.split(";")
        n += k
        own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    out = [f"{path.name}: {n} samples", "  own:"]
    out += [f"    {c / n:6.1%}  {f}" for f, c in own.most_common(top)]
    out += ["  with callees:"]
    out += [f"    {c / n:6.1%}  {f}" for f, c in total.most_common(top * 2)]
    return "\n".join(out)


async def measure(
    mode: str,
    redis_url: str | None,
    rounds: int,
    conns: int,
    tasks: int,
    pace: int,
    watchers: bool,
    profile: Path | None,
    directory: Path,
    native: bool = False,
) -> dict[str, Any]:
    redis_pid = 0
    if redis_url:
        client: Any = redis.Redis.from_url(redis_url)
        redis_pid = int(client.info("server")["process_id"])
        client.close()
    async with gateway(directory, redis_url, pace) as (url, pid):
        second = gateway(directory, redis_url, pace) if watchers and redis_url else None
        watch_url, watch_pid = (await second.__aenter__()) if second else (None, 0)
        try:
            await run_round(url, 1, 10, watch_url)  # warm-up
            spies = []
            if profile is not None and shutil.which("py-spy"):
                for name, p in (("runner", pid), ("watcher", watch_pid)):
                    if p:
                        out = profile / f"{mode}-{name}.txt"
                        spy = await asyncio.create_subprocess_exec(
                            *("py-spy", "record", "--pid", str(p), "--rate", "200"),
                            *("--nolineno", "--format", "raw", "--output", str(out)),
                            *(("--native",) if native else ()),
                            "--nonblocking",
                            stdout=asyncio.subprocess.DEVNULL,
                            stderr=asyncio.subprocess.DEVNULL,
                        )
                        spies.append((out, spy))
                await asyncio.sleep(1.0)  # py-spy attaches
            if redis_url:
                client = redis.Redis.from_url(redis_url)
                client.config_resetstat()
            cpu = {"gateway": 0.0, "redis": 0.0, "watcher": 0.0, "gateway_sys": 0.0}
            events = watched = messages = 0
            started = time.perf_counter()
            for _ in range(rounds):
                sys_before = cpu_seconds(pid, system=True)
                before = (
                    cpu_seconds(pid),
                    cpu_seconds(redis_pid) if redis_pid else 0.0,
                    cpu_seconds(watch_pid) if watch_pid else 0.0,
                )
                e, w, m = await run_round(url, conns, tasks, watch_url)
                events += e
                watched += w
                messages += m
                cpu["gateway"] += cpu_seconds(pid) - before[0]
                cpu["gateway_sys"] += cpu_seconds(pid, system=True) - sys_before
                if redis_pid:
                    cpu["redis"] += cpu_seconds(redis_pid) - before[1]
                if watch_pid:
                    cpu["watcher"] += cpu_seconds(watch_pid) - before[2]
            elapsed = time.perf_counter() - started
            if redis_url:
                stats = client.info("commandstats")
                client.close()
                print("redis-server commands (calls per event, µs per event):")
                for name, st in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])[:12]:
                    print(
                        f"  {name[len('cmdstat_') :]:<14} {st['calls'] / events:8.3f} "
                        f"{st['usec'] / events:8.2f}"
                    )
            for _, spy in spies:
                spy.send_signal(2)  # SIGINT: py-spy writes its profile
                await spy.wait()
        finally:
            if second is not None:
                await second.__aexit__(None, None, None)
    result: dict[str, Any] = {
        "events": events,
        "wall_s": round(elapsed, 2),
        "events_per_message": round(events / max(messages, 1), 1),
        "gateway_cpu_us_per_event": round(cpu["gateway"] / events * 1e6, 1),
        "of_which_system": round(cpu["gateway_sys"] / events * 1e6, 1),
    }
    if redis_pid:
        result["redis_cpu_us_per_event"] = round(cpu["redis"] / events * 1e6, 1)
    if watch_pid:
        result["watched_events"] = watched
        result["watcher_cpu_us_per_event"] = round(cpu["watcher"] / max(watched, 1) * 1e6, 1)
    for out, _ in spies:
        if out.exists():
            print(profile_summary(out, 15))
    return result


async def main(opts: argparse.Namespace) -> None:
    profile = Path(opts.profile) if opts.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url:
        for mode, url in (("memory", None), ("redis", redis_url)):
            if opts.only and mode != opts.only:
                continue
            results[mode] = await measure(
                mode,
                url,
                opts.rounds,
                opts.conns,
                opts.tasks,
                opts.pace,
                opts.watchers,
                profile,
                Path(tmp),
                opts.native,
            )
            print(mode, json.dumps(results[mode]), flush=True)
    results["load_average"] = list(os.getloadavg())  # type: ignore[assignment]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=100, help="per connection")
    parser.add_argument("--pace", type=int, default=0, help="ms between the demo's deltas")
    parser.add_argument("--watchers", action="store_true")
    parser.add_argument("--only", choices=("memory", "redis"))
    parser.add_argument("--profile", help="a folder for py-spy profiles of the gateways")
    parser.add_argument("--native", action="store_true", help="py-spy: C frames too")
    asyncio.run(main(parser.parse_args()))
