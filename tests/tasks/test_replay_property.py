"""Property: for any log length, retention bound and ``after_seq``, a subscription delivers a
gap exactly when events after ``after_seq`` were dropped, then every retained event after it."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tasks import InMemoryBackend, TaskManager
from protocol.frames import EventFrame, Gap
from tests.tasks.conftest import Script
from tests.tasks.test_manager import collect


@settings(max_examples=60, deadline=None)
@given(
    n_events=st.integers(min_value=0, max_value=40),
    max_events=st.integers(min_value=1, max_value=50),
    after_seq=st.integers(min_value=0, max_value=50),
)
def test_replay_after_any_seq(n_events: int, max_events: int, after_seq: int) -> None:
    async def scenario() -> None:
        backend = InMemoryBackend(max_events=max_events)
        async with TaskManager(Script(n_events=n_events), backend=backend) as tm:
            started = await tm.start("o", "q")
            await collect(await tm.subscribe("o", started.task_id))
            items = await collect(await tm.subscribe("o", started.task_id, after_seq=after_seq))
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
