"""The two translation tables on scripted event sequences (no server): every AG-UI event is a
valid ``ag-ui-protocol`` model, what opens is closed, and each terminal event maps as
documented."""

from __future__ import annotations

import time

from a2a.types.a2a_pb2 import TaskState
from ag_ui.core import EventType
from google.protobuf import json_format

from gateway.adapters.a2a import A2ATranslator
from gateway.adapters.agui import AGUITranslator
from protocol.events import (
    Event,
    InputReceived,
    InputRequest,
    InputRequired,
    LlmResponse,
    TaskCancelled,
    TaskFailed,
    TaskProgress,
    ToolCallComplete,
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


def test_agui_a_sub_agents_approval_suspends_it_and_ends_the_run() -> None:
    worker = "main/agent-worker#1"
    request = InputRequest(
        request_id="approval-1",
        kind="approval",
        prompt="Allow calculator/calculate?",
        server="calculator",
        tool="calculate",
        arguments={"expression": "1+1"},
        call_id="c7",
    )
    translator = AGUITranslator("th", "t1")
    out = []
    for frame in _frames(
        ToolCallStart(call_id="c1", server="agents", tool="agent-worker", arguments={}),
        TaskProgress(step="subagent_started", message="go", agent=worker),
        TaskProgress(step="turn_started", turn=1, agent=worker),
        LlmResponse(delta="Let me compute", channel="text", turn=1, agent=worker),
        InputRequired(request=request, agent=worker),
    ):
        out += translator(frame)
    assert translator.interrupted
    dumped = [e.model_dump(mode="json", by_alias=True, exclude_none=True) for e in out]
    types = [d["type"] for d in dumped]
    assert types[-7:] == [
        "TEXT_MESSAGE_END",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "STEP_FINISHED",
        "SUBAGENT_FINISHED",
        "RUN_FINISHED",
    ]
    announced = dumped[types.index("TOOL_CALL_START", 1)]
    assert announced["toolCallId"] == f"{worker}:c7" and announced["subagentRunId"] == worker
    finished = dumped[types.index("SUBAGENT_FINISHED")]
    assert finished["outcome"] == {"type": "suspended", "interruptIds": ["t1~approval-1"]}
    (interrupt,) = dumped[-1]["outcome"]["interrupts"]
    assert interrupt["id"] == "t1~approval-1" and interrupt["reason"] == "tool_call"
    assert interrupt["toolCallId"] == f"{worker}:c7" and interrupt["subagentRunId"] == worker

    # The run that resumes it gives the call only its result.
    resumed = AGUITranslator("th", "t2", task_id="t1", settled_seq=5, announced=request)
    later = _frames(
        *[TaskProgress(step="x")] * 5,
        InputReceived(request_id="approval-1", approved=True, agent=worker),
        ToolCallStart(call_id="c7", server="calculator", tool="calculate", agent=worker),
        ToolCallComplete(call_id="c7", result="2", agent=worker),
    )[5:]
    kinds = [e.type for frame in later for e in resumed(frame)]
    assert EventType.TOOL_CALL_START not in kinds and EventType.TOOL_CALL_RESULT in kinds


def test_agui_a_replayed_question_already_answered_is_no_interrupt() -> None:
    request = InputRequest(request_id="question-1", kind="question", prompt="Which?")
    translator = AGUITranslator("th", "t1", settled_seq=9)  # a retry: the log up to 9 replayed
    (event,) = translator(_frames(InputRequired(request=request))[0])
    assert not translator.interrupted and event.type == EventType.CUSTOM
    pending = AGUITranslator("th", "t1", settled_seq=9, pending="question-1")
    assert pending(_frames(InputRequired(request=request))[0])[-1].type == EventType.RUN_FINISHED


def test_a2a_input_required_carries_the_prompt_and_the_request() -> None:
    request = InputRequest(request_id="choice-1", kind="choice", prompt="Which?", options=["a"])
    translator = A2ATranslator("t1", "ctx")
    (update,) = translator(_frames(InputRequired(request=request))[0])
    assert translator.interrupted
    assert update.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    text, data = update.status.message.parts
    assert text.text == "Which?"
    assert json_format.MessageToDict(data.data) == {
        "request_id": "choice-1",
        "kind": "choice",
        "prompt": "Which?",
        "options": ["a"],
    }
