"""Prometheus metrics of one gateway process (``GET /metrics``).

Each app has its own registry, so several apps (tests) never collide. Per-event work is kept
off the hot path: the per-connection counters are plain integers of each connection
(:class:`gateway.connection.ConnectionStats`), summed when the metrics are read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.connection import ConnectionStats

__all__ = ["LOOP_LAG_INTERVAL", "Metrics", "sample_loop_lag"]

LOOP_LAG_INTERVAL = 0.25
"""Seconds between two event-loop lag samples."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _ConnectionCounters(Collector):
    """Every connection's counters (open and closed ones), summed at scrape time."""

    _COUNTERS = (
        ("ospark_events_sent", "Events sent to clients", "events_sent"),
        ("ospark_frames_sent", "Frames sent to clients", "frames_sent"),
        ("ospark_bytes_sent", "Bytes sent to clients", "bytes_sent"),
        ("ospark_frames_received", "Frames received from clients", "frames_received"),
        ("ospark_bytes_received", "Bytes received from clients", "bytes_received"),
    )

    def __init__(self, totals: Callable[[], ConnectionStats]) -> None:
        self._totals = totals

    def collect(self) -> Iterable[Metric]:
        totals = self._totals()
        for name, doc, attr in self._COUNTERS:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], getattr(totals, attr))
            yield family
        errors = CounterMetricFamily("ospark_errors_sent", "error frames sent", labels=["code"])
        for code, n in sorted(totals.errors_sent.items()):
            errors.add_metric([code], n)
        yield errors


class _TaskStates(Collector):
    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("ospark_tasks", "Active tasks by state", labels=["state"])
        for state, n in self._counts().items():
            family.add_metric([state], n)
        yield family


class _TransportCloses(Collector):
    def __init__(self, closes: Mapping[str, int]) -> None:
        self._closes = closes

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "ospark_transport_closes",
            "Connections closed below the application (handshake_timeout, fragments, ping_flood)",
            labels=["reason"],
        )
        for reason in ("handshake_timeout", "fragments", "ping_flood"):
            family.add_metric([reason], self._closes.get(reason, 0))
        yield family


async def sample_loop_lag(histogram: Histogram, interval: float = LOOP_LAG_INTERVAL) -> None:
    """Observe, every ``interval``, how late the event loop woke a sleeper: the time one
    callback waited behind the others (runs until cancelled)."""
    loop = asyncio.get_running_loop()
    while True:
        planned = loop.time() + interval
        await asyncio.sleep(interval)
        histogram.observe(max(0.0, loop.time() - planned))


class Metrics:
    """The gateway's metrics; ``render()`` gives the exposition text."""

    def __init__(
        self,
        task_counts: Callable[[], dict[str, int]],
        connection_totals: Callable[[], ConnectionStats] = ConnectionStats,
    ) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("ospark_connections", "Open WebSocket connections", registry=r)
        self.connections_total = Counter(
            "ospark_connections_opened", "WebSocket connections accepted", registry=r
        )
        self.rejected = Counter(
            "ospark_connections_rejected", "Handshakes refused", ["reason"], registry=r
        )
        self.tasks_finished = Counter(
            "ospark_tasks_finished", "Tasks that ended, by final state", ["state"], registry=r
        )
        self.batch_size = Histogram(
            "ospark_batch_size",
            "Events per frame sent",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.outbox_depth = Histogram(
            "ospark_outbox_depth",
            "Frames waiting in a connection's outbox when the writer wakes",
            buckets=(0, 1, 2, 4, 8, 16, 64, 256, 1024, 4096),
            registry=r,
        )
        self.slow_consumers = Counter(
            "ospark_slow_consumer_closes", "Connections closed as slow consumers", registry=r
        )
        self.cancel_latency = Histogram(
            "ospark_cancel_latency_seconds",
            "From a cancel request to the task's terminal event",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ospark_llm_time_to_first_token_seconds",
            "From a task's start to its first streamed LLM delta",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "ospark_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled every 0.25 s)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_TaskStates(task_counts))
        r.register(_ConnectionCounters(connection_totals))

    def track_transport(self, closes: Mapping[str, int]) -> None:
        """Expose a server's transport-level closes (:class:`TransportGuard.closes`)."""
        self.registry.register(_TransportCloses(closes))

    def render(self) -> bytes:
        return generate_latest(self.registry)
