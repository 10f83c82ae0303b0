"""Every frame and event kind survives a round trip through both encodings."""

from __future__ import annotations

import typing

import msgspec
import pytest

from protocol import (
    EVENT_TYPES,
    JSON,
    MSGPACK,
    ClientFrame,
    ClientSession,
    Codec,
    EventFrame,
    Hello,
    ServerFrame,
    ServerSession,
    codec_for_subprotocol,
    select_subprotocol,
)
from tests.protocol.samples import CLIENT_FRAMES, EVENTS, SERVER_FRAMES

CODECS = [pytest.param(JSON, id="json"), pytest.param(MSGPACK, id="msgpack")]


def test_samples_cover_every_type() -> None:
    assert {type(f) for f in CLIENT_FRAMES} == set(typing.get_args(ClientFrame))
    assert {type(f) for f in SERVER_FRAMES} == set(typing.get_args(ServerFrame))
    assert {type(e) for e in EVENTS} == set(EVENT_TYPES)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=lambda f: type(f).__name__)
def test_client_frame_round_trip(codec: Codec, frame: ClientFrame) -> None:
    client = ClientSession(codec)
    server = ServerSession(codec)
    server.hello(Hello())
    wire = client.send(frame)
    assert isinstance(wire, bytes) == codec.binary
    assert server.receive(wire) == frame


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda f: type(f).__name__)
def test_server_frame_round_trip(codec: Codec, frame: ServerFrame) -> None:
    assert codec.decode_server(codec.encode(frame)) == frame


@pytest.mark.parametrize("codec", CODECS)
def test_client_session_flattens_batches(codec: Codec) -> None:
    server = ServerSession(codec)
    client = ClientSession(codec)
    assert client.receive(server.hello(Hello(server="x"))) == [Hello(server="x")]
    batch = next(f for f in SERVER_FRAMES if type(f).__name__ == "Batch")
    assert client.receive(server.send(batch)) == batch.events  # type: ignore[union-attr]


def test_json_is_readable_text_and_omits_defaults() -> None:
    session = ServerSession(JSON)
    session.hello(Hello())
    text = session.send(EventFrame(task_id="t", seq=1, ts=2.0, event=EVENTS[3]))
    assert text == (
        '{"type":"event","task_id":"t","seq":1,"ts":2.0,'
        '"event":{"kind":"llm_response","delta":"Let me","channel":"reasoning","turn":1}}'
    )


def test_unknown_fields_are_ignored() -> None:
    session = ServerSession(JSON)
    session.hello(Hello())
    frame = session.receive('{"type":"ping","id":1,"future_field":{"a":[1,2]}}')
    assert frame == msgspec.convert({"type": "ping", "id": 1}, ClientFrame)


def test_subprotocol_selection() -> None:
    assert select_subprotocol(["x", "ospark.v1.msgpack", "ospark.v1.json"]) == "ospark.v1.msgpack"
    assert select_subprotocol(["chat"]) is None
    assert codec_for_subprotocol(None) is JSON
    assert codec_for_subprotocol("ospark.v1.msgpack") is MSGPACK
    assert codec_for_subprotocol("ospark.v1.json") is JSON


def test_terminal_constants_agree() -> None:
    from protocol import TERMINAL_KINDS, TERMINAL_STATES

    assert {t.__struct_config__.tag for t in TERMINAL_STATES} == TERMINAL_KINDS
    assert set(TERMINAL_STATES.values()) == {"completed", "failed", "cancelled"}
