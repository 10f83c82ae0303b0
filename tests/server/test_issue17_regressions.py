"""Issue 17 regressions over real sockets: a lost cancel, and one client's input freezing others.

Each test runs a real uvicorn server on an ephemeral port and real WebSocket clients, and waits
on events only: no sleeps, no wall-clock thresholds.

**The lost cancel.** With ``max_running=1``, task *b* waits in the run queue behind *a*. When
*a* ends, the manager hands its run slot to *b*: :meth:`RunSlots.release` sets the result of
*b*'s waiter, and *b*'s driver resumes on a later pass of the event loop, takes the slot and
calls the runner (there is no ``await`` between the two). A cancel that reaches the manager
between the hand-over and that resumption found a task neither queued nor running: the old
manager recorded it ("the driver sees ``cancel_reason`` before starting the run") but the driver
had already looked, so *b* ran to ``task_completed`` after ``cancel_ack: accepted``. The same
path lost ``on_detach: cancel`` when *b*'s last client left in that window.

That window is one pass of the event loop, so a cancel sent at random hits it only by luck
(the issue saw it with 256 slots and hundreds of fast cancels). The tests place it exactly:
the cancel (or the client's departure) arrives over the socket as usual, and the server's
handling of it is made to wait until *a*'s run has returned. *a*'s runner signals its end just
before returning, in the same step as the manager ends *a* and hands the slot to *b*, so the
waiting handler resumes before *b*'s driver does; the test records the manager's state there
(slot handed over, queue empty, *b*'s runner never called) and so proves it hit the window.

**The pathological input.** See the docstring of its test below.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence

import pytest

from gateway.agent.llm import demo
from gateway.connection import Connection
from gateway.server import Settings, serve_in_background
from gateway.streaming.runner import TaskSpec
from gateway.tasks import TaskManager, TaskManagerConfig
from gateway.testing import HOLD, ScriptedRunner, Step
from gateway.testing.held import Held
from protocol import (
    Accepted,
    CancelAck,
    EventFrame,
    Ping,
    Pong,
    StartOptions,
    Subscribe,
    Subscribed,
    TaskCancelled,
    TaskCompleted,
    TaskStarted,
)
from tests.server.helpers import Client


def _a_waits(spec: TaskSpec) -> Sequence[Step]:
    """Task ``a`` holds its run slot until released; any other task would just complete."""
    steps: list[Step] = [TaskStarted(input=spec.input, model="scripted")]
    if spec.task_id == "a":
        steps.append(HOLD)
    return steps


def _kinds(frames: list[EventFrame]) -> list[str]:
    return [f.event.__struct_config__.tag for f in frames]  # type: ignore[misc]


def _window(manager: TaskManager, runner: ScriptedRunner) -> dict[str, object]:
    """What the manager looks like where the cancel must not be lost."""
    return {
        "queued": manager.pending_count,  # b has left the queue ...
        "slots_taken": manager.running_count,  # ... a's slot was handed to b ...
        "b_started": "b" in runner.runs,  # ... and b's runner has not been called
    }


IN_THE_WINDOW = {"queued": 0, "slots_taken": 1, "b_started": False}


def _settings() -> Settings:
    return Settings(port=0, web_root=None, tasks=TaskManagerConfig(max_running=1))


async def _a_running_and_b_queued(client: Client, runner: ScriptedRunner) -> None:
    rid = await client.start("first", task_id="a")
    await client.reply(rid, Accepted)
    await (await runner.started("a")).holding.wait()
    rid = await client.start("second", task_id="b")
    await client.reply(rid, Accepted)
    await client.until(lambda: _kinds(client.events["b"]) == ["task_progress"])  # queued


async def test_a_cancel_between_leaving_the_queue_and_starting_ends_the_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``cancel_ack: accepted`` for a task let out of the queue but not started is followed by
    ``task_cancelled``, and its runner is never called (before the fix: ``task_started`` …
    ``task_completed``)."""
    runner = ScriptedRunner(script=_a_waits)
    async with serve_in_background(_settings(), runner_factory=runner) as gw:
        manager = gw.gateway.manager
        assert manager is not None
        seen: dict[str, object] = {}
        cancel = manager.cancel

        async def cancel_as_a_ends(
            owner: str, task_id: str, reason: str = "cancelled by client"
        ) -> object:
            if task_id == "b":
                run_a = runner.runs["a"]
                run_a.release()
                await run_a.finished.wait()  # set as a's runner returns: b is handed the slot
                seen.update(_window(manager, runner))
            return await cancel(owner, task_id, reason)

        monkeypatch.setattr(manager, "cancel", cancel_as_a_ends)
        async with await Client.connect(gw.url) as client:
            await _a_running_and_b_queued(client, runner)
            ack = await client.reply(await client.cancel("b"), CancelAck)
            assert ack.result == "accepted"
            await client.until_finished(["a", "b"])
        assert seen == IN_THE_WINDOW
        assert _kinds(client.events["a"])[-1] == "task_completed"
        assert _kinds(client.events["b"]) == ["task_progress", "task_cancelled"]
        assert "b" not in runner.runs  # the work never began
        assert manager.running_count == 0  # the slot handed to b came back


async def test_on_detach_cancel_between_leaving_the_queue_and_starting_ends_the_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task with ``on_detach: cancel`` whose only client disconnects while the task is let
    out of the queue but not started ends with ``task_cancelled`` (reason ``detached…``), and
    its runner is never called (before the fix it ran to its end with nobody watching)."""
    runner = ScriptedRunner(script=_a_waits)
    async with serve_in_background(_settings(), runner_factory=runner) as gw:
        manager = gw.gateway.manager
        assert manager is not None
        seen: dict[str, object] = {}
        closes: list[asyncio.Task[None]] = []
        leaving: list[str] = []  # the session id of b's connection
        close = Connection.close

        def close_as_a_ends(conn: Connection) -> None:
            if conn.session_id not in leaving:
                close(conn)
                return
            leaving.clear()
            run_a = runner.runs["a"]
            run_a.release()

            async def when_a_has_ended() -> None:
                await run_a.finished.wait()  # set as a's runner returns: b is handed the slot
                seen.update(_window(manager, runner))
                close(conn)  # unsubscribes b's last client: its detach policy cancels it

            closes.append(asyncio.create_task(when_a_has_ended()))

        monkeypatch.setattr(Connection, "close", close_as_a_ends)
        async with await Client.connect(gw.url) as watcher:
            rid = await watcher.start("first", task_id="a")
            await watcher.reply(rid, Accepted)
            await (await runner.started("a")).holding.wait()
            async with await Client.connect(gw.url) as leaver:
                assert leaver.hello is not None
                rid = await leaver.start(
                    "second", task_id="b", options=StartOptions(on_detach="cancel")
                )
                await leaver.reply(rid, Accepted)
                await leaver.until(lambda: _kinds(leaver.events["b"]) == ["task_progress"])
                leaving.append(leaver.hello.session_id)
            # The leaver is gone; the same principal (anonymous, loopback) looks at b's log.
            await watcher.until_finished(["a"])
            (closing,) = closes
            await closing
            assert seen == IN_THE_WINDOW
            rid = watcher.next_id()
            await watcher.send(Subscribe(id=rid, task_id="b"))
            await watcher.reply(rid, Subscribed)
            await watcher.until_finished(["b"])
        assert _kinds(watcher.events["a"])[-1] == "task_completed"
        assert _kinds(watcher.events["b"]) == ["task_progress", "task_cancelled"]
        end = watcher.events["b"][-1].event
        assert isinstance(end, TaskCancelled) and end.reason.startswith("detached")
        assert "b" not in runner.runs
        assert manager.running_count == 0


# -- one client's input must not freeze the others -------------------------------------------


class _CountingPattern:
    """A compiled pattern of the demo model that counts the characters it is given to scan."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self._pattern = pattern
        self.scanned = 0

    def __getattr__(self, name: str) -> Callable[..., object]:
        method: Callable[..., object] = getattr(self._pattern, name)

        def counted(text: str, *args: object) -> object:
            self.scanned += len(text)
            return method(text, *args)

        return counted


def _count_the_demo_models_scans(monkeypatch: pytest.MonkeyPatch) -> dict[str, _CountingPattern]:
    counters = {}
    for name, value in vars(demo).items():
        if isinstance(value, re.Pattern):
            counters[name] = _CountingPattern(value)
            monkeypatch.setattr(demo, name, counters[name])
    assert "_ARITHMETIC_RUN" in counters and "DELEGATE_TRIGGER" in counters
    return counters


async def test_a_pathological_input_leaves_a_bystanders_ping_unaffected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``start`` of 100,000 ``(`` (the largest input allowed) on one connection puts only
    bounded work in front of another connection's ``ping``.

    Why it is tested by counting work and not by timing the ping: the server runs on one event
    loop, so the demo model's scan of the task is one synchronous step, and a long step changes
    *when* the bystander's ``pong`` comes, never the *order* in which the server does things. An
    ordering assertion alone would pass on a frozen loop; a time threshold would be flaky. So
    the test pins the order and bounds what comes before the ``pong``:

    1. the pathological task's first model call is held at ``turn 1 text`` (the demo model has
       scanned the task and streamed its reasoning, and waits before its answer text), so its
       scan of the whole input has certainly run before the bystander's ``ping`` is sent;
    2. every pattern of the demo model counts the characters it was given: by then each has
       scanned at most ``MAX_SCAN_CHARS`` — the whole of the synchronous work that the
       pathological input put on the loop ahead of the ``ping`` — and the ``pong`` comes back
       on a connection that is still open;
    3. released, the task runs to ``task_completed`` with each pattern's total still bounded
       (a few model calls of at most ``MAX_SCAN_CHARS`` each), and the bystander still answers.

    Before the fix the demo model matched its patterns against the whole task, with an
    arithmetic pattern that backtracked (quadratic in a run of ``(``): step 2 fails with
    100,000 characters scanned by each pattern (after the loop froze for about 15 s, which is
    when the issue's bystander was dropped with 1006).
    """
    counters = _count_the_demo_models_scans(monkeypatch)
    held = Held("turn 1 text")
    limit = demo.MAX_SCAN_CHARS
    task = "(" * 100_000
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=held.runner()) as gw,
        await Client.connect(gw.url) as hostile,
        await Client.connect(gw.url) as bystander,
    ):
        rid = await hostile.start(task, task_id="parens")
        await hostile.reply(rid, Accepted)
        await held.reached("turn 1 text")
        assert held.arrivals("turn 1") == 1  # one model call so far, its scan done
        scanned = {name: c.scanned for name, c in counters.items()}
        assert scanned["_ARITHMETIC_RUN"] > 0  # the task was scanned ...
        assert max(scanned.values()) <= limit, scanned  # ... only its first MAX_SCAN_CHARS

        rid = bystander.next_id()
        await bystander.send(Ping(id=rid, payload="still there?"))
        pong = await bystander.reply(rid, Pong)
        assert pong.payload == "still there?"
        assert held.arrivals("turn 1 end") == 0  # the task is still held where it was

        held.release()
        await hostile.until_finished(["parens"])
        end = hostile.events["parens"][-1].event
        assert isinstance(end, TaskCompleted), end
        calls = sum(held.arrivals(f"turn {n}") for n in range(1, 10)) + held.arrivals("summary")
        totals = {name: c.scanned for name, c in counters.items()}
        assert max(totals.values()) <= calls * limit, (calls, totals)

        rid = bystander.next_id()
        await bystander.send(Ping(id=rid))
        await bystander.reply(rid, Pong)
