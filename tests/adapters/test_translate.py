"""The two translation tables on scripted event sequences (no server): every AG-UI event is a
valid ``ag-ui-protocol`` model, what opens is closed, and each terminal event maps as
documented."""

from __future__ import annotations

import time

from a2a.types.a2a_pb2 import TaskState
from ag_ui.core import EventType

from gateway.adapters.a2a import A2ATranslator
from gateway.adapters.agui import AGUITranslator
from protocol.events import (
    Event,
    LlmResponse,
    TaskCancelled,
    TaskFailed,
    TaskProgress,
    ToolCallStart,
)
from protocol.frames import EventFrame, Gap


def _frames(*events: Event) -> list[EventFrame]:
    return [
        EventFrame(task_id="t1", seq=i, ts=time.time(), event=e) for i, e in enumerate(events, 1)
    ]


OPENING = (
    TaskProgress(step="turn_started", turn=1, message="turn 1"),
    LlmResponse(delta="thinking", channel="reasoning", turn=1),
    LlmResponse(delta="Calling", channel="text", turn=1),
    ToolCallStart(call_id="c1", server="calculator", tool="calculate", arguments={"x": 1}),
)


def _agui(*events: Event) -> list[EventType]:
    translator = AGUITranslator("th", "t1")
    out = []
    for frame in _frames(*events):
        out += translator(frame)
    return [e.type for e in out]


def test_agui_failure_closes_what_is_open_then_run_error() -> None:
    types = _agui(
        *OPENING,
        LlmResponse(delta="more", channel="text", turn=1),
        TaskFailed(reason="the model failed", code="provider_error"),
    )
    assert types[-4:] == [
        EventType.TEXT_MESSAGE_CONTENT,
        EventType.TEXT_MESSAGE_END,
        EventType.STEP_FINISHED,
        EventType.RUN_ERROR,
    ]
    assert types.count(EventType.TEXT_MESSAGE_START) == types.count(EventType.TEXT_MESSAGE_END)


def test_agui_cancel_is_a_cancelled_outcome() -> None:
    translator = AGUITranslator("th", "t1")
    out = []
    for frame in _frames(*OPENING, TaskCancelled(reason="stop")):
        out += translator(frame)
    last = out[-1]
    assert last.type == EventType.RUN_FINISHED
    assert last.model_dump(mode="json", by_alias=True)["outcome"] == {"type": "cancelled"}


def test_agui_gap_is_a_custom_event() -> None:
    gap = Gap(task_id="t1", first_available_seq=9, after_seq=3)
    (event,) = AGUITranslator("th", "t1")(gap)
    assert event.type == EventType.CUSTOM
    assert event.model_dump(by_alias=True)["value"] == {"after_seq": 3, "first_available_seq": 9}


def test_a2a_events_carry_their_seq_and_failure_state() -> None:
    translator = A2ATranslator("t1", "ctx")
    out = []
    for frame in _frames(*OPENING, TaskFailed(reason="boom", code="internal")):
        out += translator(frame)
    assert [int(e.metadata["seq"]) for e in out] == [1, 2, 3, 4, 5]
    final = out[-1]
    assert final.status.state == TaskState.TASK_STATE_FAILED
    assert "failed (internal): boom" in final.status.message.parts[0].text
    assert all(e.context_id == "ctx" for e in out)
