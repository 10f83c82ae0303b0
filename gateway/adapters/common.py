"""What the HTTP adapters share: who is calling, the limits of ``start``, the start of a task
as a thread's next turn (:func:`start_turn`, with the adapters' busy-thread policy), the
``ospark`` start options a request may carry (:func:`start_options`), a bounded feed of one
task's events for a streamed HTTP response, and the subscriptions kept open while a task waits
for an answer (:class:`Parked`).

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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, get_args

import msgspec
from prometheus_client import Counter, Gauge
from starlette.requests import Request
from starlette.types import Message

from gateway.server.auth import authenticate
from gateway.tasks import Delivery, StartResult, Subscription, TaskError, TaskManager
from protocol.errors import ErrorCode
from protocol.events import TERMINAL_STATES, Event, InputRequired
from protocol.frames import DetachPolicy, EventFrame, Gap, IfBusy, StartOptions, ThreadId

__all__ = [
    "Caller",
    "Feed",
    "Parked",
    "Refusal",
    "StartGate",
    "asks",
    "authorize",
    "checked_id",
    "open_stream",
    "parse_last_event_id",
    "read_body",
    "start_options",
    "start_turn",
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
        self.check_length(text)
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

    def check_length(self, text: str | None) -> None:
        """Raise ``input_too_long`` when ``text`` (an input, an answer, a steering message) is
        over the input limit."""
        if text is not None and len(text) > self.max_input_chars:
            raise TaskError(
                ErrorCode.INPUT_TOO_LONG,
                f"text of {len(text)} characters exceeds the limit of {self.max_input_chars}",
            )


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
        self._parked: Callable[[], None] | None = None

    def park(self, on_end: Callable[[], None]) -> None:
        """Nobody reads this feed any more, but its subscription stays open (see
        :class:`Parked`): drop what comes, and call ``on_end`` at the task's end."""
        self._items.clear()
        self._parked = on_end

    def deliver(self, item: Delivery) -> None:
        if self._parked is not None:
            if is_terminal(item):
                self._parked()
            return
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


def asks(item: Delivery, settled_seq: int = 0, pending: str | None = None) -> bool:
    """Whether ``item`` is a question still open, where a stream ends: an ``input_required``
    after ``settled_seq`` (the ``last_seq`` of a status taken before the subscription), or the
    one that status said is ``pending``. (An earlier one, replayed, has been answered.)"""
    if type(item) is not EventFrame or type(item.event) is not InputRequired:
        return False
    return item.seq > settled_seq or item.event.request.request_id == pending


def is_terminal(item: Delivery) -> bool:
    return type(item) is not Gap and type(item.event) in TERMINAL_STATES  # type: ignore[union-attr]


async def terminal_event(manager: TaskManager, owner: str, task_id: str, last_seq: int) -> Event:
    """The terminal event of a finished task (its log's last frame)."""
    logged = await manager.backend.read(owner, task_id, max(0, last_seq - 1))
    if logged is None or not logged.frames:
        raise TaskError(ErrorCode.UNKNOWN_TASK, f"no task {task_id!r}", task_id=task_id)
    return logged.frames[-1].event


# --------------------------------------------------------------------------- threads and options


def checked_id(value: str, what: str) -> str:
    """``value`` when it is a valid task or thread id, else ``invalid_field`` naming ``what``."""
    try:
        return msgspec.convert(value, type=ThreadId)
    except msgspec.ValidationError:
        raise TaskError(
            ErrorCode.INVALID_FIELD,
            f"{what} must be 1-128 characters of letters, digits and . _ : - (got {value[:40]!r})",
        ) from None


_OPTION_FIELDS = frozenset(StartOptions.__struct_fields__)
_IF_BUSY = get_args(IfBusy)


def start_options(
    value: Any, where: str, *, on_detach: DetachPolicy | None = None
) -> tuple[StartOptions, IfBusy | None]:
    """The ``start`` options and busy-thread policy a request carries under ``where`` (an
    object with :class:`~protocol.frames.StartOptions` fields and ``if_busy``), checked as the
    WebSocket's ``start`` checks them; ``on_detach`` is the adapter's default detach policy
    (``keep`` instead when the request gives a ``detach_ttl``). Raises ``invalid_field``."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise TaskError(ErrorCode.INVALID_FIELD, f"{where} must be an object of start options")
    raw = {k: _whole(v) for k, v in value.items()}
    if_busy = raw.pop("if_busy", None)
    if if_busy is not None and if_busy not in _IF_BUSY:
        raise TaskError(
            ErrorCode.INVALID_FIELD, f"{where}.if_busy must be one of {', '.join(_IF_BUSY)}"
        )
    unknown = sorted(set(raw) - _OPTION_FIELDS)
    if unknown:
        raise TaskError(
            ErrorCode.INVALID_FIELD,
            f"{where}.{unknown[0]} is not a start option (known: if_busy, "
            + ", ".join(sorted(_OPTION_FIELDS))
            + ")",
        )
    try:
        options = msgspec.convert(raw, type=StartOptions)
    except msgspec.ValidationError as exc:
        raise TaskError(ErrorCode.INVALID_FIELD, str(exc).replace("`$", f"`{where}")) from None
    if options.on_detach is None and on_detach is not None:
        policy: DetachPolicy = "keep" if options.detach_ttl is not None else on_detach
        options = msgspec.structs.replace(options, on_detach=policy)
    return options, if_busy


def _whole(value: Any) -> Any:
    """A JSON number that is a whole float (as protobuf's ``Struct`` gives every number) as an
    ``int``, so that integer options accept it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


async def start_turn(
    caller: Caller,
    gate: StartGate,
    text: str,
    *,
    thread_id: str,
    options: StartOptions,
    if_busy: IfBusy | None,
    feed_limit: int,
    task_id: str | None = None,
    how_to_answer: str = "",
) -> tuple[StartResult, Feed]:
    """Start ``text`` as the next turn of ``thread_id``, subscribed to a new :class:`Feed`.

    The adapters' busy-thread policy when the request names none (``if_busy`` ``None``): the
    new turn waits for the thread's unfinished one (``enqueue``), unless that one waits for an
    answer: then the start is refused (``thread_busy``, naming the waiting task), since the
    new turn would wait for the answer the client is asked for. Raises :class:`TaskError`."""
    gate.check(caller.principal, text)
    manager, owner = caller.manager, caller.principal
    feed = Feed(feed_limit)

    async def start(policy: IfBusy) -> StartResult:
        return await manager.start(
            owner,
            text,
            task_id=task_id,
            options=options,
            deliver=feed.deliver,
            thread_id=thread_id,
            if_busy=policy,
        )

    if if_busy is not None:
        return await start(if_busy), feed
    try:
        return await start("reject"), feed
    except TaskError as exc:
        if exc.code != ErrorCode.THREAD_BUSY or exc.task_id is None:
            raise
        busy = await manager.status(owner, exc.task_id)
        if busy.state == "input_required" and busy.pending_input is not None:
            asked = busy.pending_input
            raise TaskError(
                ErrorCode.THREAD_BUSY,
                f"task {busy.task_id!r} of thread {thread_id!r} waits for an answer "
                f"({asked.kind} {asked.request_id!r}: {asked.prompt[:100]!r}); "
                f"answer it first{how_to_answer}",
                task_id=busy.task_id,
            ) from None
    return await start("enqueue"), feed


class Parked:
    """Subscriptions kept open while their task waits for an answer.

    A stream that ends at a question (A2A's ``input-required``, AG-UI's interrupt) leaves its
    task waiting; were its subscription closed, a task with the detach policy ``cancel`` (every
    AG-UI run) would be cancelled at once. Its subscription is parked instead: it stays open,
    dropping what comes, until the stream that carries the answer takes over
    (:meth:`release`) or the task ends (a wait that times out lets the run go on, or fail,
    under its ``on_input_timeout``)."""

    def __init__(self) -> None:
        self._subs: dict[tuple[str, str], Subscription] = {}

    def park(self, sub: Subscription, feed: Feed) -> None:
        key = (sub.owner, sub.task_id)
        old = self._subs.pop(key, None)
        self._subs[key] = sub
        if old is not None:
            old.close()

        def ended() -> None:
            if self._subs.get(key) is sub:
                del self._subs[key]

        feed.park(ended)
        if sub.closed:  # it ended meanwhile
            ended()

    def release(self, owner: str, task_id: str) -> None:
        """The task's answer has come with a stream of its own: close the parked one."""
        sub = self._subs.pop((owner, task_id), None)
        if sub is not None:
            sub.close()

    def __len__(self) -> int:
        return len(self._subs)
