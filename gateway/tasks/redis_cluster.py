"""Redis Cluster for the Redis backend: the client, the flusher's routed connection, and
sharded pub/sub.

The backend's keys are laid out for a Cluster (see :mod:`gateway.tasks.redis_scripts`): every
key of one owner carries the owner's hash tag, so each script and each transaction touches one
slot; the per-node keys and the bounds over all owners are written by commands of their own.
What a Cluster changes is the routing, done here:

- :class:`ClusterClient` is redis-py's asyncio Cluster client (``redis.asyncio.RedisCluster``)
  for every ordinary command and non-transactional pipeline, with changes for a process that
  runs for months: the nodes named in the URL stay seeds for rediscovery (redis-py drops a
  seed that failed once, so after a restart of the whole Cluster it could never reconnect); a
  Cluster that cannot be reached raises :exc:`~redis.exceptions.ConnectionError`, as a single
  Redis does; only real ``MOVED`` replies patch the slot map; and a transaction
  (``pipeline(transaction=True)``, always on one slot here) is a :class:`SlotTransaction`, a
  plain ``MULTI``/``EXEC`` on the slot's primary (redis-py 6.4's Cluster transaction runs each
  queued command through ``asyncio.run`` in a thread of its own).
- :class:`ClusterWire` is the flusher's connection (the same interface as
  :class:`~gateway.tasks.redis_wire.RespConnection`): it splits a batch of packed commands by
  the slot of each command's first key and sends each node its part, in order, on its own
  connection, all nodes at once. Commands on the per-node keys go after the others (a task
  leaves its node's set only once its final event is stored). ``MOVED`` re-reads the slot map
  and sends again, ``ASK`` sends to the importing node after ``ASKING``, ``TRYAGAIN`` and
  ``CLUSTERDOWN`` wait a little and try again; only the redirected commands are sent again,
  which keeps each slot's order because a redirection of a slot answers every later command of
  that slot the same way. Past :data:`REDIRECTS` rounds the batch fails as in an outage (the
  flusher keeps it and retries; its scripts are idempotent by seq).
- :class:`ShardedPubSub` stands in for redis-py's ``PubSub``, which the asyncio Cluster
  client lacks: ``SSUBSCRIBE`` goes to the primary owning the channel's slot, on one
  connection per primary, and messages from all of them come out of one
  :meth:`~ShardedPubSub.parse_response`. When a slot moves, Redis unsubscribes its channels
  (an ``sunsubscribe`` nobody asked for); that, a ``MOVED`` answer or any lost connection
  raises :exc:`~redis.exceptions.ConnectionError`, and the backend's subscriber does what it
  does after any reconnection: subscribes everything again (on the new owners) and reads from
  the logs what was published meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections import Counter
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, NodesManager, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    MovedError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis_wire import RespConnection, command

__all__ = ["REDIRECTS", "ClusterClient", "ClusterWire", "ShardedPubSub", "cluster_enabled"]

log = logging.getLogger(__name__)

REDIRECTS = 16
"""Rounds of redirection (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) a flush tries
before it counts as failed."""


async def cluster_enabled(client: Redis) -> bool:
    """Whether the Redis at the other end of ``client`` is a Cluster node (``INFO cluster``;
    a user not allowed ``INFO`` is taken to talk to one Redis)."""
    try:
        info = await client.info("cluster")
    except ResponseError:
        return False
    return bool(info.get("cluster_enabled"))


class ClusterClient(RedisCluster):
    """redis-py's asyncio Cluster client that keeps its seed nodes and reports an unreachable
    Cluster as a :exc:`~redis.exceptions.ConnectionError` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes_manager.__class__ = _NodesManager
        self._seeds: dict[str, ClusterNode] = dict(self.nodes_manager.startup_nodes)
        self._plain: dict[str, Redis] = {}
        self.stale = False
        """Set when a redirection or a lost node says the slot map may be out of date."""

    def _restore_seeds(self) -> None:
        for name, node in self._seeds.items():
            self.nodes_manager.startup_nodes.setdefault(name, node)

    async def initialize(self) -> RedisCluster:
        if self._initialize:
            self._restore_seeds()
        try:
            return await super().initialize()
        except RedisClusterException as exc:
            raise RedisConnectionError(f"cannot reach the Redis Cluster: {exc}") from exc

    async def ready(self) -> None:
        """Connected, with a slot map read again if :attr:`stale` (which replaces the node
        objects: commands in flight on the old ones may fail once and be retried)."""
        if self._initialize:
            await self.initialize()
        elif self.stale:
            self._restore_seeds()
            try:
                await self.nodes_manager.initialize()
            except RedisClusterException as exc:
                raise RedisConnectionError(f"cannot reach the Redis Cluster: {exc}") from exc
        self.stale = False

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        """A pipeline over the Cluster, or with ``transaction`` a :class:`SlotTransaction`."""
        if shard_hint:
            raise RedisClusterException("shard_hint is not supported on a Cluster")
        if transaction:
            return SlotTransaction(self)
        return ClusterPipeline(self)

    def node_client(self, key: bytes) -> Redis:
        """A plain client of the primary owning ``key``'s slot (one per primary, kept)."""
        node = self.node_for(key)
        client = self._plain.get(node.name)
        if client is None:
            pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            client = self._plain[node.name] = Redis(connection_pool=pool)
        return client

    def node_for(self, key: bytes) -> ClusterNode:
        """The primary that owns ``key``'s slot (as of the last slot map read)."""
        try:
            node: ClusterNode = self.nodes_manager.get_node_from_slot(key_slot(key))
        except RedisClusterException as exc:
            raise RedisConnectionError(f"Redis Cluster: {exc}") from exc
        return node

    async def aclose(self) -> None:
        await super().aclose()
        plain, self._plain = self._plain, {}
        for client in plain.values():
            await client.aclose(close_connection_pool=True)
        await asyncio.gather(
            *(node.disconnect() for node in self._seeds.values()), return_exceptions=True
        )


class _NodesManager(NodesManager):
    """redis-py 6.4's Cluster transactions hand a connection error to the slot map as if it
    were a ``MOVED`` reply, after which every slot lookup fails (``AttributeError``) until the
    map is read again; only real ``MOVED`` replies are taken here (the client reads the map
    again after connection errors anyway)."""

    __slots__ = ()

    def update_moved_exception(self, exception: Exception) -> None:
        if isinstance(exception, MovedError):
            super().update_moved_exception(exception)  # type: ignore[no-untyped-call]


class SlotTransaction:
    """A ``MULTI``/``EXEC`` transaction on the keys of one slot, for
    ``ClusterClient.pipeline(transaction=True)``: the commands are recorded (``pipe.hmget(…)``
    and the like), and :meth:`execute` runs them in a plain redis-py transaction on the primary
    owning the first key's slot. redis-py 6.4's own Cluster transaction runs each queued
    command through ``asyncio.run`` in a new thread, blocking the event loop meanwhile and
    leaving connections bound to that thread's closed loop; this one does neither. A
    transaction refused as a whole for a moved slot (``MOVED``/``ASK`` make ``EXEC`` abort,
    nothing applied) is run again once on the new owner."""

    def __init__(self, client: ClusterClient) -> None:
        self._client = client
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> SlotTransaction:
            self._calls.append((name, args, kwargs))
            return self

        return record

    async def execute(self) -> list[Any]:
        if not self._calls:
            return []
        key = self._calls[0][1][0]
        key = key.encode() if isinstance(key, str) else bytes(key)
        for attempt in (1, 2):
            await self._client.ready()
            pipe = self._client.node_client(key).pipeline(transaction=True)
            for name, args, kwargs in self._calls:
                getattr(pipe, name)(*args, **kwargs)
            try:
                result: list[Any] = await pipe.execute()
                return result
            except AskError:  # or MOVED (a subclass): the slot is elsewhere now
                self._client.stale = True
                if attempt == 2:
                    raise
            except (RedisConnectionError, RedisTimeoutError, OSError):
                self._client.stale = True  # a failover, maybe: read the slot map next time
                raise
        raise AssertionError("unreachable")


def _node_url(url: str, host: str, port: int | str) -> str:
    """``url`` (its credentials, TLS and options) pointed at another node."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, f"{userinfo}{at}{where}", "/0", parts.query, ""))


_KEYS_AT_2 = {b"EVALSHA", b"EVAL", b"FCALL", b"EVALSHA_RO", b"EVAL_RO", b"FCALL_RO"}


def _split(packed: bytes, n: int) -> list[tuple[int, int, bytes | None]]:
    """The ``n`` commands in ``packed``: (start, end, first key or None)."""
    reader = hiredis.Reader()
    reader.feed(packed)
    out: list[tuple[int, int, bytes | None]] = []
    start = 0
    for _ in range(n):
        parts = reader.gets()
        if not isinstance(parts, list) or not parts:
            raise ValueError("not a packed command")
        size = len(b"*%d\r\n" % len(parts)) + sum(
            len(b"$%d\r\n" % len(p)) + len(p) + 2 for p in parts
        )
        name = parts[0].upper()
        key: bytes | None = None
        if name in _KEYS_AT_2:
            if len(parts) > 3 and int(parts[2]) > 0:
                key = parts[3]
        elif len(parts) > 1:
            key = parts[1]
        out.append((start, start + size, key))
        start += size
    return out


def _redirect(reply: Any) -> str | None:
    """The kind of a Cluster redirection reply, if it is one."""
    if isinstance(reply, ResponseError):
        kind = str(reply).split(" ", 1)[0]
        if kind in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"):
            return kind
    return None


class ClusterWire:
    """The flusher's connection on a Cluster (see the module docstring): ``call(packed, n)``
    as on :class:`~gateway.tasks.redis_wire.RespConnection`, routed by slot. ``late`` is the
    key prefix of the commands sent after the others (the per-node keys)."""

    def __init__(self, client: ClusterClient, url: str, timeout: float, late: bytes) -> None:
        self._client = client
        self._url = url
        self._timeout = timeout
        self._late = late
        self._conns: dict[str, RespConnection] = {}

    def _conn(self, host: str, port: int | str) -> RespConnection:
        name = f"{host}:{port}"
        conn = self._conns.get(name)
        if conn is None:
            conn = self._conns[name] = RespConnection(
                _node_url(self._url, host, port), self._timeout
            )
        return conn

    async def call(self, packed: bytes, n: int) -> list[Any]:
        """Send ``n`` packed commands, each to the node owning its first key; return their
        replies in order (errors as values, as on one node)."""
        client = self._client
        await client.ready()
        commands = _split(packed, n)
        replies: list[Any] = [None] * n
        asking: dict[int, tuple[str, int]] = {}
        pending = list(range(n))
        delay = 0.02
        for _ in range(REDIRECTS):
            late = self._late
            first = [i for i in pending if not (commands[i][2] or b"").startswith(late)]
            then = [i for i in pending if (commands[i][2] or b"").startswith(late)]
            for phase in (first, then):
                if phase:
                    await self._send(packed, commands, phase, asking, replies)
            asking = {}
            again: list[int] = []
            wait = False
            for i in pending:
                kind = _redirect(replies[i])
                if kind is None:
                    continue
                again.append(i)
                if kind == "MOVED":
                    client.stale = True
                elif kind == "ASK":  # ASK <slot> <host>:<port>
                    host, _, port = str(replies[i]).split(" ")[2].rpartition(":")
                    asking[i] = (host.strip("[]"), int(port))
                else:
                    wait = True
            if not again:
                return replies
            pending = again
            await client.ready()
            if wait:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        client.stale = True
        raise RedisConnectionError(
            f"Redis Cluster: writes still redirected after {REDIRECTS} tries "
            f"({replies[pending[0]]})"
        )

    async def _send(
        self,
        packed: bytes,
        commands: list[tuple[int, int, bytes | None]],
        indices: list[int],
        asking: dict[int, tuple[str, int]],
        replies: list[Any],
    ) -> None:
        groups: dict[str, tuple[RespConnection, list[bytes], list[int], list[bool]]] = {}
        default: ClusterNode | None = None
        for i in indices:
            start, end, key = commands[i]
            ask = asking.get(i)
            host: str
            port: int | str
            if ask is not None:
                host, port = ask
            elif key is not None:
                node = self._client.node_for(key)
                host, port = node.host, node.port
            else:  # no key (never sent by the backend today): any primary answers it
                default = default or self._client.get_primaries()[0]
                host, port = default.host, default.port
            conn = self._conn(host, port)
            group = groups.setdefault(f"{host}:{port}", (conn, [], [], []))
            if ask is not None:
                group[1].append(command("ASKING"))
            group[1].append(packed[start:end])
            group[2].append(i)
            group[3].append(ask is not None)
        items = list(groups.values())
        results = await asyncio.gather(
            *(conn.call(b"".join(parts), len(parts)) for conn, parts, _, _ in items),
            return_exceptions=True,
        )
        failed: BaseException | None = None
        for (_, _, order, asked), result in zip(items, results, strict=True):
            if isinstance(result, BaseException):
                failed = failed or result
                continue
            j = 0
            for i, asked_first in zip(order, asked, strict=True):
                j += asked_first  # the reply to ASKING
                replies[i] = result[j]
                j += 1
        if failed is not None:
            self._client.stale = True  # a node may have failed over: read the slot map first
            if isinstance(failed, RedisError | OSError):
                raise RedisConnectionError(f"Redis Cluster: {failed}") from failed
            raise failed

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            await conn.close()


class ShardedPubSub:
    """Sharded pub/sub on a Cluster, for the backend's subscriber (see the module docstring):
    ``execute_command("SSUBSCRIBE" | "SUNSUBSCRIBE", channel)``, ``parse_response()`` and
    ``aclose()``, as it uses redis-py's ``PubSub``."""

    def __init__(self, client: ClusterClient) -> None:
        self._client = client
        self._conns: dict[str, Connection] = {}
        self._readers: list[asyncio.Task[None]] = []
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._where: dict[str, str] = {}  # channel -> the node it is subscribed on
        self._leaving: Counter[str] = Counter()  # SUNSUBSCRIBE sent, its reply not yet read
        self._opening = asyncio.Lock()

    async def execute_command(self, name: str, *channels: str) -> None:
        """``SSUBSCRIBE`` or ``SUNSUBSCRIBE`` each channel on the primary owning its slot."""
        if name not in ("SSUBSCRIBE", "SUNSUBSCRIBE"):
            raise ValueError(f"ShardedPubSub does not send {name}")
        try:
            for channel in channels:
                if name == "SSUBSCRIBE":
                    await self._client.ready()
                    node = self._client.node_for(channel.encode())
                    conn = await self._connection(node)
                    self._where[channel] = node.name
                    await conn.send_command("SSUBSCRIBE", channel)
                    continue
                where = self._where.pop(channel, None)
                subscribed = self._conns.get(where) if where is not None else None
                if subscribed is not None:
                    self._leaving[channel] += 1
                    await subscribed.send_command("SUNSUBSCRIBE", channel)
        except (RedisError, OSError) as exc:
            # Also through parse_response: the subscriber starts again (a subscription that
            # could not be made must not be waited for in silence).
            self._client.stale = True
            self._inbox.put_nowait(exc)
            if isinstance(exc, RedisConnectionError | RedisTimeoutError):
                raise
            raise RedisConnectionError(f"Redis Cluster pub/sub: {exc}") from exc

    async def _connection(self, node: ClusterNode) -> Connection:
        async with self._opening:  # one connection per node, even when asked at once
            conn = self._conns.get(node.name)
            if conn is None:
                kwargs = {
                    **node.connection_kwargs,
                    "socket_timeout": None,  # it waits for messages as long as it takes
                    "retry": Retry(NoBackoff(), 0),  # a reconnect must subscribe again: ours
                }
                conn = node.connection_class(**kwargs)
                await conn.connect()  # type: ignore[no-untyped-call]
                self._conns[node.name] = conn
                self._readers.append(asyncio.get_running_loop().create_task(self._read(conn)))
        return conn

    async def _read(self, conn: Connection) -> None:
        try:
            while True:
                self._inbox.put_nowait(await conn.read_response())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to parse_response, which raises it
            self._inbox.put_nowait(exc)

    async def parse_response(self, block: bool = True) -> Any:
        """The next message from any node (blocking). Raises
        :exc:`~redis.exceptions.ConnectionError` when the subscriptions must be made again."""
        while True:
            item = await self._inbox.get()
            if isinstance(item, BaseException):
                self._client.stale = True
                if isinstance(item, RedisConnectionError | RedisTimeoutError | OSError):
                    raise RedisConnectionError(f"Redis Cluster pub/sub: {item}") from item
                # MOVED and the like: our slot map was out of date.
                raise RedisConnectionError(f"Redis Cluster pub/sub: {item}")
            if isinstance(item, list) and len(item) >= 2 and item[0] == b"sunsubscribe":
                channel = item[1].decode()
                if self._leaving[channel] > 0:
                    self._leaving[channel] -= 1
                    if not self._leaving[channel]:
                        del self._leaving[channel]
                    continue
                if channel in self._where:
                    # Unsubscribed by Redis: the channel's slot moved to another node.
                    self._client.stale = True
                    raise RedisConnectionError(f"Redis Cluster moved the slot of {channel}")
                continue
            return item

    def abort(self) -> None:
        """Drop every connection at once, as a network failure would (tests)."""
        for conn in self._conns.values():
            writer = getattr(conn, "_writer", None)
            if writer is not None:
                writer.transport.abort()

    async def aclose(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                await conn.disconnect()
        self._conns.clear()
