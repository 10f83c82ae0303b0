"""Soak and chaos run against real ``ospark serve`` processes: ``make soak`` (not part of
``make test``), or ``python -m soak --duration 60``.

Phases, each against a gateway process of its own or the shared one, all on 127.0.0.1:

- ``churn``: clients connecting, starting tasks, then waiting, cancelling or abandoning them,
  for ``--duration`` seconds; afterwards every task is replayed from ``seq`` 0 on a fresh
  connection: each must end exactly once, with no ``seq`` missing;
- ``fuzz``: 10,000 malformed frames on one connection, then a normal task on it;
- ``kill -9``: a client process killed mid-stream, the task resumed from another connection
  after the last ``seq`` it printed;
- ``attacks``: tiny and empty fragments, a ping flood from a client that never reads,
  half-sent request heads, sockets with a bad token; the server must refuse each at its bound
  and its RSS must come back;
- ``sigterm``: SIGTERM with 100 tasks running: every task's terminal event arrives exactly
  once and the process exits 0.

Prints one row per phase (tasks, tasks ending exactly once, lost events, RSS start/peak/end,
event-loop lag p99 from ``ospark_event_loop_lag_seconds``, error lines in the server's log)
and exits 1 on any loss, any task not ending exactly once, an error line, a refused bound
not enforced, or RSS growth past ``--max-growth-mb``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

TERMINAL = frozenset({"task_completed", "task_failed", "task_cancelled"})
ROOT = Path(__file__).resolve().parents[1]
TOKEN = "soak-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
QUESTIONS = ["What is 17*23+4?", "What time is it?", "Tell me about WebSockets.", "2+2"]


# -- a gateway process ---------------------------------------------------------------------------


@dataclass
class Gateway:
    proc: asyncio.subprocess.Process
    port: int
    log: list[str]
    rss_peak: int = 0
    _sampler: asyncio.Task[None] | None = None
    _collector: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss(self) -> int:
        """Resident set size in bytes (0 once the process is gone)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(found.group(1)) * 1024 if found else 0

    async def _sample(self) -> None:
        while self.proc.returncode is None:
            self.rss_peak = max(self.rss_peak, self.rss())
            await asyncio.sleep(0.1)

    def reset_peak(self) -> int:
        self.rss_peak = self.rss()
        return self.rss_peak

    def error_lines(self, since: int = 0) -> list[str]:
        bad = []
        for line in self.log[since:]:
            try:
                level = json.loads(line).get("level")
            except ValueError:
                bad.append(line)  # a traceback or anything not a log line
                continue
            if level in ("error", "critical"):
                bad.append(line)
        return bad

    async def get(self, path: str) -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n".encode()
        )
        data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace")

    async def lag_buckets(self) -> dict[float, float]:
        _, text = await self.get("/metrics")
        buckets = {}
        for m in re.finditer(r'ospark_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)', text):
            buckets[float(m.group(1))] = float(m.group(2))
        return buckets

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await self.proc.wait()
        for task in (self._sampler, self._collector):
            if task is not None:
                await task
        return code


@contextlib.asynccontextmanager
async def gateway(config: Path, *extra: str) -> AsyncIterator[Gateway]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--config",
        str(config),
        "--handshake-timeout",
        "2",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OSPARK_TOKENS": f"soak:{TOKEN}"},
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    banner = (await proc.stdout.readline()).decode()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
    if found is None:
        err = (await proc.stderr.read()).decode()
        raise SystemExit(f"soak: the gateway did not start: {banner!r} {err}")
    gw = Gateway(proc, int(found.group(1)), [])
    stderr = proc.stderr

    async def collect() -> None:
        async for raw in stderr:
            gw.log.append(raw.decode("utf-8", "replace").rstrip("\n"))

    gw._collector = asyncio.create_task(collect())
    gw._sampler = asyncio.create_task(gw._sample())
    try:
        yield gw
    finally:
        await gw.stop()


def p99_ms(before: dict[float, float], after: dict[float, float]) -> str:
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get(float("inf"), 0)
    if total <= 0:
        return "-"
    for le in sorted(delta):
        if delta[le] >= 0.99 * total:
            return "> 10000" if le == float("inf") else f"≤ {le * 1000:g}"
    return "-"


# -- a client ------------------------------------------------------------------------------------


async def connect(url: str, token: str = TOKEN) -> ClientConnection:
    ws = await websockets.connect(
        url,
        subprotocols=["ospark.v1.json"],  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token}"},
        max_size=None,
        open_timeout=30,
    )
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello", hello
    return ws


def events_of(frame: dict[str, Any]) -> list[dict[str, Any]]:
    if frame.get("type") == "event":
        return [frame]
    if frame.get("type") == "batch":
        return list(frame["events"])
    return []


@dataclass
class Ledger:
    """Every task started, and what a replay of it showed."""

    started: set[str] = field(default_factory=set)
    live_terminals: dict[str, int] = field(default_factory=dict)

    def saw(self, event: dict[str, Any]) -> None:
        if event["event"]["kind"] in TERMINAL:
            tid = event["task_id"]
            self.live_terminals[tid] = self.live_terminals.get(tid, 0) + 1


async def verify(url: str, task_ids: list[str]) -> tuple[int, int, list[str]]:
    """Replay each task from seq 0 once it has ended: (ended exactly once, lost events,
    problems)."""
    ended_once = lost = 0
    problems: list[str] = []
    for start in range(0, len(task_ids), 50):
        chunk = task_ids[start : start + 50]
        ws = await connect(url)
        seqs: dict[str, list[int]] = {t: [] for t in chunk}
        terminals: dict[str, int] = dict.fromkeys(chunk, 0)
        first: dict[str, int] = dict.fromkeys(chunk, 1)
        for i, tid in enumerate(chunk):
            await ws.send(
                json.dumps({"type": "subscribe", "id": f"v{i}", "task_id": tid, "after_seq": 0})
            )
        pending = set(chunk)
        while pending:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "gap":
                first[frame["task_id"]] = frame["first_available_seq"]
            elif frame.get("type") == "error":
                problems.append(f"{frame.get('task_id')}: {frame['code']}")
                pending.discard(frame.get("task_id") or "")
            for event in events_of(frame):
                tid = event["task_id"]
                seqs[tid].append(event["seq"])
                if event["event"]["kind"] in TERMINAL:
                    terminals[tid] += 1
                    pending.discard(tid)
        await ws.close()
        for tid in chunk:
            got = seqs[tid]
            if terminals[tid] == 1:
                ended_once += 1
            else:
                problems.append(f"{tid}: {terminals[tid]} terminal events")
            if got:
                expected = set(range(first[tid], max(got) + 1))
                missing = expected - set(got)
                lost += len(missing)
                if len(got) != len(set(got)):
                    problems.append(f"{tid}: duplicate seqs")
    return ended_once, lost, problems


# -- phases --------------------------------------------------------------------------------------


@dataclass
class Row:
    phase: str
    tasks: int = 0
    ended_once: int = 0
    lost: int = 0
    rss: tuple[int, int, int] = (0, 0, 0)
    lag_p99: str = "-"
    errors: int = 0
    ok: bool = True
    note: str = ""


async def churn_worker(
    url: str, deadline: float, ledger: Ledger, rng: random.Random, n: int
) -> None:
    serial = 0
    while time.monotonic() < deadline:
        ws = await connect(url)
        ids = []
        for _ in range(rng.randint(1, 4)):
            serial += 1
            tid = f"churn-{n}-{serial}"
            ids.append(tid)
            ledger.started.add(tid)
            start = {"type": "start", "id": tid, "task_id": tid, "input": rng.choice(QUESTIONS)}
            await ws.send(json.dumps(start))
        mode = rng.choice(["finish", "cancel", "abandon"])
        open_ids = set(ids)
        seen = 0
        cancelled = False
        while open_ids:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "error" and frame.get("id") in open_ids:
                ledger.started.discard(frame["id"])  # refused (a limit): not a task
                open_ids.discard(frame["id"])
            for event in events_of(frame):
                ledger.saw(event)
                seen += 1
                if event["event"]["kind"] in TERMINAL:
                    open_ids.discard(event["task_id"])
            if mode == "cancel" and not cancelled and seen >= 3:
                cancelled = True
                for tid in ids:
                    await ws.send(json.dumps({"type": "cancel", "id": f"c-{tid}", "task_id": tid}))
            if mode == "abandon" and seen >= rng.randint(1, 20):
                break
        if mode == "abandon" and rng.random() < 0.5:
            ws.transport.abort()  # gone without a close frame
        else:
            await ws.close()


async def phase_churn(gw: Gateway, duration: float, workers: int, seed: int) -> Row:
    row = Row("churn")
    lag0 = await gw.lag_buckets()
    log0 = len(gw.log)
    start_rss = gw.reset_peak()
    ledger = Ledger()
    deadline = time.monotonic() + duration
    await asyncio.gather(
        *(
            churn_worker(gw.url, deadline, ledger, random.Random(seed + i), i)
            for i in range(workers)
        )
    )
    tasks = sorted(ledger.started)
    row.tasks = len(tasks)
    row.ended_once, row.lost, problems = await verify(gw.url, tasks)
    duplicates = [t for t, n in ledger.live_terminals.items() if n > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} tasks delivered two terminal events live")
    row.rss = (start_rss, gw.rss_peak, gw.rss())
    row.lag_p99 = p99_ms(lag0, await gw.lag_buckets())
    row.errors = len(gw.error_lines(log0))
    row.ok = not problems and row.ended_once == row.tasks and row.lost == 0
    row.note = "; ".join(problems[:3]) or f"{workers} clients for {duration:g}s"
    return row


def fuzz_frames(rng: random.Random, n: int) -> list[str | bytes]:
    valid: list[dict[str, Any]] = [
        {"type": "ping", "id": "p"},
        {"type": "status", "id": "s"},
        {"type": "cancel", "id": "c", "task_id": "nope"},
        {"type": "subscribe", "id": "u", "task_id": "nope", "after_seq": 0},
        {"type": "unsubscribe", "id": "x", "task_id": "nope"},
    ]
    out: list[str | bytes] = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            out.append("".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 64))))
        elif kind == 1:
            out.append(os.urandom(rng.randint(0, 256)))
        elif kind == 2:
            text = json.dumps(rng.choice(valid))
            pos = rng.randrange(len(text))
            out.append(
                text[:pos] + rng.choice(["", "}", "\x00", "\\", '"', "9" * 30]) + text[pos + 1 :]
            )
        elif kind == 3:
            out.append(json.dumps({"type": rng.choice(["start", "bogus", "", 1, None]), "id": i}))
        elif kind == 4:
            out.append("[" * rng.randint(1, 5000) + "]" * rng.randint(0, 5000))
        elif kind == 5:
            frame: dict[str, Any] = dict(rng.choice(valid))
            frame[rng.choice(["id", "task_id", "after_seq", "type"])] = rng.choice(
                [None, -1, 2**70, [], {}, "x" * 300, "job\n", 1.5]
            )
            out.append(json.dumps(frame))
        elif kind == 6:
            out.append(
                json.dumps({"type": "start", "id": f"f{i}", "input": rng.choice(["", 7, None])})
            )
        else:
            out.append('{"type":"ping","id":"' + "\\ud800" * rng.randint(1, 4) + '"}')
    return out


async def phase_fuzz(gw: Gateway, seed: int) -> Row:
    row = Row("fuzz", tasks=1)
    log0 = len(gw.log)
    lag0 = await gw.lag_buckets()
    start_rss = gw.reset_peak()
    ws = await connect(gw.url)
    replies: dict[str, int] = {}
    done = asyncio.Event()
    final: dict[str, int] = {"terminals": 0}

    async def read() -> None:
        async for raw in ws:
            frame = json.loads(raw)
            replies[frame.get("type", "?")] = replies.get(frame.get("type", "?"), 0) + 1
            for event in events_of(frame):
                if event["task_id"] == "after-fuzz" and event["event"]["kind"] in TERMINAL:
                    final["terminals"] += 1
                    done.set()
            retry = frame.get("type") == "error" and frame.get("id") == "after-fuzz"
            if retry and frame["code"] == "rate_limited":
                await asyncio.sleep(0.2)
                await ws.send(json.dumps(after))

    after = {"type": "start", "id": "after-fuzz", "task_id": "after-fuzz", "input": "2+2"}
    reader = asyncio.create_task(read())
    for frame in fuzz_frames(random.Random(seed), 10_000):
        await ws.send(frame)
    await ws.send(json.dumps(after))
    try:
        async with asyncio.timeout(60):
            await done.wait()
        row.ended_once = final["terminals"]
        row.ok = final["terminals"] == 1
        row.note = f"10,000 frames, {replies.get('error', 0)} errors back, connection alive"
    except TimeoutError:
        row.ok = False
        row.note = f"no task after the fuzz (close {ws.close_code})"
    await ws.close()
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
        await reader
    row.rss = (start_rss, gw.rss_peak, gw.rss())
    row.lag_p99 = p99_ms(lag0, await gw.lag_buckets())
    row.errors = len(gw.error_lines(log0))
    row.ok = row.ok and row.errors == 0
    return row


KILL_CLIENT = """
import asyncio, json, sys, websockets
async def main():
    ws = await websockets.connect(sys.argv[1], subprotocols=["ospark.v1.json"],
        additional_headers={"Authorization": "Bearer " + sys.argv[3]}, max_size=None)
    await ws.recv()
    await ws.send(json.dumps({"type": "start", "id": "k", "task_id": sys.argv[2],
        "input": "Tell me about WebSockets and then what is 17*23+4?"}))
    async for raw in ws:
        f = json.loads(raw)
        for e in ([f] if f["type"] == "event" else f.get("events", [])):
            print(e["seq"], flush=True)
asyncio.run(main())
"""


async def phase_kill9(gw: Gateway, rounds: int = 5) -> Row:
    row = Row("kill -9 + resume", tasks=rounds)
    log0 = len(gw.log)
    start_rss = gw.reset_peak()
    mid_stream = 0
    problems = []
    for n in range(rounds):
        tid = f"kill9-{n}"
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", KILL_CLIENT, gw.url, tid, TOKEN, stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None
        seqs: list[int] = []
        while len(seqs) < 3:
            line = await child.stdout.readline()
            if not line:
                break
            seqs.append(int(line))
        child.kill()
        rest, _ = await child.communicate()
        seqs += [int(x) for x in rest.split()]
        last = max(seqs, default=0)
        ws = await connect(gw.url)
        await ws.send(
            json.dumps({"type": "subscribe", "id": "r", "task_id": tid, "after_seq": last})
        )
        resumed: list[int] = []
        terminals = 0
        while terminals == 0:
            frame = json.loads(await ws.recv())
            if frame.get("type") == "error":
                problems.append(f"{tid}: {frame['code']}")
                break
            for event in events_of(frame):
                resumed.append(event["seq"])
                terminals += event["event"]["kind"] in TERMINAL
        await ws.close()
        if len(resumed) > 1:
            mid_stream += 1
        if resumed != list(range(last + 1, last + 1 + len(resumed))):
            row.lost += len(set(range(last + 1, max(resumed, default=last) + 1)) - set(resumed))
            problems.append(f"{tid}: resumed seqs not contiguous after {last}")
        row.ended_once += terminals == 1
    row.rss = (start_rss, gw.rss_peak, gw.rss())
    row.errors = len(gw.error_lines(log0))
    row.ok = not problems and row.ended_once == rounds and row.errors == 0
    row.note = "; ".join(problems[:3]) or f"{mid_stream}/{rounds} killed mid-stream"
    return row


def ws_frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + b"\0\0\0\0" + payload


async def raw_upgrade(port: int, token: str, rcvbuf: int | None = None) -> tuple[Any, Any, bytes]:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


async def close_code(reader: asyncio.StreamReader) -> int | None:
    """Read server frames until its close frame (None at end of stream)."""
    try:
        while True:
            first, second = await reader.readexactly(2)
            n = second & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(n)
            if first & 0x0F == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None


async def phase_attacks(gw: Gateway, max_growth: int) -> Row:
    row = Row("resource attacks")
    log0 = len(gw.log)
    lag0 = await gw.lag_buckets()
    start_rss = gw.reset_peak()
    verdicts = []

    async def fragments(piece: bytes) -> int | None:
        reader, writer, head = await raw_upgrade(gw.port, TOKEN)
        assert head.startswith(b"HTTP/1.1 101"), head
        closed = asyncio.create_task(close_code(reader))  # read while sending
        writer.write(ws_frame(0x1, b"{", fin=False))
        chunk = ws_frame(0x0, piece, fin=False) * 10_000
        for _ in range(400):  # at most 4,000,000 fragments
            if closed.done():
                break
            try:
                writer.write(chunk)
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                break
        code = await closed
        writer.close()
        return code

    async def transport_closes(reason: str) -> float:
        _, text = await gw.get("/metrics")
        found = re.search(rf'ospark_transport_closes_total{{reason="{reason}"}} (\S+)', text)
        return float(found.group(1)) if found else 0.0

    before = await transport_closes("fragments")
    codes = await asyncio.gather(*(fragments(b"x") for _ in range(4)))
    codes += await asyncio.gather(*(fragments(b"") for _ in range(4)))
    counted = await transport_closes("fragments") - before
    verdicts.append(("8 fragment floods", counted == 8, f"{counted:g} closed (codes {set(codes)})"))

    before = await transport_closes("ping_flood")
    _reader, writer, _head = await raw_upgrade(gw.port, TOKEN, rcvbuf=4096)
    cut = False
    burst = ws_frame(0x9, b"p" * 125) * 1000
    for _ in range(1000):  # at most 1,000,000 pings
        try:
            writer.write(burst)
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            cut = True
            break
    writer.close()
    cut = cut and await transport_closes("ping_flood") - before == 1
    verdicts.append(("ping flood", cut, "cut off" if cut else "never cut off"))

    async def half_sent() -> bool:
        r, w = await asyncio.open_connection("127.0.0.1", gw.port)
        w.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        eof = await r.read() == b""
        w.close()
        return eof

    dropped = await asyncio.gather(*(half_sent() for _ in range(200)))
    verdicts.append(("200 half-sent heads", all(dropped), f"{sum(dropped)} dropped"))

    async def bad_token() -> bool:
        _r, w, head = await raw_upgrade(gw.port, "wrong-token-0000000000")
        w.close()
        return head.startswith(b"HTTP/1.1 401")

    refused = await asyncio.gather(*(bad_token() for _ in range(100)))
    verdicts.append(("100 bad tokens", all(refused), f"{sum(refused)} × 401"))

    status, _ = await gw.get("/healthz")
    verdicts.append(("healthz after", status == 200, str(status)))
    row.rss = (start_rss, gw.rss_peak, gw.rss())
    row.lag_p99 = p99_ms(lag0, await gw.lag_buckets())
    row.errors = len(gw.error_lines(log0))
    grew = row.rss[2] - row.rss[0]
    failed = [name for name, ok, _ in verdicts if not ok]
    row.ok = not failed and row.errors == 0 and grew < max_growth
    row.note = ", ".join(f"{name}: {what}" for name, _, what in verdicts)
    return row


async def phase_sigterm(config: Path, tasks: int = 100) -> Row:
    row = Row("SIGTERM under load", tasks=tasks)
    async with gateway(config, "--shutdown-deadline", "1") as gw:
        start_rss = gw.reset_peak()
        conns = [await connect(gw.url) for _ in range(4)]
        terminals: dict[str, int] = {}
        closes: list[int | None] = []
        running: set[str] = set()
        all_running = asyncio.Event()

        async def run(ws: ClientConnection, k: int) -> None:
            ids = [f"term-{k}-{i}" for i in range(tasks // len(conns))]
            for tid in ids:
                start = {"type": "start", "id": tid, "task_id": tid, "input": QUESTIONS[2]}
                await ws.send(json.dumps(start))
                await asyncio.sleep(0.03)  # under the start rate limit
            try:
                async for raw in ws:
                    for event in events_of(json.loads(raw)):
                        running.add(event["task_id"])  # it has streamed: it runs
                        if event["event"]["kind"] in TERMINAL:
                            terminals[event["task_id"]] = terminals.get(event["task_id"], 0) + 1
                    if len(running) == tasks:
                        all_running.set()
            except websockets.ConnectionClosed:
                pass
            closes.append(ws.close_code)

        runners = [asyncio.create_task(run(ws, k)) for k, ws in enumerate(conns)]
        await all_running.wait()  # every task has sent an event
        log0 = len(gw.log)
        peak = gw.rss_peak
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        code = await gw.proc.wait()
        took = time.monotonic() - t0
        await asyncio.gather(*runners)
        row.ended_once = sum(1 for n in terminals.values() if n == 1)
        row.rss = (start_rss, max(peak, gw.rss_peak), 0)
        row.errors = len(gw.error_lines(log0))
        row.ok = (
            code == 0 and row.ended_once == tasks and len(terminals) == tasks and row.errors == 0
        )
        row.note = f"exit {code} in {took:.1f}s, closes {sorted(set(closes), key=str)}"
    return row


# -- the run -------------------------------------------------------------------------------------


def mb(n: int) -> str:
    return f"{n / 2**20:.0f}"


def table(rows: list[Row]) -> str:
    head = (
        "| phase | tasks | ended once | lost events | RSS MB start/peak/end | loop lag p99 ms "
        "| error lines | result | notes |"
    )
    lines = [head, "|---|---:|---:|---:|---|---|---:|---|---|"]
    for r in rows:
        rss = "/".join(mb(x) for x in r.rss) if r.rss[0] else "-"
        lines.append(
            f"| {r.phase} | {r.tasks:,} | {r.ended_once:,} | {r.lost} | {rss} | {r.lag_p99} "
            f"| {r.errors} | {'ok' if r.ok else 'FAIL'} | {r.note} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    workdir = ROOT / "artifacts" / "soak"
    workdir.mkdir(parents=True, exist_ok=True)
    demo = (ROOT / "gateway" / "configs" / "demo.yaml").read_text(encoding="utf-8")
    pace = "${oc.env:OSPARK_DEMO_PACE_MS,20}"
    fast, slow = workdir / "demo-fast.yaml", workdir / "demo-slow.yaml"
    fast.write_text(demo.replace(pace, str(args.pace_ms)), encoding="utf-8")
    slow.write_text(demo.replace(pace, "50"), encoding="utf-8")
    max_growth = args.max_growth_mb * 2**20
    rows: list[Row] = []
    async with gateway(fast) as gw:
        start = gw.rss()
        print(
            f"soak: gateway pid {gw.proc.pid} on port {gw.port}, {args.duration:g}s of churn",
            file=sys.stderr,
        )
        rows.append(await phase_churn(gw, args.duration, args.clients, args.seed))
        rows.append(await phase_fuzz(gw, args.seed))
        rows.append(await phase_kill9(gw))
        rows.append(await phase_attacks(gw, max_growth))
        end = gw.rss()
        whole = Row("whole run (one process)", rss=(start, gw.rss_peak, end))
        whole.tasks = sum(r.tasks for r in rows)
        whole.ended_once = sum(r.ended_once for r in rows)
        whole.lost = sum(r.lost for r in rows)
        whole.errors = len(gw.error_lines())
        whole.ok = end - start < max_growth and whole.errors == 0
        whole.note = f"RSS growth limit {args.max_growth_mb} MB"
        (workdir / "server.log").write_text("\n".join(gw.log) + "\n", encoding="utf-8")
    rows.append(await phase_sigterm(slow))
    rows.append(whole)
    text = table(rows)
    print(text)
    (workdir / "result.md").write_text(text + "\n", encoding="utf-8")
    return 0 if all(r.ok for r in rows) else 1


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of churn (60)")
    parser.add_argument("--clients", type=int, default=16, help="churning clients (16)")
    parser.add_argument("--pace-ms", type=int, default=2, help="demo model pace per word (2)")
    parser.add_argument("--max-growth-mb", type=int, default=256, help="RSS growth allowed (256)")
    parser.add_argument("--seed", type=int, default=17)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
