"""Arbitrary input only ever yields a client frame or a ProtocolError."""

from __future__ import annotations

import typing

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import JSON, MSGPACK, ClientFrame, Hello, ProtocolError, ServerSession

FRAME_TYPES = tuple(typing.get_args(ClientFrame))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
frame_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["start", "cancel", "status", "subscribe", "unsubscribe", "ping", "x"]
        )
    },
    optional={
        "id": json_values,
        "task_id": json_values,
        "input": json_values,
        "after_seq": json_values,
        "options": json_values,
        "payload": json_values,
    },
)


def sessions() -> tuple[ServerSession, ServerSession]:
    js, mp = ServerSession(JSON, max_frame_bytes=4096), ServerSession(MSGPACK, max_frame_bytes=4096)
    js.hello(Hello())
    mp.hello(Hello())
    return js, mp


def check(result: object) -> None:
    assert isinstance(result, (ProtocolError, *FRAME_TYPES)), result


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    js, mp = sessions()
    check(mp.receive(data))
    check(js.receive(data))
    check(js.receive(data.decode("latin-1")))


@settings(max_examples=300, deadline=None)
@given(json_values | frame_like)
def test_arbitrary_json_and_msgpack(value: object) -> None:
    js, mp = sessions()
    check(js.receive(msgspec.json.encode(value).decode()))
    check(mp.receive(msgspec.msgpack.encode(value)))
