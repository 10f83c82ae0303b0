"""One instance of every frame and event kind, with non-default values where possible."""

from __future__ import annotations

from protocol import (
    Accepted,
    Batch,
    Cancel,
    CancelAck,
    ClientFrame,
    Closing,
    ErrorEvent,
    ErrorFrame,
    Event,
    EventFrame,
    Gap,
    Hello,
    Limits,
    LlmResponse,
    Ping,
    Pong,
    ServerFrame,
    Start,
    StartOptions,
    StatusReply,
    StatusRequest,
    Subscribe,
    Subscribed,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    TaskStatus,
    ToolCallComplete,
    ToolCallStart,
    Unsubscribe,
    Unsubscribed,
    Usage,
)

EVENTS: list[Event] = [
    TaskStarted(input="What is 17*23+4?", agent_name="main", model="demo"),
    TaskProgress(step="queued", message="waiting", queue_position=3),
    TaskProgress(step="turn_started", message="turn 1", turn=1, agent="main/agent-worker#1"),
    LlmResponse(delta="Let me", channel="reasoning", phase="turn", turn=1),
    LlmResponse(delta="The answer", phase="summary"),
    ToolCallStart(call_id="c1", server="calculator", tool="evaluate", arguments={"x": [1, 2.5]}),
    ToolCallComplete(
        call_id="c1", server="calculator", tool="evaluate", result="395", duration_ms=1.5
    ),
    ToolCallComplete(call_id="c2", error="boom", duration_ms=3.0),
    ErrorEvent(code="tool_error", message="boom", retryable=True),
    TaskCompleted(final_answer="395", summary="\\boxed{395}", usage=Usage(input_tokens=5)),
    TaskFailed(reason="context", code="context_limit", summary="partial"),
    TaskCancelled(reason="cancelled by client"),
]

CLIENT_FRAMES: list[ClientFrame] = [
    Start(id="r1", input="hi"),
    Start(
        id=7,
        input="hi",
        task_id="my-task.1",
        subscribe=False,
        options=StartOptions(
            agent="main",
            model="gpt",
            max_turns=-1,
            chinese_context=True,
            on_detach="cancel",
            detach_ttl=30.0,
        ),
    ),
    Cancel(id="r2", task_id="t1"),
    StatusRequest(id="r3"),
    StatusRequest(id="r4", task_id="t1"),
    Subscribe(id="r5", task_id="t1", after_seq=42),
    Unsubscribe(id="r6", task_id="t1"),
    Ping(),
    Ping(id="p", payload="x"),
]

SERVER_FRAMES: list[ServerFrame] = [
    Hello(
        server="0.1.0",
        session_id="s1",
        encoding="msgpack",
        principal="alice",
        limits=Limits(max_frame_bytes=1000),
        heartbeat_interval=20.0,
    ),
    Accepted(id="r1", task_id="t1", state="running", existing=True),
    CancelAck(id="r2", task_id="t1", result="already_terminal"),
    StatusReply(
        id="r3",
        tasks=[
            TaskStatus(
                task_id="t1",
                state="running",
                last_seq=3,
                created=1.0,
                updated=2.0,
                progress="turn_started",
                turn=1,
                usage=Usage(output_tokens=9),
            )
        ],
    ),
    *[EventFrame(task_id="t1", seq=i + 1, ts=1700000000.25, event=e) for i, e in enumerate(EVENTS)],
    Batch(events=[EventFrame(task_id="t2", seq=1, ts=1.0, event=e) for e in EVENTS[:3]]),
    Subscribed(id="r5", task_id="t1", state="completed", last_seq=12),
    Unsubscribed(id="r6", task_id="t1"),
    Gap(id="r5", task_id="t1", first_available_seq=10, after_seq=2),
    ErrorFrame(code="invalid_field", message="bad", id=3, task_id="t1", field="$.after_seq"),
    Pong(id="p", payload="x", ts=5.0),
    Closing(reason="shutting down", code=4003, deadline=10.0),
]
