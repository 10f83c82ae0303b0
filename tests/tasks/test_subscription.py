"""Subscriptions (:mod:`gateway.tasks.subscription`): replay, then live, with a ``gap`` exactly
when events were dropped — for any log length, retention bound and ``after_seq``."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tasks import InMemoryBackend, Subscription, TaskManager
from gateway.testing import ScriptedRunner
from protocol.events import LlmResponse
from protocol.frames import EventFrame, Gap
from tests.tasks.helpers import collect


@settings(max_examples=60, deadline=None)
@given(
    n_events=st.integers(min_value=0, max_value=40),
    max_events=st.integers(min_value=1, max_value=50),
    after_seq=st.integers(min_value=0, max_value=50),
)
def test_replay_after_any_seq(n_events: int, max_events: int, after_seq: int) -> None:
    async def scenario() -> None:
        backend = InMemoryBackend(max_events=max_events)
        async with TaskManager(ScriptedRunner(deltas=n_events), backend=backend) as tm:
            started = await tm.start("o", "q")
            await collect(await tm.subscribe("o", started.task_id))
            items = await collect(await tm.subscribe("o", started.task_id, after_seq=after_seq))
        await backend.close()
        total = n_events + 2
        first = max(1, total - max_events + 1)
        frames = [i.seq for i in items if isinstance(i, EventFrame)]
        gaps = [i for i in items if isinstance(i, Gap)]
        if after_seq + 1 < first:
            assert gaps == [
                Gap(task_id=started.task_id, first_available_seq=first, after_seq=after_seq)
            ]
            assert items[0] is gaps[0]
        else:
            assert gaps == []
        assert frames == list(range(max(after_seq + 1, first), total + 1))

    asyncio.run(scenario())


def frame(seq: int) -> EventFrame:
    return EventFrame(task_id="t", seq=seq, ts=0.0, event=LlmResponse(delta=str(seq)))


def test_the_join_drops_what_the_replay_delivered_and_holds_live_events_back() -> None:
    got: list[EventFrame | Gap] = []
    sub = Subscription("o", "t", 0, got.append)
    sub._on_live(frame(3))  # live events arriving while the replay is read
    sub._on_live(frame(4))
    sub._start(None, [frame(1), frame(2), frame(3)], lambda: None)
    sub._on_live(frame(4))  # a duplicate of one held back
    sub._on_live(frame(5))
    assert [f.seq for f in got if isinstance(f, EventFrame)] == [1, 2, 3, 4, 5]


def test_a_live_gap_from_the_backend_is_passed_on_once() -> None:
    got: list[EventFrame | Gap] = []
    sub = Subscription("o", "t", 0, got.append)
    sub._start(None, [frame(1)], lambda: None)
    sub._on_live(Gap(task_id="t", first_available_seq=5))
    sub._on_live(Gap(task_id="t", first_available_seq=5))  # nothing new: not repeated
    sub._on_live(frame(4))  # before the gap's end: dropped
    sub._on_live(frame(5))
    assert got == [frame(1), Gap(task_id="t", first_available_seq=5, after_seq=1), frame(5)]
    assert sub.last_seq == 5
