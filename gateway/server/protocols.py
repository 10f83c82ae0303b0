"""uvicorn's HTTP and WebSocket protocols with the gateway's transport-level bounds.

What a client can make the server hold before the application sees anything is bounded here,
below Starlette:

- **Request heads** (:class:`GuardedHttpProtocol`): a connection must deliver a complete
  request head (the WebSocket upgrade included) within ``handshake_timeout`` seconds of
  connecting or of its previous response, else it is closed. uvicorn's keep-alive timer stops
  at the first byte received, so a half-sent head would otherwise hold a descriptor forever.
- **Fragments** (:class:`GuardedWebSocketProtocol`): a fragmented message is assembled in one
  ``bytearray`` (its size is already capped by the WebSocket layer's ``max_size``), and a
  message of more than ``max_fragments`` fragments closes the connection with 1009, so neither
  one-byte nor empty fragments cost more than the bytes they carry.
- **Parsing time** (:class:`GuardedWebSocketProtocol`): what one read brings (up to 256 KiB,
  tens of thousands of tiny frames) is parsed in slices of ``READ_SLICE`` bytes, with reading
  paused and the event loop given a turn between slices, so one client's flood of small frames
  delays other connections by one slice's parsing at most, and parsing stops at the slice
  where a bound is hit.
- **Pings** (:class:`GuardedWebSocketProtocol`): a pong is written for every ping; while the
  client does not read (the socket's write buffer is over its high-water mark), at most
  ``max_unread_pongs`` more pongs are queued, then the connection is dropped with 1008.

- **Closing** (:class:`GuardedWebSocketProtocol`, the connection's side): the application's
  close frame is queued behind what the client has not read yet, without waiting for room
  (a slow consumer that reads again later still finds its 4000), and a socket that does not
  drain is dropped ``close_linger`` seconds after closing; once closed (a heartbeat timeout
  included), the application is told at once (``websocket.disconnect``) and a late send ends
  its writer like a client that left, never with "Unexpected ASGI message".
- **Text that is not UTF-8** reaches the application as a string with lone surrogates
  (``surrogateescape``), which the protocol session refuses with ``bad_frame``: an error
  frame, the connection stays, nothing is logged.

Each refusal is counted in :attr:`TransportGuard.closes` (``ospark_transport_closes_total``).
:func:`protocol_classes` makes the two classes for one server, bound to its guard.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from uvicorn._types import ASGISendEvent, WebSocketCloseEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame

__all__ = [
    "GuardedHttpProtocol",
    "GuardedWebSocketProtocol",
    "TransportGuard",
    "TransportLimits",
    "protocol_classes",
]


@dataclass(frozen=True, slots=True)
class TransportLimits:
    handshake_timeout: float = 10.0
    """Seconds a connection has to send a complete request head (``--handshake-timeout``)."""
    max_fragments: int = 1024
    """Fragments one WebSocket message may arrive in."""
    max_unread_pongs: int = 64
    """Pongs queued for a client that does not read, before it is dropped."""


@dataclass(slots=True)
class TransportGuard:
    """The limits of one server and what they refused."""

    limits: TransportLimits = field(default_factory=TransportLimits)
    closes: Counter[str] = field(default_factory=Counter)
    """Connections closed, by reason: ``handshake_timeout``, ``fragments``, ``ping_flood``."""


class GuardedHttpProtocol(HttpToolsProtocol):
    guard: ClassVar[TransportGuard]

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head gets the same bound

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(
            self.guard.limits.handshake_timeout, self._head_timed_out
        )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy or self.pipeline or self.transport.is_closing():
            return  # a request is being answered; its response re-arms the timer
        self.guard.closes["handshake_timeout"] += 1
        self.transport.close()


READ_SLICE = 16 * 1024
"""Bytes of WebSocket input parsed per event-loop turn."""

_SOCKET_MESSAGES = frozenset({"websocket.send", "websocket.close"})


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    guard: ClassVar[TransportGuard]
    close_linger: ClassVar[float] = 60.0
    """Seconds a closed socket may hold unsent data (a client that stopped reading)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._partial: bytearray | None = None
        self._fragments = 0
        self._unread_pongs = 0
        self._backlog: bytearray | None = None
        """Input received but not parsed yet (reading is paused while there is some)."""

    # Parsing in slices, one per event-loop turn.

    def data_received(self, data: bytes) -> None:
        if self._backlog is not None:  # uvicorn resumed reading while slices were pending
            self._backlog += data
            self.transport.pause_reading()
            return
        self._feed(memoryview(data))

    def _feed(self, data: memoryview) -> None:
        super().data_received(bytes(data[:READ_SLICE]))
        rest = data[READ_SLICE:]
        # After the app's close the rest is still parsed: the client's close reply may be in it.
        if not rest or self.transport.is_closing():
            return
        self._backlog = bytearray(rest)
        self.transport.pause_reading()
        self.loop.call_soon(self._feed_backlog)

    def _feed_backlog(self) -> None:
        backlog, self._backlog = self._backlog, None
        if backlog is None or self.transport.is_closing():
            return
        self._feed(memoryview(backlog))
        if self._backlog is None and not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    async def send(self, message: ASGISendEvent) -> None:
        kind = message["type"]
        if kind in _SOCKET_MESSAGES and self.handshake_complete and self.initial_response is None:
            if self.close_sent or self.disconnected or self.transport.is_closing():
                if kind == "websocket.send":
                    raise ClientDisconnected()  # closing: for the writer, the client is gone
                return  # already closing
            if kind == "websocket.close":
                close = cast("WebSocketCloseEvent", message)
                self._close(close.get("code", 1000), close.get("reason") or "")
                return
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            # A refused handshake (401/403/503) is a complete answer; without this uvicorn logs
            # "ASGI callable returned without completing handshake" for every refusal.
            self.handshake_complete = True

    # Closing (the connection's side; see the module docstring).

    def _close(self, code: int, reason: str) -> None:
        """uvicorn's close, without waiting for room in the write buffer: the close frame goes
        behind the data the client has not read."""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:  # read the client's close reply
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self._close_transport)

    def _close_transport(self) -> None:
        self.close_timer = None
        self._close_and_linger()

    def _close_and_linger(self) -> None:
        self.transport.close()  # sends what is buffered first
        if self.transport.get_write_buffer_size():
            self.loop.call_later(self.close_linger, self.transport.abort)

    def keepalive_timeout(self) -> None:
        closing = self.close_sent or self.transport.is_closing()
        super().keepalive_timeout()
        if not closing:
            self.queue.put_nowait(
                {"type": "websocket.disconnect", "code": 1011, "reason": "keepalive ping timeout"}
            )
            if self.transport.get_write_buffer_size():
                self.loop.call_later(self.close_linger, self.transport.abort)

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = data.decode("utf-8", "surrogateescape")
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    # Fragments: one buffer per message, and a bound on how many pieces it may come in.

    def handle_text(self, event: Frame) -> None:
        self.curr_msg_data_type = "text"
        self._first_fragment(event)

    def handle_bytes(self, event: Frame) -> None:
        self.curr_msg_data_type = "bytes"
        self._first_fragment(event)

    def _first_fragment(self, event: Frame) -> None:
        if event.fin:
            self._partial = None
            self.frames = [event.data]  # type: ignore[list-item]
            self.send_receive_event_to_app()
        else:
            self._partial = bytearray(event.data)
            self._fragments = 1

    def handle_cont(self, event: Frame) -> None:
        if self._partial is None or self.close_sent:
            return  # the WebSocket layer refuses a continuation without a first fragment
        self._fragments += 1
        if self._fragments > self.guard.limits.max_fragments:
            self._partial = None
            self._fail(1009, "message in too many fragments", "fragments")
            return
        self._partial += event.data
        if event.fin:
            self.frames = [bytes(self._partial)]
            self._partial = None
            self.send_receive_event_to_app()

    # Pings: answered, but not without bound for a client that never reads the answers.

    def handle_ping(self) -> None:
        if not self.writable.is_set():
            self._unread_pongs += 1
            if self._unread_pongs > self.guard.limits.max_unread_pongs:
                self._fail(1008, "too many pings while not reading", "ping_flood")
                return
        super().handle_ping()

    def resume_writing(self) -> None:
        self._unread_pongs = 0
        super().resume_writing()

    def _fail(self, code: int, reason: str, counter: str) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        self.guard.closes[counter] += 1
        self.conn.fail(code, reason)
        self.handle_parser_exception()  # tells the app, writes the close frame, closes
        if not self.writable.is_set():
            # The client does not read: waiting for the buffer to drain would keep it forever.
            self.transport.abort()


def protocol_classes(
    guard: TransportGuard,
) -> tuple[type[GuardedHttpProtocol], type[GuardedWebSocketProtocol]]:
    """HTTP and WebSocket protocol classes for one server (uvicorn's ``http=`` and ``ws=``)."""
    http = type("GatewayHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})
    ws = type("GatewayWebSocketProtocol", (GuardedWebSocketProtocol,), {"guard": guard})
    return http, ws
