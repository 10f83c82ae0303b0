"""What the HTTP adapters share: who is calling, the limits of ``start``, and a bounded feed
of one task's events for a streamed HTTP response.

Both adapters authenticate exactly like the WebSocket handshake
(:func:`gateway.server.auth.authenticate`: bearer token or ``?token=``, ``Origin`` and ``Host``
checks) and refuse with the same statuses (401, 403; 503 while draining), counted in
``ospark_connections_rejected`` under the same labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from starlette.requests import Request
from starlette.types import Message

from gateway.server.auth import authenticate
from gateway.tasks import Delivery, TaskError, TaskManager
from protocol.errors import ErrorCode
from protocol.events import TERMINAL_STATES, Event
from protocol.frames import EventFrame, Gap

__all__ = [
    "Caller",
    "Feed",
    "Refusal",
    "StartGate",
    "authorize",
    "open_stream",
    "parse_last_event_id",
    "read_body",
]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused before it reaches the task manager."""

    status: int
    reason: str
    label: str
    """The ``ospark_connections_rejected`` label."""


@dataclass(frozen=True, slots=True)
class Caller:
    principal: str
    manager: TaskManager


class _AdapterMetrics:
    """The adapters' own series, beside the gateway's (tasks, refusals, latencies)."""

    def __init__(self, registry: Any) -> None:
        self.requests = Counter(
            "ospark_adapter_requests", "Adapter requests accepted", ["adapter"], registry=registry
        )
        self.streams = Gauge(
            "ospark_adapter_streams", "Open adapter event streams", ["adapter"], registry=registry
        )


_metrics: weakref.WeakKeyDictionary[Any, _AdapterMetrics] = weakref.WeakKeyDictionary()


def _metrics_of(gw: Any) -> _AdapterMetrics:
    found = _metrics.get(gw.metrics)
    if found is None:
        found = _metrics[gw.metrics] = _AdapterMetrics(gw.metrics.registry)
    return found


def authorize(request: Request, adapter: str) -> Caller | Refusal:
    """The caller of an adapter request, or why it is refused (the WebSocket's rules)."""
    gw = request.app.state.gateway
    verdict = authenticate(request.headers, request.query_params, gw.settings)
    if verdict.principal is None:
        label = "unauthorized" if verdict.status == 401 else "forbidden"
        refusal = Refusal(verdict.status, verdict.reason, label)
    elif gw.draining or gw.manager is None:
        refusal = Refusal(503, "server shutting down", "draining")
    else:
        _metrics_of(gw).requests.labels(adapter).inc()
        return Caller(verdict.principal, gw.manager)
    gw.metrics.rejected.labels(refusal.label).inc()
    return refusal


@contextlib.contextmanager
def open_stream(request: Request, adapter: str) -> Iterator[None]:
    """Counts an event stream in ``ospark_adapter_streams`` while it is open."""
    gauge = _metrics_of(request.app.state.gateway).streams.labels(adapter)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


async def read_body(request: Request, limit: int) -> Request | None:
    """The request with its body read, or ``None`` when the body is over ``limit`` bytes (read
    no further than that)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    body = b"".join(chunks)
    receive = request.receive
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:  # what comes after the body: the client's disconnect
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, replay)


def parse_last_event_id(request: Request) -> int | None:
    """The ``Last-Event-ID`` header as a ``seq`` (``None`` when absent); raises ``ValueError``
    with a clear message when it is not one."""
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return None
    try:
        seq = int(raw.strip())
    except ValueError:
        raise ValueError(f"Last-Event-ID {raw[:40]!r} is not an event seq (an integer)") from None
    if seq < 0:
        raise ValueError("Last-Event-ID must be a seq >= 0")
    return seq


class StartGate:
    """The ``start`` limits of the WebSocket endpoint, per principal for the HTTP adapters:
    input length and a token bucket of starts per second."""

    def __init__(self, max_input_chars: int, starts_per_second: float) -> None:
        self.max_input_chars = max_input_chars
        self.rate = starts_per_second
        self.burst = max(1.0, starts_per_second)
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, principal: str, text: str) -> None:
        """Raise :class:`TaskError` (``invalid_field``, ``input_too_long``, ``rate_limited``)."""
        if not text.strip():
            raise TaskError(
                ErrorCode.INVALID_FIELD, "the message has no text; say what the task is"
            )
        if len(text) > self.max_input_chars:
            raise TaskError(
                ErrorCode.INPUT_TOO_LONG,
                f"input of {len(text)} characters exceeds the limit of {self.max_input_chars}",
            )
        now = time.monotonic()
        tokens, stamp = self._buckets.get(principal, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[principal] = (tokens, now)
            raise TaskError(
                ErrorCode.RATE_LIMITED, f"more than {self.rate:g} starts per second; slow down"
            )
        self._buckets[principal] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # forget the principals that have been quiet longest
            for key in list(self._buckets)[:5_000]:
                del self._buckets[key]


class Feed:
    """One task's deliveries for one HTTP response: filled synchronously by the subscription
    (``feed.deliver``), read with ``async for``. Bounded: past ``limit`` waiting items the
    feed ends as a slow consumer (``overflowed``), and the client resumes from its last seq."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.overflowed = False
        self.finished = False
        self._items: deque[Delivery] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, item: Delivery) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self.limit:
            self.overflowed = True
        else:
            self._items.append(item)
            if type(item) is EventFrame and type(item.event) in TERMINAL_STATES:
                self.finished = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        items = self._items
        while True:
            while items:
                item = items.popleft()
                yield item
                if type(item) is EventFrame and type(item.event) in TERMINAL_STATES:
                    return
            if self.overflowed:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None


def is_terminal(item: Delivery) -> bool:
    return type(item) is not Gap and type(item.event) in TERMINAL_STATES  # type: ignore[union-attr]


async def terminal_event(manager: TaskManager, owner: str, task_id: str, last_seq: int) -> Event:
    """The terminal event of a finished task (its log's last frame)."""
    logged = await manager.backend.read(owner, task_id, max(0, last_seq - 1))
    if logged is None or not logged.frames:
        raise TaskError(ErrorCode.UNKNOWN_TASK, f"no task {task_id!r}", task_id=task_id)
    return logged.frames[-1].event
