"""The two encodings behind one interface, chosen by WebSocket subprotocol.

``ospark.v1.json`` carries UTF-8 JSON in text frames; ``ospark.v1.msgpack`` carries
MessagePack in binary frames. A client that asks for no subprotocol gets JSON, so a plain
``wscat -c`` works. Encoders and decoders are built once per codec and reused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Literal

import msgspec

from protocol.frames import ClientFrame, ServerFrame

__all__ = [
    "JSON",
    "MSGPACK",
    "SUBPROTOCOLS",
    "Codec",
    "Encoding",
    "codec_for_subprotocol",
    "select_subprotocol",
]

Encoding = Literal["json", "msgpack"]


class Codec:
    """Encodes and decodes frames of one encoding. Stateless and safe to share."""

    __slots__ = (
        "_client_decoder",
        "_encoder",
        "_generic_decoder",
        "_server_decoder",
        "binary",
        "name",
        "subprotocol",
    )

    def __init__(self, name: Encoding) -> None:
        self.name: Final = name
        self.subprotocol: Final = f"ospark.v1.{name}"
        self.binary: Final = name == "msgpack"
        """True when frames of this encoding travel as binary WebSocket frames."""
        # Typed as Any: the JSON decoders take str or bytes, the MessagePack ones bytes only,
        # and which one is used is decided here, once.
        self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder
        self._client_decoder: Any
        self._server_decoder: Any
        self._generic_decoder: Any
        if name == "json":
            self._encoder = msgspec.json.Encoder()
            self._client_decoder = msgspec.json.Decoder(ClientFrame)
            self._server_decoder = msgspec.json.Decoder(ServerFrame)
            self._generic_decoder = msgspec.json.Decoder()
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self._client_decoder = msgspec.msgpack.Decoder(ClientFrame)
            self._server_decoder = msgspec.msgpack.Decoder(ServerFrame)
            self._generic_decoder = msgspec.msgpack.Decoder()

    def encode(self, obj: Any) -> bytes:
        """Encode a frame (or any msgspec-encodable value) to bytes."""
        return self._encoder.encode(obj)

    def to_wire(self, data: bytes) -> str | bytes:
        """The WebSocket payload for encoded bytes: text for JSON, binary for MessagePack."""
        return data if self.binary else data.decode()

    def decode_client(self, data: bytes | str) -> ClientFrame:
        """Decode a client frame. Raises ``msgspec.DecodeError``/``ValidationError``."""
        frame: ClientFrame = self._client_decoder.decode(data)
        return frame

    def decode_server(self, data: bytes | str) -> ServerFrame:
        """Decode a server frame. Raises ``msgspec.DecodeError``/``ValidationError``."""
        frame: ServerFrame = self._server_decoder.decode(data)
        return frame

    def decode_any(self, data: bytes | str) -> Any:
        """Decode into plain Python values (dicts, lists, ...), without a schema."""
        return self._generic_decoder.decode(data)

    def decoder(self, type_: Any) -> Any:
        """A new decoder of this encoding for any type (build once, reuse)."""
        if self.binary:
            return msgspec.msgpack.Decoder(type_)
        return msgspec.json.Decoder(type_)

    def __repr__(self) -> str:
        return f"Codec({self.name!r})"


JSON: Final = Codec("json")
MSGPACK: Final = Codec("msgpack")
SUBPROTOCOLS: Final[dict[str, Codec]] = {JSON.subprotocol: JSON, MSGPACK.subprotocol: MSGPACK}
"""Codec by WebSocket subprotocol name."""


def codec_for_subprotocol(subprotocol: str | None) -> Codec:
    """The codec of a negotiated subprotocol; JSON when none (or an unknown one) was chosen."""
    if subprotocol is None:
        return JSON
    return SUBPROTOCOLS.get(subprotocol, JSON)


def select_subprotocol(offered: Iterable[str]) -> str | None:
    """Pick the subprotocol a server should accept from a client's offer, in the client's
    order of preference; ``None`` (plain JSON, no subprotocol header) when none is ours."""
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    return None
