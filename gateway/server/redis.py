"""Redis mode of the server: the backend built from the settings, and its metrics.

With ``--redis URL`` (or ``OSPARK_REDIS_URL``) every gateway process is a node of one task
space kept in Redis (see :mod:`gateway.tasks.redis_backend`). Startup fails with a clear
message when Redis cannot be reached; afterwards an outage makes ``/healthz`` answer 503 with
the reason while the process keeps serving what it can.

A Redis Cluster needs no option: the backend asks the node in the URL (``INFO cluster``) and,
on a Cluster, finds the other nodes from it (see :mod:`gateway.tasks.redis_cluster`).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.server.settings import Settings
from gateway.tasks.redis_backend import RedisBackend, RedisConfig, _safe_url

__all__ = ["RedisCollector", "make_backend", "node_name", "redis_reachable"]


def node_name() -> str:
    """This process's node id: readable in logs, unique across restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


_NOT_DB0 = "{} is a Redis Cluster node: a Cluster has database 0 only"


def redis_reachable(url: str) -> str | None:
    """``None`` if Redis at ``url`` answers a PING (and, if it is a Cluster node, the URL
    names database 0, the only one a Cluster has), else why not (checked before serving)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
            db = int(client.connection_pool.connection_kwargs.get("db") or 0)
            if db and _cluster_enabled(client):
                return _NOT_DB0.format(_safe_url(url))
        finally:
            client.close()
    except redis.ResponseError as exc:
        if "cluster mode" in str(exc):  # SELECT refused at connect by a Cluster node
            return _NOT_DB0.format(_safe_url(url))
        return f"{type(exc).__name__}: {exc}"
    except (redis.RedisError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _cluster_enabled(client: Any) -> bool:
    import redis

    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:  # INFO not allowed to this user: taken for one Redis
        return False


def make_backend(settings: Settings) -> RedisBackend:
    """The Redis backend the settings ask for (not started yet)."""
    assert settings.redis_url is not None
    return RedisBackend(
        RedisConfig(
            url=settings.redis_url,
            lease=settings.redis_lease,
            buffer_seconds=settings.redis_buffer_seconds,
        )
    )


class RedisCollector(Collector):
    """What matters across processes: Redis round trip, flush batch size, buffered writes,
    nodes alive."""

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend

    def collect(self) -> Iterable[GaugeMetricFamily]:
        b = self._backend
        yield GaugeMetricFamily(
            "ospark_redis_rtt_seconds", "Duration of the last flush round trip", value=b.rtt
        )
        yield GaugeMetricFamily(
            "ospark_redis_flush_batch", "Writes in the last flushed batch", value=b.last_batch
        )
        yield GaugeMetricFamily(
            "ospark_redis_buffered", "Writes waiting for Redis", value=b.buffered
        )
        yield GaugeMetricFamily(
            "ospark_redis_nodes_alive", "Gateway processes with a live lease", value=b.nodes_alive
        )
        yield GaugeMetricFamily(
            "ospark_redis_up",
            "1 when Redis answers this process, 0 during an outage",
            value=0 if b.health() else 1,
        )
