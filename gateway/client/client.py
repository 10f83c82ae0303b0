"""The asyncio client: many tasks over one WebSocket, with automatic reconnect and resume.

One background reader per connection decodes every frame with the sans-I/O
:class:`protocol.ClientSession` and dispatches it: replies by request ``id`` to the coroutine
waiting for them, events by ``task_id`` to their :class:`TaskHandle`. A task keeps every event it
received, so any number of consumers can iterate :meth:`TaskHandle.events`, each from the start.

Reconnect and resume. When the socket drops (anything but a close that must not be retried:
4001 unauthorized, 4002 policy violation, or :meth:`GatewayClient.close`), the client
reconnects with exponential backoff, resends the requests that had no reply yet, then sends
``subscribe {task_id, after_seq}`` with the last ``seq`` seen for every unfinished task it
follows. This is safe because every request is idempotent: ``start`` always carries a
``task_id`` (the client picks one when the caller does not), so a retried ``start`` returns the
existing task. Events are de-duplicated by ``seq``, so nothing is seen twice; a ``gap`` (events
dropped by the server's retention) is recorded in :attr:`TaskHandle.gaps` and yielded by
:meth:`TaskHandle.frames`, never silently skipped.

Resubscription is paced: ``resume_batch`` subscribes at a time, each batch followed by a
``ping`` whose ``pong`` comes back only after the batch's replay (a connection's replies and
events leave in order), so the next batch is sent only once the previous replay has left the
gateway. Hundreds of tasks resume without the gateway's "too much to replay at once" close.

Retried model calls. When the agent's model call breaks mid-stream and is made again, the
gateway sends a ``task_progress`` step ``retrying``, and the text that call streamed so far
comes again. :attr:`TaskHandle.superseded` holds the ``seq`` of every ``llm_response`` of such
a call, and :meth:`TaskHandle.text` returns the streamed text without them.

Cancellation: every public coroutine may be cancelled; a cancelled request is forgotten (its
reply, if any, is dropped). :meth:`TaskHandle.cancel` asks the *gateway* to cancel the task;
the task's ``task_cancelled`` event follows in :meth:`TaskHandle.events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
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
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

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
    ErrorEvent,
    ErrorFrame,
    Event,
    EventFrame,
    Gap,
    Hello,
    Input,
    InputAck,
    InputReceived,
    InputRequest,
    InputRequired,
    LlmResponse,
    Message,
    MessageAck,
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
    TaskProgress,
    TaskStatus,
    ThreadReply,
    ThreadRequest,
    ThreadsReply,
    ThreadsRequest,
    ThreadSummary,
    ThreadTask,
    UnknownEvent,
    UnknownEventFrame,
    Unsubscribe,
)
from protocol.frames import IfBusy

from .errors import CannotConnect, ConnectionLost, GatewayError, ProtocolMismatch, RequestError

__all__ = ["DEFAULT_URL", "GatewayClient", "TaskFrame", "TaskHandle", "Terminal", "Thread"]

log = logging.getLogger("gateway.client")

DEFAULT_URL = "ws://127.0.0.1:8000/ws"

Terminal = TaskCompleted | TaskFailed | TaskCancelled
TaskFrame = EventFrame | UnknownEventFrame | Gap
"""What :meth:`TaskHandle.frames` yields: events with their ``seq``/``ts``, and ``gap`` notices."""

_R = TypeVar("_R")

_NO_RETRY = frozenset({CloseCode.UNAUTHORIZED, CloseCode.POLICY_VIOLATION})
_REFUSED = frozenset({401, 403})  # HTTP statuses of a handshake that must not be retried


class TaskHandle:
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
        self.superseded: set[int] = set()
        """``seq`` of the ``llm_response`` events of model calls that were made again (after a
        ``task_progress`` step ``retrying``): their text comes again in later events."""
        self._call: dict[str, list[int]] = {}  # agent -> llm_response seqs of its current call
        self._frames: list[TaskFrame] = []
        self._changed: asyncio.Event | None = None  # made only when a consumer waits
        self._error: GatewayError | None = None
        self._follow = follow
        self._accepted = False
        self.pending_input: InputRequest | None = None
        """What the task waits for (from its latest ``input_required`` not yet resolved);
        answer with :meth:`respond` or :meth:`approve`."""

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id} {self.state} seq={self.last_seq}>"

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

    def text(
        self, channel: str = "text", *, agent: str | None = "main", phase: str | None = None
    ) -> str:
        """The text streamed so far on ``channel`` (``text`` or ``reasoning``) by ``agent``
        (``None``: every agent) in ``phase`` (``turn``, ``summary``; ``None``: both), without
        the copies superseded by a retried model call (:attr:`superseded`)."""
        parts: list[str] = []
        for frame in self._frames:
            if isinstance(frame, EventFrame) and isinstance(frame.event, LlmResponse):
                event = frame.event
                if (
                    event.channel == channel
                    and (agent is None or event.agent == agent)
                    and (phase is None or event.phase == phase)
                    and frame.seq not in self.superseded
                ):
                    parts.append(event.delta)
        return "".join(parts)

    async def cancel(self) -> str:
        """Ask the gateway to cancel the task. Returns the ``cancel_ack`` result (``accepted``,
        ``already_terminal`` or ``unknown``); the ``task_cancelled`` event follows in
        :meth:`events` when it was accepted."""
        return await self._client.cancel(self.task_id)

    async def respond(
        self, text: str | None = None, *, choice: str | None = None, request_id: str | None = None
    ) -> None:
        """Answer the task's question (``text``) or choice (``choice``). ``request_id``
        defaults to the pending request's. Raises :class:`RequestError` when refused
        (``already_answered``: another connection answered first; ``invalid_answer``,
        ``unknown_request``, ``task_finished``)."""
        await self._answer(request_id, text=text, choice=choice)

    async def approve(
        self, approved: bool = True, *, reason: str | None = None, request_id: str | None = None
    ) -> None:
        """Approve (or, with ``approved=False``, deny) the tool call the task waits for;
        ``reason`` is shown to the model with a denial."""
        await self._answer(request_id, approved=approved, text=reason)

    async def deny(self, reason: str | None = None, *, request_id: str | None = None) -> None:
        """Deny the tool call the task waits for (the model is told "denied by the user")."""
        await self.approve(False, reason=reason, request_id=request_id)

    async def _answer(self, request_id: str | None, **answer: Any) -> None:
        if request_id is None:
            if self.pending_input is None:
                raise GatewayError(f"task {self.task_id} waits for no input")
            request_id = self.pending_input.request_id
        client = self._client
        frame = Input(id=client._next_id(), task_id=self.task_id, request_id=request_id, **answer)
        await client._request(frame, InputAck)

    async def send_message(self, text: str) -> str:
        """Steer the running task: its agent sees ``text`` at its next turn boundary (a
        ``user_message`` event shows when). Returns the message id; raises
        :class:`RequestError` (``task_finished``, ``too_many_messages``)."""
        client = self._client
        frame = Message(id=client._next_id(), task_id=self.task_id, text=text)
        return (await client._request(frame, MessageAck)).message_id

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
        match event:
            case LlmResponse(agent=agent):
                self._call.setdefault(agent, []).append(frame.seq)
            case TaskProgress(step="retrying", agent=agent):
                self.superseded.update(self._call.pop(agent, ()))
            case ErrorEvent(retryable=True):
                pass  # announces the retry that follows; the call's output is still open
            case InputRequired(request=request):
                self.pending_input = request
                self.state = "input_required"
            case InputReceived(request_id=rid):
                if self.pending_input is not None and self.pending_input.request_id == rid:
                    self.pending_input = None
                    self.state = "running"
            case _:
                self._call.pop(event.agent, None)  # the agent's model call, if any, ended
        state = TERMINAL_STATES.get(type(event))
        if state is not None:
            self.state = state
            self.result = event  # type: ignore[assignment]
        elif self.state == "pending" and not isinstance(frame, UnknownEventFrame):
            self.state = "running"
        if state is not None:
            self.pending_input = None
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


class Thread:
    """A conversation: the tasks started through it see the earlier ones. Made by
    :meth:`GatewayClient.thread`."""

    def __init__(self, client: GatewayClient, thread_id: str, if_busy: IfBusy) -> None:
        self._client = client
        self.thread_id = thread_id
        """The thread's id (keep it to continue the conversation later, or elsewhere)."""
        self.if_busy: IfBusy = if_busy
        """The double-texting policy of :meth:`ask` when the previous turn has not ended."""

    def __repr__(self) -> str:
        return f"<Thread {self.thread_id}>"

    async def ask(
        self,
        input: str,
        *,
        task_id: str | None = None,
        options: StartOptions | Mapping[str, Any] | None = None,
        if_busy: IfBusy | None = None,
    ) -> TaskHandle:
        """Start the conversation's next turn (a follow-up)."""
        return await self._client.start(
            input,
            task_id=task_id,
            options=options,
            thread_id=self.thread_id,
            if_busy=if_busy or self.if_busy,
        )

    async def tasks(self) -> list[ThreadTask]:
        """The thread's tasks so far, oldest first (``unknown_thread`` before the first)."""
        return await self._client.thread_tasks(self.thread_id)


@dataclass(slots=True)
class _Pending:
    frame: ClientFrame
    future: asyncio.Future[Any]


class GatewayClient:
    """A connection to an OSpark gateway carrying any number of tasks.

    ``async with GatewayClient(url, token=...) as client:`` connects (raising
    :class:`CannotConnect` when the gateway cannot be reached or refuses the token), and closes
    on exit. ``encoding`` is ``"msgpack"`` (the default, smaller and faster) or ``"json"``.
    ``open_timeout`` bounds opening a connection (TCP, TLS, handshake and ``hello``).
    With ``reconnect`` (the default) a dropped socket is re-opened for up to
    ``reconnect_timeout`` seconds and every followed task resumes where it stopped, at most
    ``resume_batch`` tasks at a time."""

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
        resume_batch: int = 32,
    ) -> None:
        if encoding not in ("msgpack", "json"):
            raise ValueError(f"encoding must be 'msgpack' or 'json', not {encoding!r}")
        if resume_batch < 1:
            raise ValueError(f"resume_batch must be at least 1, not {resume_batch}")
        self.url = url
        self.token = token
        self.codec = MSGPACK if encoding == "msgpack" else JSON
        self.reconnect = reconnect
        self.reconnect_timeout = reconnect_timeout
        self.max_backoff = max_backoff
        self.open_timeout = open_timeout
        self.resume_batch = resume_batch
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
        self._tasks: dict[str, TaskHandle] = {}
        self._pending: dict[str | int, _Pending] = {}
        self._subscribes: dict[str | int, str] = {}
        self._ids = itertools.count(1)
        self._connected = asyncio.Event()
        self._lost: GatewayError | None = None
        self._closed = False
        self._reader: asyncio.Task[None] | None = None
        self._resumer: asyncio.Task[None] | None = None
        self._probes: dict[str | int, asyncio.Future[None]] = {}

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
        """Open the connection and read ``hello``. Raises :class:`CannotConnect` when the
        gateway cannot be reached or refuses the handshake, :class:`ConnectionLost` when it
        closes the connection at once (4001: bad token), :class:`ProtocolMismatch`."""
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
        self._stop_resume()
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
        thread_id: str | None = None,
        if_busy: IfBusy = "reject",
    ) -> TaskHandle:
        """Start a task and return it (its events follow in :meth:`TaskHandle.events`).

        ``task_id`` defaults to a fresh random id, so a start resent after a reconnect is an
        idempotent retry. ``options`` is a :class:`~protocol.StartOptions` or a dict of its
        fields (``max_turns``, ``on_detach``, …). ``thread_id`` makes it a turn of that
        conversation (see :meth:`thread`), ``if_busy`` says what happens when the thread's
        previous task has not ended. Raises :class:`RequestError` when refused (e.g.
        ``thread_busy``)."""
        if isinstance(options, Mapping):
            options = msgspec.convert(dict(options), StartOptions)
        task_id = task_id or f"t-{uuid.uuid4().hex[:20]}"
        task = self._tasks.get(task_id)
        created = task is None or task._error is not None
        if task is None or created:
            task = TaskHandle(self, task_id, follow=subscribe)
            self._tasks[task_id] = task
        frame = Start(
            id=self._next_id(),
            input=input,
            task_id=task_id,
            options=options,
            subscribe=subscribe,
            thread_id=thread_id,
            if_busy=if_busy,
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

    async def attach(self, task_id: str, *, after_seq: int = 0) -> TaskHandle:
        """Follow an existing task (e.g. one started by another connection of the same
        principal): its events with ``seq > after_seq``, then live ones. An unknown task
        makes :meth:`TaskHandle.events` raise :class:`RequestError` (``unknown_task``)."""
        task = self._tasks.get(task_id)
        if task is not None and not task.done and task._error is None:
            return task
        task = TaskHandle(self, task_id)
        task.last_seq = after_seq
        task._accepted = True
        self._tasks[task_id] = task
        await self._subscribe(task)
        return task

    async def detach(self, task: TaskHandle | str) -> None:
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

    def thread(self, thread_id: str | None = None, *, if_busy: IfBusy = "reject") -> Thread:
        """A conversation: ``thread_id`` continues an existing one (yours), none starts a new
        one. Its :meth:`Thread.ask` starts follow-ups that see the earlier turns."""
        return Thread(self, thread_id or f"th-{uuid.uuid4().hex[:20]}", if_busy)

    async def threads(self, limit: int = 100) -> list[ThreadSummary]:
        """This principal's threads, most recently updated first."""
        reply = await self._request(ThreadsRequest(id=self._next_id(), limit=limit), ThreadsReply)
        return reply.threads

    async def thread_tasks(self, thread_id: str) -> list[ThreadTask]:
        """One thread's tasks, oldest first (ids, inputs, states, answers)."""
        frame = ThreadRequest(id=self._next_id(), thread_id=thread_id)
        return (await self._request(frame, ThreadReply)).tasks

    async def ping(self, payload: str | None = None) -> Pong:
        """An application-level round trip."""
        return await self._request(Ping(id=self._next_id(), payload=payload), Pong)

    def task(self, task_id: str) -> TaskHandle | None:
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

    async def _subscribe(self, task: TaskHandle) -> None:
        rid = self._next_id()
        self._subscribes[rid] = task.task_id
        await self._send(Subscribe(id=rid, task_id=task.task_id, after_seq=task.last_seq))

    async def _open(self) -> tuple[ClientConnection, ClientSession]:
        """Open a connection and read ``hello``; every failure becomes a :class:`GatewayError`."""
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
            body = exc.response.body or b""
            said = " ".join(body.decode(errors="replace").split())[:200]  # the server's reason
            raise CannotConnect(
                self.url,
                f"the gateway refused the connection: HTTP {status}"
                + (f": {said}" if said else ""),
                status=status,
                retryable=status not in _REFUSED,
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise CannotConnect(
                self.url, f"TLS: {exc.verify_message or exc}", retryable=False
            ) from exc
        except ssl.SSLError as exc:
            raise CannotConnect(self.url, f"TLS: {exc.reason or exc}", retryable=False) from exc
        except TimeoutError as exc:
            raise CannotConnect(self.url, f"no answer within {self.open_timeout:g}s") from exc
        except ConnectionRefusedError as exc:
            raise CannotConnect(self.url, "connection refused (is the gateway running?)") from exc
        except OSError as exc:
            raise CannotConnect(self.url, exc.strerror or str(exc) or type(exc).__name__) from exc
        except WebSocketException as exc:  # a bad URI, an invalid or cut-off handshake
            raise CannotConnect(self.url, str(exc) or type(exc).__name__) from exc
        session = ClientSession(self.codec)
        try:
            async with asyncio.timeout(self.open_timeout):
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
        except TimeoutError as exc:
            await ws.close()
            raise CannotConnect(self.url, f"no hello within {self.open_timeout:g}s") from exc
        if isinstance(frames, ProtocolError):
            await ws.close()
            raise ProtocolMismatch(f"not an OSpark gateway: {frames.message}") from frames
        hello = frames[0] if frames else None
        if not isinstance(hello, Hello):
            await ws.close()
            raise ProtocolMismatch(f"not an OSpark gateway: the first frame is {hello!r}")
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
                    frames = self._session.receive(message)
                    if isinstance(frames, ProtocolError):
                        log.warning("undecodable frame from the gateway: %s", frames.message)
                        continue
                    for frame in frames:
                        self._dispatch(frame)
            except ConnectionClosed:
                pass
            if self._closed:
                return
            self._connected.clear()
            self._stop_resume()
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
            except CannotConnect as exc:
                if not exc.retryable:
                    raise
                error: GatewayError = exc
            except ConnectionLost as exc:
                if exc.code in _NO_RETRY:
                    raise
                error = exc
            if loop.time() + delay > deadline:
                raise ConnectionLost(
                    f"could not reconnect within {self.reconnect_timeout:g}s: {error}"
                ) from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
        self._ws, self._session = ws, session
        self.reconnects += 1
        self._subscribes.clear()
        try:
            for pending in list(self._pending.values()):
                await ws.send(session.send(pending.frame))
        except ConnectionClosed:
            pass  # the reader sees the close and reconnects again
        self._connected.set()
        self._resumer = asyncio.create_task(self._resume(ws, session), name="ospark-resume")

    async def _resume(self, ws: ClientConnection, session: ClientSession) -> None:
        """Resubscribe to every followed unfinished task, ``resume_batch`` at a time: after
        each batch a ``ping``, whose ``pong`` the gateway sends after the batch's replay."""
        tasks = [t for t in self._tasks.values() if t._follow and t._accepted]
        loop = asyncio.get_running_loop()
        try:
            for first in range(0, len(tasks), self.resume_batch):
                if first:
                    rid = self._next_id()
                    probe = self._probes[rid] = loop.create_future()
                    try:
                        await ws.send(session.send(Ping(id=rid, payload="resume")))
                        await probe
                    finally:
                        self._probes.pop(rid, None)
                for task in tasks[first : first + self.resume_batch]:
                    if (
                        task.done
                        or task._error is not None
                        or self._tasks.get(task.task_id) is not task
                    ):
                        continue  # ended, failed or detached meanwhile
                    rid = self._next_id()
                    self._subscribes[rid] = task.task_id
                    frame = Subscribe(id=rid, task_id=task.task_id, after_seq=task.last_seq)
                    await ws.send(session.send(frame))
        except ConnectionClosed:
            pass  # the reader sees the close, reconnects, and resumes again

    def _stop_resume(self) -> None:
        resumer, self._resumer = self._resumer, None
        if resumer is not None:
            resumer.cancel()

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
            case Pong(id=rid) if rid in self._probes:
                probe = self._probes.pop(rid)
                if not probe.done():
                    probe.set_result(None)
            case (
                Accepted()
                | CancelAck()
                | StatusReply()
                | Pong()
                | ThreadsReply()
                | ThreadReply()
                | InputAck()
                | MessageAck()
            ):
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
