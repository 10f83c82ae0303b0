"""The asyncio client: many tasks over one WebSocket, with automatic reconnect and resume.

One background reader per connection decodes every frame with the sans-I/O
:class:`protocol.ClientSession` and dispatches it: replies by request ``id`` to the coroutine
waiting for them, events by ``task_id`` to their :class:`Task`. A task keeps every event it
received, so any number of consumers can iterate :meth:`Task.events`, each from the start.

Reconnect and resume. When the socket drops (anything but a close that must not be retried:
4001 unauthorized, 4002 policy violation, or :meth:`GatewayClient.close`), the client
reconnects with exponential backoff, then sends ``subscribe {task_id, after_seq}`` with the
last ``seq`` seen for every unfinished task it follows, and resends the requests that had no
reply yet. This is safe because every request is idempotent: ``start`` always carries a
``task_id`` (the client picks one when the caller does not), so a retried ``start`` returns the
existing task. Events are de-duplicated by ``seq``, so nothing is seen twice; a ``gap`` (events
dropped by the server's retention) is recorded in :attr:`Task.gaps` and yielded by
:meth:`Task.frames`, never silently skipped.

Cancellation: every public coroutine may be cancelled; a cancelled request is forgotten (its
reply, if any, is dropped). :meth:`Task.cancel` asks the *gateway* to cancel the task; the
task's ``task_cancelled`` event follows in :meth:`Task.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from protocol import (
    JSON,
    MSGPACK,
    PROTOCOL_NAME,
    PROTOCOL_VERSION,
    TERMINAL_STATES,
    Accepted,
    Cancel,
    CancelAck,
    ClientFrame,
    ClientSession,
    CloseCode,
    Closing,
    ErrorFrame,
    Event,
    EventFrame,
    Gap,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    Start,
    StartOptions,
    StatusReply,
    StatusRequest,
    Subscribe,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskStatus,
    UnknownEvent,
    UnknownEventFrame,
    Unsubscribe,
)

from .errors import ConnectionLost, GatewayError, ProtocolMismatch, RequestError

__all__ = ["DEFAULT_URL", "GatewayClient", "Task", "TaskFrame", "Terminal"]

log = logging.getLogger("gateway.client")

DEFAULT_URL = "ws://127.0.0.1:8000/ws"

Terminal = TaskCompleted | TaskFailed | TaskCancelled
TaskFrame = EventFrame | UnknownEventFrame | Gap
"""What :meth:`Task.frames` yields: events with their ``seq``/``ts``, and ``gap`` notices."""

_R = TypeVar("_R")

_NO_RETRY = frozenset({CloseCode.UNAUTHORIZED, CloseCode.POLICY_VIOLATION})


class Task:
    """One task followed by a :class:`GatewayClient`. Made by :meth:`GatewayClient.start` or
    :meth:`GatewayClient.attach`; not constructed directly."""

    def __init__(self, client: GatewayClient, task_id: str, *, follow: bool = True) -> None:
        self._client = client
        self.task_id = task_id
        """The task's id."""
        self.last_seq = 0
        """``seq`` of the latest event received (what a resume asks to continue after)."""
        self.state = "pending"
        """``pending``, ``running``, ``completed``, ``failed`` or ``cancelled`` as far as this
        client knows."""
        self.existing = False
        """True when ``start`` returned a task that already existed (an idempotent retry)."""
        self.result: Terminal | None = None
        """The terminal event, once received."""
        self.gaps: list[Gap] = []
        """Events the gateway could no longer replay (dropped by its retention)."""
        self._frames: list[TaskFrame] = []
        self._changed: asyncio.Event | None = None  # made only when a consumer waits
        self._error: GatewayError | None = None
        self._follow = follow
        self._accepted = False

    def __repr__(self) -> str:
        return f"<Task {self.task_id} {self.state} seq={self.last_seq}>"

    @property
    def done(self) -> bool:
        """True once the terminal event was received."""
        return self.result is not None

    async def frames(self) -> AsyncIterator[TaskFrame]:
        """Every event frame (with ``seq`` and ``ts``) and ``gap`` of the task, from the first
        one received, then live; ends after the terminal event. Raises :class:`GatewayError`
        when the task can no longer be followed (e.g. the connection is lost for good)."""
        index = 0
        while True:
            while index < len(self._frames):
                frame = self._frames[index]
                index += 1
                yield frame
            if self.done:
                return
            if self._error is not None:
                raise self._error
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    async def events(self) -> AsyncIterator[Event | UnknownEvent]:
        """The task's events (typed protocol Structs; :class:`~protocol.UnknownEvent` for kinds
        this client does not know), ending after the terminal event."""
        async for frame in self.frames():
            if not isinstance(frame, Gap):
                yield frame.event

    async def wait(self) -> Terminal:
        """Wait for the terminal event and return it."""
        async for _ in self.frames():
            pass
        assert self.result is not None
        return self.result

    async def cancel(self) -> str:
        """Ask the gateway to cancel the task. Returns the ``cancel_ack`` result (``accepted``,
        ``already_terminal`` or ``unknown``); the ``task_cancelled`` event follows in
        :meth:`events` when it was accepted."""
        return await self._client.cancel(self.task_id)

    # -- fed by the client's reader

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _feed(self, frame: EventFrame | UnknownEventFrame) -> None:
        if frame.seq <= self.last_seq or self.done:
            return  # a replayed duplicate after a resume
        self.last_seq = frame.seq
        self._frames.append(frame)
        event = frame.event
        state = TERMINAL_STATES.get(type(event))
        if state is not None:
            self.state = state
            self.result = event  # type: ignore[assignment]
        elif self.state == "pending" and not isinstance(frame, UnknownEventFrame):
            self.state = "running"
        self._notify()

    def _gap(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self._frames.append(gap)
        self.last_seq = max(self.last_seq, gap.first_available_seq - 1)
        self._notify()

    def _fail(self, error: GatewayError) -> None:
        if self._error is None and not self.done:
            self._error = error
            self._notify()


@dataclass(slots=True)
class _Pending:
    frame: ClientFrame
    future: asyncio.Future[Any]


class GatewayClient:
    """A connection to an OSpark gateway carrying any number of tasks.

    ``async with GatewayClient(url, token=...) as client:`` connects (raising
    :class:`ConnectionLost` when the gateway refuses the token), and closes on exit.
    ``encoding`` is ``"msgpack"`` (the default, smaller and faster) or ``"json"``.
    With ``reconnect`` (the default) a dropped socket is re-opened for up to
    ``reconnect_timeout`` seconds and every followed task resumes where it stopped."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        encoding: Literal["msgpack", "json"] = "msgpack",
        reconnect: bool = True,
        reconnect_timeout: float = 60.0,
        max_backoff: float = 2.0,
        open_timeout: float = 10.0,
    ) -> None:
        if encoding not in ("msgpack", "json"):
            raise ValueError(f"encoding must be 'msgpack' or 'json', not {encoding!r}")
        self.url = url
        self.token = token
        self.codec = MSGPACK if encoding == "msgpack" else JSON
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self.hello: Hello | None = None
        """The gateway's ``hello`` on the current connection."""
        self.closing: Closing | None = None
        """The last ``closing`` notice received (the server was shutting down)."""
        self.errors: list[ErrorFrame] = []
        """``error`` frames that answered no pending request."""
        self.reconnects = 0
        """How many times the connection was re-established."""
        self._ws: ClientConnection | None = None
        self._session = ClientSession(self.codec)
        self._tasks: dict[str, Task] = {}
        self._pending: dict[str | int, _Pending] = {}
        self._subscribes: dict[str | int, str] = {}
        self._ids = itertools.count(1)
        self._connected = asyncio.Event()
        self._lost: GatewayError | None = None
        self._closed = False
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and read ``hello``. Raises :class:`ConnectionLost` when the
        gateway refuses the connection, ``OSError`` when it cannot be reached."""
        if self._reader is not None:
            raise RuntimeError("already connected")
        self._ws, self._session = await self._open()
        self._connected.set()
        self._reader = asyncio.create_task(self._run(), name="ospark-client-reader")

    async def close(self) -> None:
        """Close the connection. Tasks keep running on the gateway (under their detach
        policy); consumers still waiting for events get :class:`ConnectionLost`."""
        if self._closed:
            return
        self._closed = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._die(ConnectionLost("the client was closed"))

    @property
    def connected(self) -> bool:
        """Whether a connection is open right now (False while reconnecting)."""
        return self._connected.is_set() and self._lost is None

    # ------------------------------------------------------------------ requests

    async def start(
        self,
        input: str,
        *,
        task_id: str | None = None,
        options: StartOptions | Mapping[str, Any] | None = None,
        subscribe: bool = True,
    ) -> Task:
        """Start a task and return it (its events follow in :meth:`Task.events`).

        ``task_id`` defaults to a fresh random id, so a start resent after a reconnect is an
        idempotent retry. ``options`` is a :class:`~protocol.StartOptions` or a dict of its
        fields (``max_turns``, ``on_detach``, …). Raises :class:`RequestError` when refused."""
        if isinstance(options, Mapping):
            options = msgspec.convert(dict(options), StartOptions)
        task_id = task_id or f"t-{uuid.uuid4().hex[:20]}"
        task = self._tasks.get(task_id)
        created = task is None or task._error is not None
        if task is None or created:
            task = Task(self, task_id, follow=subscribe)
            self._tasks[task_id] = task
        frame = Start(
            id=self._next_id(), input=input, task_id=task_id, options=options, subscribe=subscribe
        )
        try:
            reply = await self._request(frame, Accepted)
        except BaseException:
            if created and self._tasks.get(task_id) is task:
                del self._tasks[task_id]
            raise
        task._accepted = True
        task.existing = reply.existing
        if task.state == "pending" and reply.state != "pending":
            task.state = reply.state
        return task

    async def attach(self, task_id: str, *, after_seq: int = 0) -> Task:
        """Follow an existing task (e.g. one started by another connection of the same
        principal): its events with ``seq > after_seq``, then live ones. An unknown task
        makes :meth:`Task.events` raise :class:`RequestError` (``unknown_task``)."""
        task = self._tasks.get(task_id)
        if task is not None and not task.done and task._error is None:
            return task
        task = Task(self, task_id)
        task.last_seq = after_seq
        task._accepted = True
        self._tasks[task_id] = task
        await self._subscribe(task)
        return task

    async def detach(self, task: Task | str) -> None:
        """Stop following a task (``unsubscribe``); it keeps running on the gateway."""
        task_id = task if isinstance(task, str) else task.task_id
        found = self._tasks.pop(task_id, None)
        if found is not None:
            found._fail(GatewayError(f"task {task_id} was detached"))
        await self._send(Unsubscribe(id=self._next_id(), task_id=task_id))

    async def cancel(self, task_id: str) -> str:
        """Cancel a task by id; returns ``accepted``, ``already_terminal`` or ``unknown``."""
        reply = await self._request(Cancel(id=self._next_id(), task_id=task_id), CancelAck)
        return reply.result

    async def status(self, task_id: str | None = None) -> list[TaskStatus]:
        """The state of one task, or of all tasks of this principal."""
        frame = StatusRequest(id=self._next_id(), task_id=task_id)
        reply = await self._request(frame, StatusReply)
        return reply.tasks

    async def ping(self, payload: str | None = None) -> Pong:
        """An application-level round trip."""
        return await self._request(Ping(id=self._next_id(), payload=payload), Pong)

    def task(self, task_id: str) -> Task | None:
        """The followed task with this id, if any."""
        return self._tasks.get(task_id)

    async def trace(self, task_id: str) -> dict[str, Any]:
        """The task's trace (``GET /tasks/{task_id}/trace``): messages of every agent, tool
        calls, steps, usage, timings and outcome. Raises :class:`RequestError` (``unknown_task``
        for a task this principal does not have)."""
        body = await self._http("GET", f"/tasks/{urllib.parse.quote(task_id, safe='')}/trace")
        return dict(msgspec.json.decode(body))

    async def upload(self, data: bytes, name: str, content_type: str) -> str:
        """Upload a file (``POST /files``) and return its id, to name in
        ``start(..., options={"files": [file_id]})``."""
        query = urllib.parse.urlencode({"name": name})
        body = await self._http("POST", f"/files?{query}", data, content_type)
        return str(msgspec.json.decode(body)["file_id"])

    async def _http(
        self, method: str, path: str, data: bytes | None = None, content_type: str | None = None
    ) -> bytes:
        """One HTTP request to the gateway's own host, in a thread (the client needs no HTTP
        library: the standard library's is enough for these two calls)."""
        parts = urllib.parse.urlsplit(self.url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        base = parts.path.removesuffix("/ws").rstrip("/")
        url = urllib.parse.urlunsplit((scheme, parts.netloc, base + path, "", ""))
        request = urllib.request.Request(url, data=data, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        if content_type:
            request.add_header("Content-Type", content_type)

        def send() -> bytes:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return bytes(response.read())
            except urllib.error.HTTPError as exc:
                try:
                    error = msgspec.json.decode(exc.read())
                    code, message = str(error["error"]), str(error["message"])
                except Exception:
                    code, message = "http_error", f"HTTP {exc.code}"
                raise RequestError(code, message) from None
            except OSError as exc:
                raise ConnectionLost(f"cannot reach {url}: {exc}") from None

        return await asyncio.to_thread(send)

    # ------------------------------------------------------------------ internals

    def _next_id(self) -> str:
        return f"c{next(self._ids)}"

    async def _request(self, frame: Any, reply_type: type[_R]) -> _R:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[frame.id] = _Pending(frame, future)
        try:
            await self._send(frame, resent_on_reconnect=True)
            reply = await future
        finally:
            self._pending.pop(frame.id, None)
        if isinstance(reply, ErrorFrame):
            raise RequestError(
                reply.code,
                reply.message,
                request_id=reply.id,
                task_id=reply.task_id,
                field=reply.field,
            )
        if not isinstance(reply, reply_type):
            raise GatewayError(f"unexpected reply to {type(frame).__name__}: {reply!r}")
        return reply

    async def _send(self, frame: ClientFrame, *, resent_on_reconnect: bool = False) -> None:
        while True:
            await self._connected.wait()
            if self._lost is not None:
                raise self._lost
            ws = self._ws
            assert ws is not None
            try:
                await ws.send(self._session.send(frame))
                return
            except ConnectionClosed:
                if resent_on_reconnect:
                    return  # the reconnect resends every pending request
                await asyncio.sleep(0.01)  # let the reader notice and start reconnecting

    async def _subscribe(self, task: Task) -> None:
        rid = self._next_id()
        self._subscribes[rid] = task.task_id
        await self._send(Subscribe(id=rid, task_id=task.task_id, after_seq=task.last_seq))

    async def _open(self) -> tuple[ClientConnection, ClientSession]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(
                self.url,
                subprotocols=[self.codec.subprotocol],  # type: ignore[list-item]
                additional_headers=headers,
                compression=None,
                proxy=None,
                open_timeout=self.open_timeout,
                max_size=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise ConnectionLost(f"the gateway refused the connection: HTTP {status}") from exc
        session = ClientSession(self.codec)
        try:
            first = await ws.recv()
            frames = session.receive(first)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            reason = exc.rcvd.reason if exc.rcvd else ""
            raise ConnectionLost(
                f"the gateway closed the connection ({code}: {reason or 'no reason'})",
                code=code,
                reason=reason,
            ) from exc
        except ProtocolError as exc:
            await ws.close()
            raise ProtocolMismatch(f"not an OSpark gateway: {exc.message}") from exc
        hello = frames[0]
        assert isinstance(hello, Hello)
        if hello.protocol != PROTOCOL_NAME or hello.version != PROTOCOL_VERSION:
            await ws.close()
            raise ProtocolMismatch(
                f"the gateway speaks {hello.protocol} v{hello.version}; this client speaks "
                f"{PROTOCOL_NAME} v{PROTOCOL_VERSION}"
            )
        self.hello = hello
        for frame in frames[1:]:
            self._dispatch(frame)
        return ws, session

    async def _run(self) -> None:
        """The reader: dispatch frames; on a drop, reconnect and resume, or give up."""
        while True:
            ws = self._ws
            assert ws is not None
            try:
                async for message in ws:
                    try:
                        frames = self._session.receive(message)
                    except ProtocolError as exc:
                        log.warning("undecodable frame from the gateway: %s", exc.message)
                        continue
                    for frame in frames:
                        self._dispatch(frame)
            except ConnectionClosed:
                pass
            if self._closed:
                return
            self._connected.clear()
            code, reason = ws.close_code, ws.close_reason or ""
            log.info("connection closed (%s %s)", code, reason)
            if not self.reconnect or code in _NO_RETRY:
                self._die(
                    ConnectionLost(
                        f"the gateway closed the connection ({code}: {reason or 'no reason'})",
                        code=code,
                        reason=reason,
                    )
                )
                return
            try:
                await self._reconnect()
            except GatewayError as exc:
                self._die(exc)
                return

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout
        delay = 0.05
        while True:
            try:
                ws, session = await self._open()
                break
            except ConnectionLost as exc:
                if exc.code in _NO_RETRY:
                    raise
                error: Exception = exc
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                error = exc
            if loop.time() + delay > deadline:
                raise ConnectionLost(
                    f"could not reconnect within {self.reconnect_timeout:g}s: {error}"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        self._ws, self._session = ws, session
        self.reconnects += 1
        self._subscribes.clear()
        try:
            for task in list(self._tasks.values()):
                if task._follow and task._accepted and not task.done and task._error is None:
                    rid = self._next_id()
                    self._subscribes[rid] = task.task_id
                    frame = Subscribe(id=rid, task_id=task.task_id, after_seq=task.last_seq)
                    await ws.send(session.send(frame))
            for pending in list(self._pending.values()):
                await ws.send(session.send(pending.frame))
        except ConnectionClosed:
            pass  # the reader sees the close and reconnects again
        self._connected.set()

    def _dispatch(self, frame: object) -> None:
        match frame:
            case EventFrame() | UnknownEventFrame():
                task = self._tasks.get(frame.task_id)
                if task is not None:
                    task._feed(frame)
            case Gap():
                task = self._tasks.get(frame.task_id)
                if task is not None:
                    task._gap(frame)
            case Accepted() | CancelAck() | StatusReply() | Pong():
                self._resolve(frame.id, frame)
            case ErrorFrame():
                if frame.id is not None and frame.id in self._pending:
                    self._resolve(frame.id, frame)
                elif frame.id is not None and frame.id in self._subscribes:
                    task = self._tasks.get(self._subscribes.pop(frame.id))
                    if task is not None:
                        task._fail(
                            RequestError(
                                frame.code,
                                frame.message,
                                request_id=frame.id,
                                task_id=frame.task_id,
                            )
                        )
                else:
                    log.warning("error from the gateway: %s: %s", frame.code, frame.message)
                    self.errors.append(frame)
            case Closing():
                self.closing = frame
            case _:
                pass  # hello (already read), unknown frame types: ignored

    def _resolve(self, request_id: str | int | None, reply: object) -> None:
        pending = self._pending.get(request_id) if request_id is not None else None
        if pending is not None and not pending.future.done():
            pending.future.set_result(reply)

    def _die(self, error: GatewayError) -> None:
        if self._lost is None:
            self._lost = error
        for pending in list(self._pending.values()):
            if not pending.future.done():
                pending.future.set_exception(error)
        for task in self._tasks.values():
            task._fail(error)
        self._connected.set()  # wakes senders, which then raise
