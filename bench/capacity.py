"""The capacity sweep: the most concurrent paced tasks one server process serves while their
events are delivered within a latency bound.

Every task streams like an LLM answer: one event every ``pace`` (20 ms: ~50 tokens/s), mostly
``llm_response`` deltas with progress and a tool call, from :mod:`bench.replay` (the raw
endpoint sends the same events). A *step* runs ``n`` such tasks on a fresh server process:
the load-generator processes open their connections, then start the tasks spread evenly over a
ramp-up, let them settle, and measure every event delivered in a steady-state window. A step
passes when, in that window,

- the delivery latency p99 (decode time on the client − the event's ``ts``, stamped by the
  server when it made the event) is within the bound,
- at least ``min_delivered`` of the events the tasks should have sent arrived (the replayed
  tasks keep to their schedule, so a server that falls behind shows up here even when the
  events it does send are fresh), and
- every task was started without an error.

The sweep doubles ``n`` from ``start`` while steps pass (halves it while they fail), then
bisects between the last pass and the first failure until the bracket is within
``resolution`` of the passing figure, within ``max_steps`` steps and a time budget. The figure
is the largest ``n`` that passed (with the bracket it ended in). Latencies are collected per
load-generator process as a histogram of 1%-wide buckets and merged, so the percentiles of
several processes are exact to 1%.

Nothing here starts a process: :class:`bench.suite.Suite` runs the steps; this module is the
logic, testable on its own (``tests/bench/test_capacity.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Plan",
    "Step",
    "Sweep",
    "histogram",
    "merge",
    "percentile",
    "sweep",
    "verdict",
]

_FLOOR = 1e-5  # seconds: latencies below 10 µs share the first bucket
_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)


def histogram(samples: Iterable[float]) -> dict[str, int]:
    """Latencies in seconds → ``{bucket: count}`` (JSON-ready keys); bucket ``i`` > 0 holds
    the values in ``(FLOOR·1.01^(i−1), FLOOR·1.01^i]``."""
    counts: dict[int, int] = {}
    for s in samples:
        i = 0 if s <= _FLOOR else math.ceil(math.log(s / _FLOOR) / _LOG_GROWTH)
        counts[i] = counts.get(i, 0) + 1
    return {str(i): c for i, c in counts.items()}


def merge(histograms: Iterable[Mapping[str, int]]) -> dict[int, int]:
    """The sum of several histograms."""
    total: dict[int, int] = {}
    for h in histograms:
        for key, count in h.items():
            total[int(key)] = total.get(int(key), 0) + count
    return total


def percentile(hist: Mapping[int, int], q: float) -> float:
    """The ``q`` quantile (0–1) in milliseconds: the upper edge of the bucket that holds it
    (the same rank rule as the other latency rows: the value at index ``int(q·n)``)."""
    n = sum(hist.values())
    if n == 0:
        return math.inf
    rank = min(n - 1, int(q * n))
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen > rank:
            return _FLOOR * _GROWTH**i * 1000.0
    raise AssertionError("unreachable")


def verdict(
    hist: Mapping[int, int],
    delivered: int,
    expected: float,
    errors: int,
    *,
    p99_ms: float,
    min_delivered: float,
) -> tuple[bool, str]:
    """Whether a step passes, and why not (empty when it does)."""
    reasons = []
    p99 = percentile(hist, 0.99)
    if p99 > p99_ms:
        reasons.append(f"p99 {p99:.3g} ms > {p99_ms:g} ms")
    if delivered < min_delivered * expected:
        reasons.append(f"{delivered / max(1.0, expected):.1%} of the events delivered")
    if errors:
        reasons.append(f"{errors} tasks not started")
    return not reasons, "; ".join(reasons)


@dataclass(frozen=True)
class Plan:
    """How far a sweep may go."""

    start: int
    max_tasks: int
    max_steps: int
    resolution: float  # stop bisecting once (first failure − last pass) ≤ this × last pass
    seconds: float  # time budget: no new step starts after it


@dataclass
class Step:
    """One step's outcome; ``detail`` is what the suite measured (kept in results.json)."""

    n: int
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sweep:
    """The figure (largest passing ``n``, 0 if none) and every step, in order."""

    capacity: int
    failed_at: int | None  # smallest failing n above the figure; None: never failed (capped)
    steps: list[Step]
    stopped: str  # why the sweep ended: "resolved", "max_tasks", "max_steps", "time"

    def step(self, n: int) -> Step | None:
        return next((s for s in self.steps if s.n == n), None)


def sweep(
    trial: Callable[[int], Step], plan: Plan, clock: Callable[[], float] = time.monotonic
) -> Sweep:
    """Find the largest ``n`` for which ``trial(n).ok``, assuming that passing is monotone
    (a step that passes at ``n`` would pass below it). Each ``n`` is tried once."""
    started = clock()
    steps: list[Step] = []
    lo, hi = 0, None  # largest pass, smallest failure

    def budget_left() -> str:
        if len(steps) >= plan.max_steps:
            return "max_steps"
        if clock() - started >= plan.seconds:
            return "time"
        return ""

    def run(n: int) -> bool:
        step = trial(n)
        steps.append(step)
        return step.ok

    stopped = ""
    n = max(1, min(plan.start, plan.max_tasks))
    if run(n):
        lo = n
        while not (stopped := budget_left()):
            if n >= plan.max_tasks:
                stopped = "max_tasks"
                break
            n = min(2 * n, plan.max_tasks)
            if run(n):
                lo = n
            else:
                hi = n
                break
    else:
        hi = n
        while n > 1 and not (stopped := budget_left()):
            n //= 2
            if run(n):
                lo = n
                break
            hi = n
    if hi is not None and not stopped:
        while hi - lo > max(1.0, plan.resolution * lo):
            if stopped := budget_left():
                break
            mid = (lo + hi) // 2
            if run(mid):
                lo = mid
            else:
                hi = mid
    return Sweep(lo, hi, steps, stopped or "resolved")
