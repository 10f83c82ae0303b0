"""A plain RESP connection for the Redis backend's flusher: one write per batch of commands,
the replies parsed by hiredis.

Measured on the 2-core test machine, redis-py's pipeline spent about half of the per-event
time packing commands (``pack_command``) and another sixth reading replies one by one; the
flusher sends thousands of script calls a second, all alike, so it packs them itself (each
task's constant part once) and reads a batch's replies in one go. Everything else uses
redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["NotSent", "RespConnection", "bulk", "command"]


class NotSent(RedisConnectionError):
    """Redis could not be reached: the commands were not sent (so not carried out)."""


def bulk(value: bytes | str | int | float) -> bytes:
    """One RESP bulk string."""
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode()
    elif isinstance(value, float):
        data = repr(value).encode()
    else:
        data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def command(*parts: bytes | str | int | float) -> bytes:
    """A whole RESP command."""
    return b"*%d\r\n" % len(parts) + b"".join(bulk(p) for p in parts)


class RespConnection:
    """One connection, opened on first use and after any failure (which raises
    :exc:`redis.exceptions.ConnectionError`). Not for concurrent use: the flusher is its only
    caller."""

    def __init__(self, url: str, timeout: float) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        self._host = str(options.get("host", "127.0.0.1"))
        self._port = int(options.get("port", 6379))
        self._path = options.get("path")
        self._username = options.get("username")
        self._password = options.get("password")
        self._db = int(options.get("db", 0) or 0)
        self._ssl: ssl.SSLContext | None = None
        if url.startswith("rediss://"):
            self._ssl = ssl.create_default_context()
            if options.get("ssl_cert_reqs") in ("none", "CERT_NONE"):
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader(replyError=ResponseError)

    async def _connect(self) -> None:
        if self._path:
            opened = asyncio.open_unix_connection(self._path)
        else:
            opened = asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        self._reader, self._writer = await asyncio.wait_for(opened, self._timeout)
        self._parser = hiredis.Reader(replyError=ResponseError)
        hello = b""
        n = 0
        if self._password:
            auth = (self._username, self._password) if self._username else (self._password,)
            hello += command("AUTH", *auth)
            n += 1
        if self._db:
            hello += command("SELECT", self._db)
            n += 1
        if n:
            for reply in await self._exchange(hello, n):
                if isinstance(reply, ResponseError):
                    await self.close()
                    raise RedisConnectionError(f"Redis refused the connection: {reply}")

    async def call(self, packed: bytes, n: int) -> list[Any]:
        """Send ``n`` packed commands, return their ``n`` replies (errors as
        :exc:`ResponseError` values, not raised). Raises :exc:`NotSent` when the commands
        certainly did not reach Redis (no connection could be made), else
        :exc:`redis.exceptions.ConnectionError` (they may have been carried out)."""
        if self._writer is not None and (
            self._writer.is_closing() or (self._reader is not None and self._reader.at_eof())
        ):
            await self.close()  # the other end left while the connection was idle
        if self._writer is None:
            try:
                await self._connect()
            except (OSError, EOFError, TimeoutError, hiredis.ProtocolError) as exc:
                await self.close()
                raise NotSent(f"{type(exc).__name__}: {exc}") from exc
            except RedisConnectionError as exc:
                raise NotSent(str(exc)) from exc
        try:
            return await self._exchange(packed, n)
        except (OSError, EOFError, TimeoutError, hiredis.ProtocolError) as exc:
            await self.close()
            raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from exc

    async def _exchange(self, packed: bytes, n: int) -> list[Any]:
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        writer.write(packed)
        replies: list[Any] = []
        parser = self._parser
        # One timeout for the whole exchange (a scope, not wait_for: no task per await).
        async with asyncio.timeout(self._timeout):
            await writer.drain()
            while len(replies) < n:
                reply = parser.gets()
                if reply is False:
                    data = await reader.read(1 << 16)
                    if not data:
                        raise EOFError("Redis closed the connection")
                    parser.feed(data)
                else:
                    replies.append(reply)
        return replies

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
