"""Sans-I/O protocol sessions: bytes in, frames out; frames in, bytes out.

A :class:`ServerSession` is what a gateway holds per connection. Feed it every incoming
WebSocket message with :meth:`ServerSession.receive`; it returns the decoded client frame or a
:class:`~protocol.errors.ProtocolError` saying what was wrong. Build outgoing frames with
:meth:`ServerSession.send`. The session enforces the frame-size limit, the handshake order
(``hello`` is the first frame sent) and counts abuse: after ``max_violations`` oversized frames
:attr:`ServerSession.close_code` tells the I/O layer to close the connection with
:data:`~protocol.errors.CloseCode.POLICY_VIOLATION`.

A :class:`ClientSession` is the mirror image for clients: it encodes client frames and decodes
server frames, flattening ``batch`` frames into their events and decoding event kinds and frame
types it does not know as :class:`~protocol.events.UnknownEvent` / :class:`UnknownFrame`
instead of failing.

One convention for both: ``receive`` never raises for what the peer sent. Bad input is
*returned* as a :class:`~protocol.errors.ProtocolError` (a value with a ``code``, the
request id and field when they could be read), for the caller to answer or log; the
connection goes on. Only the program's own misuse of a session raises
(:class:`ProtocolStateError`, e.g. reading before ``hello`` was sent). Text that is not valid
Unicode (an I/O layer passes on a text frame that is not UTF-8 decoded with
``surrogateescape``) is refused as ``bad_frame`` like invalid UTF-8 bytes.

Nothing here does I/O or touches an event loop.
"""

from __future__ import annotations

import re
import typing
from typing import Any, Final

import msgspec

from protocol.codec import JSON, Codec
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.events import EVENT_TYPES, Event, UnknownEvent
from protocol.frames import (
    Batch,
    ClientFrame,
    ErrorFrame,
    EventFrame,
    Hello,
    ServerFrame,
)

__all__ = [
    "CLIENT_FRAME_TYPES",
    "DEFAULT_MAX_FRAME_BYTES",
    "ClientSession",
    "ProtocolStateError",
    "ServerSession",
    "UnknownEventFrame",
    "UnknownFrame",
]

DEFAULT_MAX_FRAME_BYTES: Final = 1 << 20

CLIENT_FRAME_TYPES: Final[frozenset[str]] = frozenset(
    str(t.__struct_config__.tag) for t in typing.get_args(ClientFrame)
)

_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `([^`]+)`")


class ProtocolStateError(RuntimeError):
    """The program using a session broke the protocol's order (a bug, not bad input)."""


def _frame_size(data: bytes | str, limit: int) -> int:
    """Size in bytes, computing the UTF-8 length of text only when it could matter."""
    if isinstance(data, bytes):
        return len(data)
    n = len(data)
    if n * 4 <= limit or n > limit:
        return n
    return len(data.encode("utf-8", "surrogatepass"))


def _request_id(obj: Any) -> str | int | None:
    rid = obj.get("id") if isinstance(obj, dict) else None
    if isinstance(rid, str) and len(rid) <= 256:
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) <= 2**53:
        return rid
    return None


def _task_id(obj: Any) -> str | None:
    tid = obj.get("task_id") if isinstance(obj, dict) else None
    return tid if isinstance(tid, str) and len(tid) <= 128 else None


def explain_validation_error(codec: Codec, data: bytes | str, exc: Exception) -> ProtocolError:
    """Turn a msgspec validation failure into a ProtocolError naming the field at fault."""
    try:
        obj = codec.decode_any(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeError):
        obj = None
    text = str(exc)
    field: str | None = None
    if m := _AT_PATH.search(text):
        field = m.group(1)
        text = text[: m.start()]
    elif m := _MISSING_FIELD.match(text):
        field = f"$.{m.group(1)}"
    if obj is None and field is not None:
        # Not even decodable without a schema (e.g. a number beyond any float): the typed
        # decoder's path still names the field.
        return ProtocolError(
            ErrorCode.INVALID_FIELD, f"invalid frame at `{field}`: {text}", field=field
        )
    if not isinstance(obj, dict):
        return ProtocolError(ErrorCode.BAD_FRAME, "a frame must be an object with a `type` field")
    rid, tid = _request_id(obj), _task_id(obj)
    frame_type = obj.get("type")
    if frame_type is None:
        return ProtocolError(
            ErrorCode.INVALID_FIELD,
            "missing required field `type` (one of: " + ", ".join(sorted(CLIENT_FRAME_TYPES)) + ")",
            field="$.type",
            request_id=rid,
            task_id=tid,
        )
    if not isinstance(frame_type, str) or frame_type not in CLIENT_FRAME_TYPES:
        return ProtocolError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown frame type {frame_type!r}; expected one of: "
            + ", ".join(sorted(CLIENT_FRAME_TYPES)),
            field="$.type",
            request_id=rid,
            task_id=tid,
        )
    where = f" at `{field}`" if field else ""
    return ProtocolError(
        ErrorCode.INVALID_FIELD,
        f"invalid `{frame_type}` frame{where}: {text}",
        field=field,
        request_id=rid,
        task_id=tid,
    )


class ServerSession:
    """The protocol state of one connection, seen from the server."""

    def __init__(
        self,
        codec: Codec = JSON,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_violations: int = 3,
    ) -> None:
        self.codec: Final = codec
        self.max_frame_bytes = max_frame_bytes
        self.max_violations = max_violations
        self.violations = 0
        """Count of frames refused for abuse (oversized); reaching the maximum closes."""
        self.hello_sent = False
        self.close_code: CloseCode | None = None
        """Set when the connection must be closed (the I/O layer closes with this code)."""

    # ------------------------------------------------------------------ incoming

    def receive(self, data: bytes | str) -> ClientFrame | ProtocolError:
        """Decode one incoming WebSocket message. Never raises for bad input."""
        if not self.hello_sent:
            raise ProtocolStateError("send `hello` before reading client frames")
        size = _frame_size(data, self.max_frame_bytes)
        if size > self.max_frame_bytes:
            self.violations += 1
            if self.violations >= self.max_violations:
                self.close_code = CloseCode.POLICY_VIOLATION
            return ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {size} bytes exceeds the limit of {self.max_frame_bytes} bytes",
            )
        if self.codec.binary != isinstance(data, bytes):
            kind, want = ("binary", "text") if isinstance(data, bytes) else ("text", "binary")
            return ProtocolError(
                ErrorCode.BAD_FRAME,
                f"{kind} frame on subprotocol {self.codec.subprotocol}; send {want} frames",
            )
        try:
            return self.codec.decode_client(data)
        except msgspec.ValidationError as exc:
            return explain_validation_error(self.codec, data, exc)
        except msgspec.DecodeError as exc:
            return ProtocolError(ErrorCode.BAD_FRAME, f"not valid {self.codec.name}: {exc}")
        except RecursionError:
            return ProtocolError(ErrorCode.BAD_FRAME, "frame is nested too deeply")
        except UnicodeError:  # decoding bytes, or text with lone surrogates (see the docstring)
            return ProtocolError(ErrorCode.BAD_FRAME, "frame contains invalid UTF-8")

    # ------------------------------------------------------------------ outgoing

    def hello(self, hello: Hello) -> str | bytes:
        """Encode the ``hello`` frame; it must be the first frame sent, exactly once."""
        if self.hello_sent:
            raise ProtocolStateError("`hello` was already sent")
        self.hello_sent = True
        return self.codec.to_wire(self.codec.encode(hello))

    def send(self, frame: ServerFrame) -> str | bytes:
        """Encode a server frame for the wire (text for JSON, bytes for MessagePack)."""
        if not self.hello_sent:
            raise ProtocolStateError("`hello` must be the first frame sent")
        if isinstance(frame, Hello):
            raise ProtocolStateError("`hello` is sent once, with ServerSession.hello()")
        return self.codec.to_wire(self.codec.encode(frame))

    def error(self, err: ProtocolError) -> str | bytes:
        """Encode the ``error`` frame that answers a refused frame."""
        return self.send(
            ErrorFrame(
                code=err.code.value,
                message=err.message,
                id=err.request_id,
                task_id=err.task_id,
                field=err.field,
            )
        )


# --------------------------------------------------------------------------- client side


class UnknownFrame(msgspec.Struct, kw_only=True):
    """A server frame of a type this client version does not know (kept, not refused)."""

    type: str
    """The frame's ``type`` as received."""
    data: dict[str, Any] = {}
    """Every field as received."""


class UnknownEventFrame(msgspec.Struct, kw_only=True):
    """An ``event`` frame whose event kind this client version does not know."""

    task_id: str
    """The task the event belongs to."""
    seq: int
    """Per-task sequence number."""
    ts: float
    """Creation time of the event."""
    event: UnknownEvent
    """The event, kept as received."""


class _LenientEventFrame(msgspec.Struct):
    task_id: str
    seq: int
    ts: float
    event: msgspec.Raw


class _LenientBatch(msgspec.Struct):
    events: list[_LenientEventFrame]


IncomingFrame = ServerFrame | UnknownFrame | UnknownEventFrame
_KNOWN_EVENT_KINDS: Final = frozenset(str(t.__struct_config__.tag) for t in EVENT_TYPES)


class ClientSession:
    """The protocol state of one connection, seen from a client."""

    def __init__(self, codec: Codec = JSON, *, max_frame_bytes: int = 64 << 20) -> None:
        self.codec: Final = codec
        self.max_frame_bytes = max_frame_bytes
        self.hello: Hello | None = None
        """The server's ``hello``, once received."""
        self._event_decoder: Any = codec.decoder(Event)
        self._lenient_event: Any = codec.decoder(_LenientEventFrame)
        self._lenient_batch: Any = codec.decoder(_LenientBatch)

    def send(self, frame: ClientFrame) -> str | bytes:
        """Encode a client frame for the wire."""
        return self.codec.to_wire(self.codec.encode(frame))

    def receive(self, data: bytes | str) -> list[IncomingFrame] | ProtocolError:
        """Decode one server message into frames; a ``batch`` becomes its events.

        Returns a :class:`ProtocolError` (never raises it) for a message that is not a server
        frame at all, or when the first frame is not ``hello``."""
        try:
            return self._receive(data)
        except ProtocolError as err:
            return err

    def _receive(self, data: bytes | str) -> list[IncomingFrame]:
        if _frame_size(data, self.max_frame_bytes) > self.max_frame_bytes:
            raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, "server frame exceeds the limit")
        if self.codec.binary != isinstance(data, bytes):
            kind = "binary" if isinstance(data, bytes) else "text"
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"{kind} frame on subprotocol {self.codec.subprotocol}"
            )
        try:
            frame = self.codec.decode_server(data)
        except msgspec.ValidationError:
            frames = self._receive_lenient(data)
        except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"undecodable server frame: {exc}") from exc
        else:
            frames = list(frame.events) if isinstance(frame, Batch) else [frame]
        if self.hello is None:
            first = frames[0] if frames else None
            if not isinstance(first, Hello):
                raise ProtocolError(ErrorCode.BAD_FRAME, "the server did not send `hello` first")
            self.hello = first
        return frames

    def _receive_lenient(self, data: bytes | str) -> list[IncomingFrame]:
        try:
            obj = self.codec.decode_any(data)
        except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"undecodable server frame: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise ProtocolError(ErrorCode.BAD_FRAME, "a server frame must be an object with `type`")
        frame_type = obj["type"]
        try:
            if frame_type == "event":
                return [self._event(self._lenient_event.decode(data))]
            if frame_type == "batch":
                return [self._event(e) for e in self._lenient_batch.decode(data).events]
        except msgspec.ValidationError as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"malformed `{frame_type}`: {exc}") from exc
        if frame_type in _KNOWN_SERVER_TYPES:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"malformed `{frame_type}` frame")
        return [UnknownFrame(type=frame_type, data=obj)]

    def _event(self, raw: _LenientEventFrame) -> EventFrame | UnknownEventFrame:
        try:
            event: Event = self._event_decoder.decode(raw.event)
        except msgspec.ValidationError:
            body = self.codec.decode_any(raw.event)
            kind = body.get("kind") if isinstance(body, dict) else None
            if not isinstance(kind, str) or kind in _KNOWN_EVENT_KINDS:
                raise
            agent = body.get("agent")
            return UnknownEventFrame(
                task_id=raw.task_id,
                seq=raw.seq,
                ts=raw.ts,
                event=UnknownEvent(
                    kind=kind, agent=agent if isinstance(agent, str) else "main", data=body
                ),
            )
        return EventFrame(task_id=raw.task_id, seq=raw.seq, ts=raw.ts, event=event)


_KNOWN_SERVER_TYPES: Final = frozenset(
    str(t.__struct_config__.tag) for t in typing.get_args(ServerFrame)
)
