"""The capacity sweep's logic and its latency histograms, without servers (the smoke run
drives the real steps)."""

from __future__ import annotations

import itertools
import math

import pytest

from bench.capacity import Plan, Step, histogram, merge, percentile, sweep, verdict


def limit(threshold: int) -> tuple[list[int], object]:
    tried: list[int] = []

    def trial(n: int) -> Step:
        tried.append(n)
        return Step(n, n <= threshold, {"n": n})

    return tried, trial


UNBOUNDED = {"max_tasks": 1_000_000, "max_steps": 100, "seconds": math.inf}


@pytest.mark.parametrize("threshold", [1, 7, 99, 100, 101, 1234, 40_000])
def test_sweep_brackets_the_largest_passing_step_within_the_resolution(threshold: int) -> None:
    tried, trial = limit(threshold)
    result = sweep(trial, Plan(start=100, resolution=0.1, **UNBOUNDED))  # type: ignore[arg-type]
    assert result.capacity <= threshold
    assert result.failed_at is not None and result.failed_at > threshold
    assert result.failed_at - result.capacity <= max(1, 0.1 * result.capacity)
    assert result.stopped == "resolved"
    assert len(tried) == len(set(tried)), "no step is run twice"
    assert [s.n for s in result.steps] == tried
    assert result.step(result.capacity) is not None or result.capacity == 0


@pytest.mark.parametrize("threshold", [0, 1, 2, 3, 50, 64, 65, 333, 5000])
def test_sweep_with_unit_resolution_finds_the_exact_limit(threshold: int) -> None:
    _, trial = limit(threshold)
    result = sweep(trial, Plan(start=64, resolution=0.0, **UNBOUNDED))  # type: ignore[arg-type]
    assert result.capacity == threshold
    assert result.failed_at == threshold + 1


def test_a_server_that_never_fails_is_reported_as_capped() -> None:
    tried, trial = limit(10**9)
    result = sweep(trial, Plan(100, 1000, 20, 0.1, math.inf))  # type: ignore[arg-type]
    assert (result.capacity, result.failed_at, result.stopped) == (1000, None, "max_tasks")
    assert tried == [100, 200, 400, 800, 1000]


def test_the_sweep_stops_at_its_step_and_time_budgets() -> None:
    tried, trial = limit(5000)
    result = sweep(trial, Plan(100, 10**6, 4, 0.01, math.inf))  # type: ignore[arg-type]
    assert tried == [100, 200, 400, 800]
    assert (result.capacity, result.failed_at, result.stopped) == (800, None, "max_steps")

    tried, trial = limit(150)
    ticks = itertools.count(0, 10)  # every step "takes" 10 s
    result = sweep(trial, Plan(100, 10**6, 100, 0.0, 25), clock=lambda: float(next(ticks)))  # type: ignore[arg-type]
    assert len(tried) <= 4
    assert result.stopped == "time"
    assert result.capacity <= 150 < (result.failed_at or math.inf)


def test_percentiles_of_merged_histograms_match_the_samples_within_one_percent() -> None:
    samples = [i / 1000 for i in range(1, 1001)]  # 1 ms … 1 s
    whole = merge([histogram(samples)])
    halves = merge([histogram(samples[::2]), histogram(samples[1::2])])
    assert whole == halves
    for q, exact in ((0.5, 501.0), (0.99, 991.0), (0.999, 1000.0)):
        assert exact * (1 - 1e-9) <= percentile(halves, q) <= exact * 1.01
    assert percentile({}, 0.99) == math.inf
    assert percentile(merge([histogram([0.0, -0.001])]), 0.5) == pytest.approx(0.01)


def test_verdict_names_every_reason_a_step_fails() -> None:
    fast = merge([histogram([0.001] * 100)])
    slow = merge([histogram([0.001] * 90 + [0.2] * 10)])
    assert verdict(fast, 100, 100, 0, p99_ms=50, min_delivered=0.95) == (True, "")
    ok, why = verdict(slow, 50, 100, 3, p99_ms=50, min_delivered=0.95)
    assert not ok
    assert "p99 20" in why and "> 50 ms" in why
    assert "50.0% of the events delivered" in why
    assert "3 tasks not started" in why
