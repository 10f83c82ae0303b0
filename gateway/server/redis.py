"""Redis mode of the server: the backend built from the settings, and its metrics.

With ``--redis URL`` (or ``OSPARK_REDIS_URL``) every gateway process is a node of one task
space kept in Redis (see :mod:`gateway.tasks.redis_backend`). Startup fails with a clear
message when Redis cannot be reached; afterwards an outage makes ``/healthz`` answer 503 with
the reason while the process keeps serving what it can.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.server.settings import Settings
from gateway.tasks.redis_backend import RedisBackend, RedisConfig

__all__ = ["RedisCollector", "make_backend"]


def make_backend(settings: Settings) -> RedisBackend:
    """The Redis backend the settings ask for (not started yet)."""
    assert settings.redis_url is not None
    return RedisBackend(
        RedisConfig(
            url=settings.redis_url,
            lease=settings.redis_lease,
            buffer_seconds=settings.redis_buffer_seconds,
        ),
        max_active_per_owner=settings.tasks.max_tasks_per_owner,
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
