"""Bad input never escapes as an exception: each case gives the right error code."""

from __future__ import annotations

import msgspec
import pytest

from protocol import (
    JSON,
    MSGPACK,
    ClientSession,
    CloseCode,
    Codec,
    ErrorCode,
    EventFrame,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    ProtocolStateError,
    ServerSession,
    Subscribe,
    TaskCompleted,
    UnknownEventFrame,
    UnknownFrame,
)
from protocol.events import UnknownEvent

CODECS = [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]


def session(codec: Codec = JSON, **kw: int) -> ServerSession:
    s = ServerSession(codec, **kw)
    s.hello(Hello())
    return s


def wire(codec: Codec, obj: object) -> str | bytes:
    """Encode an arbitrary value the way a (possibly buggy) client would."""
    return codec.to_wire(codec.encode(obj))


def refused(result: object, code: ErrorCode) -> ProtocolError:
    assert isinstance(result, ProtocolError), result
    assert result.code is code, (result.code, result.message)
    return result


def test_not_json() -> None:
    err = refused(session().receive("{not json"), ErrorCode.BAD_FRAME)
    assert "not valid json" in err.message


def test_invalid_msgpack() -> None:
    refused(session(MSGPACK).receive(b"\xc1"), ErrorCode.BAD_FRAME)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("value", [[1, 2], "text", 3, None, True])
def test_not_an_object(codec: Codec, value: object) -> None:
    err = refused(session(codec).receive(wire(codec, value)), ErrorCode.BAD_FRAME)
    assert "object" in err.message


@pytest.mark.parametrize("codec", CODECS)
def test_unknown_type_echoes_request_id(codec: Codec) -> None:
    err = refused(
        session(codec).receive(wire(codec, {"type": "launch", "id": "r9"})), ErrorCode.UNKNOWN_TYPE
    )
    assert err.request_id == "r9"
    assert "launch" in err.message and "start" in err.message


@pytest.mark.parametrize("codec", CODECS)
def test_missing_type(codec: Codec) -> None:
    err = refused(session(codec).receive(wire(codec, {"id": 1})), ErrorCode.INVALID_FIELD)
    assert err.field == "$.type"


@pytest.mark.parametrize("codec", CODECS)
def test_missing_field_is_named(codec: Codec) -> None:
    err = refused(
        session(codec).receive(wire(codec, {"type": "start", "id": "a"})), ErrorCode.INVALID_FIELD
    )
    assert err.field == "$.input"
    assert err.request_id == "a"
    assert "`start`" in err.message and "input" in err.message


@pytest.mark.parametrize("codec", CODECS)
def test_mistyped_field_is_named(codec: Codec) -> None:
    frame = {"type": "subscribe", "id": 4, "task_id": "t1", "after_seq": "ten"}
    err = refused(session(codec).receive(wire(codec, frame)), ErrorCode.INVALID_FIELD)
    assert err.field == "$.after_seq"
    assert err.request_id == 4 and err.task_id == "t1"
    assert "Expected `int`" in err.message


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "subscribe", "id": 1, "task_id": "t", "after_seq": -1}, "$.after_seq"),
        ({"type": "cancel", "id": 1, "task_id": ""}, "$.task_id"),
        ({"type": "cancel", "id": 1, "task_id": "has space"}, "$.task_id"),
        (
            {"type": "start", "id": 1, "input": "x", "options": {"max_turns": -5}},
            "$.options.max_turns",
        ),
        (
            {"type": "start", "id": 1, "input": "x", "options": {"on_detach": "later"}},
            "$.options.on_detach",
        ),
        ({"type": "ping", "id": "x" * 300}, "$.id"),
    ],
)
def test_out_of_range_fields(codec: Codec, frame: dict[str, object], field: str) -> None:
    err = refused(session(codec).receive(wire(codec, frame)), ErrorCode.INVALID_FIELD)
    assert err.field == field


def test_huge_numbers() -> None:
    s = session()
    err = refused(
        s.receive('{"type":"subscribe","id":1,"task_id":"t","after_seq":1' + "0" * 400 + "}"),
        ErrorCode.INVALID_FIELD,
    )
    assert err.field == "$.after_seq"
    refused(s.receive('{"type":"ping","id":1e999}'), ErrorCode.INVALID_FIELD)
    refused(s.receive('{"type":"ping","id":' + "9" * 5000 + "}"), ErrorCode.INVALID_FIELD)


def test_huge_msgpack_integer() -> None:
    data = msgspec.msgpack.encode({"type": "ping", "id": 2**64 - 1})
    refused(session(MSGPACK).receive(data), ErrorCode.INVALID_FIELD)


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested(depth: int) -> None:
    s = session(max_frame_bytes=1 << 22)
    nested = "[" * depth + "]" * depth
    result = s.receive('{"type":"ping","extra":' + nested + "}")
    if depth == 100:
        assert result == Ping()
    else:
        refused(result, ErrorCode.BAD_FRAME)
    refused(s.receive(nested), ErrorCode.BAD_FRAME)


def test_deeply_nested_msgpack() -> None:
    data = b"\x82\xa4type\xa4ping\xa5extra" + b"\x91" * 100_000 + b"\xc0"
    refused(session(MSGPACK, max_frame_bytes=1 << 22).receive(data), ErrorCode.BAD_FRAME)


def test_invalid_utf8_in_msgpack_string() -> None:
    data = b"\x81\xa4type\xa4p\xffng"
    refused(session(MSGPACK).receive(data), ErrorCode.BAD_FRAME)


def test_invalid_utf8_in_json_bytes_is_a_binary_frame() -> None:
    refused(session().receive(b'{"type":"ping","payload":"\xff"}'), ErrorCode.BAD_FRAME)


def test_binary_frame_on_json() -> None:
    err = refused(session(JSON).receive(b'{"type":"ping"}'), ErrorCode.BAD_FRAME)
    assert "binary frame" in err.message and "ospark.v1.json" in err.message


def test_text_frame_on_msgpack() -> None:
    err = refused(session(MSGPACK).receive('{"type":"ping"}'), ErrorCode.BAD_FRAME)
    assert "text frame" in err.message and "ospark.v1.msgpack" in err.message


@pytest.mark.parametrize("codec", CODECS)
def test_oversized_frames_then_policy_close(codec: Codec) -> None:
    s = session(codec, max_frame_bytes=100, max_violations=3)
    big = wire(codec, {"type": "ping", "payload": "x" * 200})
    for _ in range(2):
        err = refused(s.receive(big), ErrorCode.FRAME_TOO_LARGE)
        assert "100 bytes" in err.message
        assert s.close_code is None
    assert s.receive(wire(codec, {"type": "ping"})) == Ping()
    refused(s.receive(big), ErrorCode.FRAME_TOO_LARGE)
    assert s.close_code is CloseCode.POLICY_VIOLATION


def test_size_limit_counts_utf8_bytes() -> None:
    s = session(max_frame_bytes=100)
    # 30 characters of 4 bytes each: 120 bytes on the wire, though only 30 characters long.
    text = '{"type":"ping","payload":"' + "😀" * 30 + '"}'
    refused(s.receive(text), ErrorCode.FRAME_TOO_LARGE)


def test_error_frame_echoes_the_request() -> None:
    s = session()
    err = refused(s.receive('{"type":"cancel","id":"c1"}'), ErrorCode.INVALID_FIELD)
    assert s.error(err) == (
        '{"type":"error","code":"invalid_field","message":"invalid `cancel` frame at `$.task_id`:'
        ' Object missing required field `task_id`","id":"c1","field":"$.task_id"}'
    )


def test_handshake_order() -> None:
    s = ServerSession(JSON)
    with pytest.raises(ProtocolStateError):
        s.send(Ping())  # type: ignore[arg-type]
    with pytest.raises(ProtocolStateError):
        s.receive('{"type":"ping"}')
    s.hello(Hello())
    with pytest.raises(ProtocolStateError):
        s.hello(Hello())
    with pytest.raises(ProtocolStateError):
        s.send(Hello())


def test_client_requires_hello_first() -> None:
    client = ClientSession(JSON)
    err = client.receive('{"type":"pong"}')
    assert isinstance(err, ProtocolError) and err.code == ErrorCode.BAD_FRAME
    assert "hello" in err.message
    assert client.hello is None


@pytest.mark.parametrize("codec", CODECS)
def test_both_sessions_return_bad_input_and_never_raise(codec: Codec) -> None:
    """The one convention: what the peer sent is never raised, it is returned."""
    server = session(codec)
    client = ClientSession(codec)
    client.receive(wire(codec, {"type": "hello"}))
    for garbage in (b"\xc1\xff", "{not json", wire(codec, [1, 2]), wire(codec, {"type": 3})):
        assert isinstance(server.receive(garbage), ProtocolError)
        assert isinstance(client.receive(garbage), ProtocolError)
    # ... and both carry on afterwards.
    assert server.receive(wire(codec, {"type": "ping", "id": 1})) == Ping(id=1)
    assert client.receive(wire(codec, {"type": "pong", "id": 1})) == [Pong(id=1)]


def test_text_that_is_not_unicode_is_a_bad_frame() -> None:
    # How an I/O layer passes on a text frame whose bytes are not UTF-8.
    text = b'{"type":"ping","id":"\xff"}'.decode("utf-8", "surrogateescape")
    err = session().receive(text)
    assert isinstance(err, ProtocolError) and err.code == ErrorCode.BAD_FRAME
    assert "UTF-8" in err.message


@pytest.mark.parametrize("codec", CODECS)
def test_client_decodes_unknown_kinds_and_types(codec: Codec) -> None:
    client = ClientSession(codec)
    client.receive(wire(codec, {"type": "hello", "version": 1, "future": True}))
    frames = client.receive(
        wire(
            codec,
            {
                "type": "batch",
                "events": [
                    {"task_id": "t", "seq": 1, "ts": 1.0, "event": {"kind": "task_completed"}},
                    {
                        "task_id": "t",
                        "seq": 2,
                        "ts": 1.0,
                        "event": {"kind": "thought_bubble", "agent": "main/x#1", "mood": "calm"},
                    },
                ],
            },
        )
    )
    assert frames == [
        EventFrame(task_id="t", seq=1, ts=1.0, event=TaskCompleted()),
        UnknownEventFrame(
            task_id="t",
            seq=2,
            ts=1.0,
            event=UnknownEvent(
                kind="thought_bubble",
                agent="main/x#1",
                data={"kind": "thought_bubble", "agent": "main/x#1", "mood": "calm"},
            ),
        ),
    ]
    assert client.receive(wire(codec, {"type": "telemetry", "n": 1})) == [
        UnknownFrame(type="telemetry", data={"type": "telemetry", "n": 1})
    ]
    # A known kind that is malformed is an error.
    assert isinstance(
        client.receive(
            wire(
                codec,
                {
                    "type": "event",
                    "task_id": "t",
                    "seq": 1,
                    "ts": 1.0,
                    "event": {"kind": "llm_response"},
                },
            )
        ),
        ProtocolError,
    )


def test_valid_frame_passes() -> None:
    assert session().receive('{"type":"subscribe","id":"s","task_id":"a:b-1.c_d"}') == Subscribe(
        id="s", task_id="a:b-1.c_d"
    )
