"""The AG-UI adapter, driven by the official ``@ag-ui/client`` HttpAgent (Node) against a real
gateway."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.server import Settings, serve_in_background
from gateway.testing.held import Held
from protocol.events import TaskCancelled
from protocol.frames import EventFrame

NODE_DIR = Path(__file__).parent / "node"
QUESTION = "What is 17*23+4?"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules" / "@ag-ui" / "client").is_dir(),
    reason="node and @ag-ui/client (make test installs them with npm ci)",
)


async def _node(*args: str, props: str | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    if props is not None:
        env["AGUI_PROPS"] = props
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_DIR / "agui_client.mjs"),
        *args,
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_http_agent_runs_the_calculator_question() -> None:
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        seen = await _node(f"http://127.0.0.1:{gw.port}/agui", "run", QUESTION)
    assert seen["error"] is None
    types = [e["type"] for e in seen["events"]]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert seen["events"][0]["runId"] == seen["runId"]
    assert seen["result"]["final_answer"] == "395"
    # the calculator call, its arguments and its result, in order
    start = types.index("TOOL_CALL_START")
    assert types[start : start + 4] == [
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
    ]
    call = seen["events"][start]
    assert call["toolCallName"] == "calculator__calculate"
    assert json.loads(seen["events"][start + 1]["delta"]) == {"expression": "17*23+4"}
    assert seen["events"][start + 3]["content"] == "395"
    # reasoning, steps and text
    for kind in ("REASONING_START", "REASONING_MESSAGE_CONTENT", "REASONING_END"):
        assert kind in types
    steps = [e["stepName"] for e in seen["events"] if e["type"] == "STEP_STARTED"]
    assert steps == ["turn 1", "turn 2", "summary"]
    assert types.count("STEP_STARTED") == types.count("STEP_FINISHED")
    assert types.count("TEXT_MESSAGE_START") == types.count("TEXT_MESSAGE_END") >= 1
    # the client built the conversation: the user's question, the answer with \\boxed{395}
    assert seen["messages"][0] == {"role": "user", "content": QUESTION}
    assert any(
        m["role"] == "assistant" and "\\boxed{395}" in (m["content"] or "")
        for m in seen["messages"]
    )


async def test_aborting_the_request_cancels_the_run() -> None:
    held = Held("turn 2")
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=held.runner()
    ) as gw:
        seen = await _node(f"http://127.0.0.1:{gw.port}/agui", "abort", QUESTION)
        types = [e["type"] for e in seen["events"]]
        assert "TOOL_CALL_RESULT" in types and "RUN_FINISHED" not in types
        assert seen["events"][-1]["code"] == "abort"  # the client's own note of its abort
        manager = gw.gateway.manager
        assert manager is not None
        # Wait for the end without subscribing (a subscriber would keep the run watched).
        ended: list[EventFrame] = []
        done = asyncio.Event()

        def listener(item: object) -> None:
            if isinstance(item, EventFrame) and isinstance(item.event, TaskCancelled):
                ended.append(item)
                done.set()

        undo = await manager.backend.listen("local", seen["runId"], listener)
        try:
            status = await manager.status("local", seen["runId"])
            if status.state != "cancelled":
                await done.wait()
        finally:
            undo()
        status = await manager.status("local", seen["runId"])
        assert status.state == "cancelled"
        assert held.arrivals("summary") == 0  # the work stopped before its summary


async def test_refusals_are_run_errors() -> None:
    settings = Settings(port=0, web_root=None, tokens={"secret": "alice"})
    async with serve_in_background(settings, runner_factory=Held().runner()) as gw:
        url = f"http://127.0.0.1:{gw.port}/agui"
        async with httpx.AsyncClient() as http:
            refused = await http.post(url, json={})
            assert refused.status_code == 401
            assert refused.json()["type"] == "RUN_ERROR"
            auth = {"Authorization": "Bearer secret"}
            bad = await http.post(url, headers=auth, json={"threadId": "t"})
            assert bad.status_code == 400
            assert bad.json()["code"] == "invalid_input"
            assert "runId" in bad.json()["message"] or "run_id" in bad.json()["message"]


async def test_sub_agents_are_mapped() -> None:
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        seen = await _node(f"http://127.0.0.1:{gw.port}/agui", "run", "delegate: what is 2+3?")
    assert seen["error"] is None
    events = seen["events"]
    types = [e["type"] for e in events]
    call = next(
        e
        for e in events
        if e["type"] == "TOOL_CALL_START" and e["toolCallName"].startswith("agents")
    )
    started = events[types.index("SUBAGENT_STARTED")]
    assert started["parentToolCallId"] == call["toolCallId"]
    sub = started["subagentRunId"]
    assert sub.startswith("main/")
    inner = [
        e for e in events if e.get("subagentRunId") == sub and e["type"].startswith("TOOL_CALL")
    ]
    assert inner, "the sub-agent's own tool calls carry its subagentRunId"
    assert types.index("SUBAGENT_STARTED") < types.index("SUBAGENT_FINISHED") < len(types) - 1
    assert types[-1] == "RUN_FINISHED"


def _sse(lines: list[str]) -> list[tuple[int | None, dict[str, Any]]]:
    """(id, event) pairs of an SSE body's lines."""
    out: list[tuple[int | None, dict[str, Any]]] = []
    event_id: int | None = None
    for line in lines:
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            out.append((event_id, json.loads(line[6:])))
        elif not line:
            event_id = None
    return out


async def test_last_event_id_resumes_a_dropped_stream() -> None:
    held = Held("turn 2")
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=held.runner()
    ) as gw:
        url = f"http://127.0.0.1:{gw.port}/agui"
        body = {
            "threadId": "thread-1",
            "runId": "run-resume",
            "messages": [{"id": "u1", "role": "user", "content": QUESTION}],
            "state": {},
            "tools": [],
            "context": [],
            "forwardedProps": {"ospark": {"detach_ttl": 60}},
        }
        first: list[str] = []
        async with httpx.AsyncClient(timeout=30) as http:
            async with http.stream("POST", url, json=body) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    first.append(line)
                    if line.startswith("data: ") and '"TOOL_CALL_RESULT"' in line:
                        break  # drop the connection here
            await held.reached("turn 2")
            held.release()  # the run goes on (detach_ttl 60) with nobody connected
            before = _sse([*first, ""])
            last = max(i for i, _ in before if i is not None)
            resumed = await http.post(url, json=body, headers={"Last-Event-ID": str(last)})
        after = _sse(resumed.text.splitlines())
    assert before[0][1]["type"] == "RUN_STARTED"
    assert after[0][1]["type"] != "RUN_STARTED" and after[-1][1]["type"] == "RUN_FINISHED"
    assert after[-1][1]["result"]["final_answer"] == "395"
    ids = [i for i, _ in before + after if i is not None]
    assert ids == list(range(1, ids[-1] + 1))  # every seq once, in order


async def test_a_cancel_through_a2a_ends_the_agui_run() -> None:
    from a2a.client import ClientConfig, create_client
    from a2a.types.a2a_pb2 import CancelTaskRequest, TaskState

    held = Held("summary")
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=held.runner()
    ) as gw:
        body = {
            "threadId": "thread-1",
            "runId": "run-cancelled-elsewhere",
            "messages": [{"id": "u1", "role": "user", "content": QUESTION}],
        }
        lines: list[str] = []
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", f"{gw.http_url}/agui", json=body) as response,
        ):
            async for line in response.aiter_lines():
                lines.append(line)
                if '"STEP_STARTED"' in line and '"summary"' in line:
                    await held.reached("summary")
                    client = await create_client(gw.http_url, ClientConfig(httpx_client=http))
                    task = await client.cancel_task(CancelTaskRequest(id=body["runId"]))
                    assert task.status.state == TaskState.TASK_STATE_CANCELED
    events = [e for _, e in _sse([*lines, ""])]
    assert events[-1]["type"] == "RUN_FINISHED"
    assert events[-1]["outcome"] == {"type": "cancelled"}
    assert events[-1]["result"] == {"cancelled": "cancelled by an A2A client"}


# --------------------------------------------------------------------------- threads, interrupts

ASK = "Please ask me for a number to double"


async def _served(*args: str, props: str | None = None) -> dict[str, Any]:
    """What the node client saw running ``args`` against a gateway of its own."""
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        return await _node(f"{gw.http_url}/agui", *args, props=props)


async def test_a_second_run_in_the_thread_sees_the_first() -> None:
    seen = await _served("thread", QUESTION, "Add 5 to that")
    first, second = seen["runs"]
    assert first["error"] is None and second["error"] is None
    assert first["result"]["final_answer"] == "395"
    assert second["result"]["final_answer"] == "400"
    assert first["events"][0]["threadId"] == second["events"][0]["threadId"] == seen["threadId"]
    started = next(
        e["value"]
        for e in second["events"]
        if e["type"] == "CUSTOM" and e["name"] == "ospark.started"
    )
    assert started["thread_id"] == seen["threadId"] and started["history_turns"] == 1


def _types(run: dict[str, Any]) -> list[str]:
    return [e["type"] for e in run["events"]]


async def test_a_question_is_an_interrupt_and_a_resume_answers_it() -> None:
    seen = await _served("interrupt", ASK, '{"text": "21"}')
    asked, resumed = seen["runs"]
    assert asked["error"] is None and resumed["error"] is None
    end = asked["events"][-1]
    assert end["type"] == "RUN_FINISHED" and end["outcome"]["type"] == "interrupt"
    (interrupt,) = end["outcome"]["interrupts"]
    assert interrupt["reason"] == "input_required"
    assert interrupt["message"] == "Which number should I use?"
    assert interrupt["responseSchema"]["required"] == ["text"]
    assert interrupt["id"].startswith(f"{asked['runId']}~")
    assert asked["interrupts"] == [interrupt]  # the client holds it as pending
    ask_call = next(e for e in asked["events"] if e["type"] == "TOOL_CALL_START")
    assert ask_call["toolCallName"] == "user__ask_user"

    types = _types(resumed)
    assert types[0] == "RUN_STARTED" and resumed["events"][0]["runId"] == resumed["runId"]
    assert types[-1] == "RUN_FINISHED" and resumed["result"]["final_answer"] == "42"
    received = next(e for e in resumed["events"] if e.get("name") == "ospark.input_received")
    assert received["value"]["text"] == "21"
    # the ask_user call of the first run gets its result in the second
    result = next(e for e in resumed["events"] if e["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == ask_call["toolCallId"] and result["content"] == "21"


@pytest.mark.parametrize("payload", ['{"approved": true}', '{"approved": false, "text": "no"}'])
async def test_an_approval_is_a_tool_call_interrupt(payload: str) -> None:
    props = '{"ospark": {"agent": "demo-approval"}}'
    seen = await _served("interrupt", QUESTION, payload, props=props)
    asked, resumed = seen["runs"]
    types = _types(asked)
    # the proposed call is announced in the interrupted run, then the run ends
    start = types.index("TOOL_CALL_START")
    assert types[start : start + 3] == ["TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END"]
    call = asked["events"][start]
    assert call["toolCallName"] == "calculator__calculate"
    assert json.loads(asked["events"][start + 1]["delta"]) == {"expression": "17*23+4"}
    assert "TOOL_CALL_RESULT" not in types
    (interrupt,) = asked["events"][-1]["outcome"]["interrupts"]
    assert interrupt["reason"] == "tool_call"
    assert interrupt["toolCallId"] == call["toolCallId"]
    assert interrupt["metadata"]["ospark"]["arguments"] == {"expression": "17*23+4"}
    # the resumed run gives that call its result, without announcing it again
    assert resumed["error"] is None
    calls = [e for e in resumed["events"] if e["type"] == "TOOL_CALL_START"]
    assert call["toolCallId"] not in [e["toolCallId"] for e in calls]
    result = next(e for e in resumed["events"] if e["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == call["toolCallId"]
    if json.loads(payload)["approved"]:
        assert result["content"] == "395"
        assert resumed["result"]["final_answer"] == "395"
    else:
        assert result["content"] == "error: denied by the user: no"
        assert _types(resumed)[-1] == "RUN_FINISHED"


async def test_a_cancelled_interrupt_cancels_the_task() -> None:
    async with serve_in_background(
        Settings(port=0, web_root=None), runner_factory=Held().runner()
    ) as gw:
        seen = await _node(f"{gw.http_url}/agui", "interrupt", ASK, "cancel")
        asked, resumed = seen["runs"]
        assert resumed["events"][-1]["outcome"] == {"type": "cancelled"}
        assert resumed["events"][-1]["result"] == {"cancelled": "the interrupt was cancelled"}
        status = await gw.gateway.manager.status("local", asked["runId"])
        assert status.state == "cancelled"
        # cancelled once: a second cancel of it is refused, not an empty run
        entry = {"interruptId": asked["interrupts"][0]["id"], "status": "cancelled"}
        body = {"threadId": seen["threadId"], "runId": "again", "messages": [], "resume": [entry]}
        async with httpx.AsyncClient(timeout=30) as http:
            again = await http.post(f"{gw.http_url}/agui", json=body)
        assert again.status_code == 409 and again.json()["code"] == "task_finished"


async def test_an_interrupted_task_waits_and_blocks_its_thread() -> None:
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=Held().runner()) as gw,
        httpx.AsyncClient(timeout=30) as http,
    ):
        url = f"{gw.http_url}/agui"
        body: dict[str, Any] = {
            "threadId": "thread-ask",
            "runId": "run-ask",
            "messages": [{"id": "u1", "role": "user", "content": ASK}],
        }
        proto = {"Accept": "application/vnd.ag-ui.event+proto"}
        first = await http.post(url, json=body, headers=proto)
        # the encoder has no binary encoding: SSE whatever the Accept
        assert first.headers["content-type"].startswith("text/event-stream")
        events = [e for _, e in _sse(first.text.splitlines())]
        assert events[-1]["outcome"]["type"] == "interrupt"
        interrupt_id = events[-1]["outcome"]["interrupts"][0]["id"]
        # The stream has ended but the run (detach policy `cancel`) still waits.
        status = await gw.gateway.manager.status("local", "run-ask")
        assert status.state == "input_required"

        # A new run on the thread without the resume is refused.
        again = {**body, "runId": "run-2"}
        refused = await http.post(url, json=again)
        assert refused.status_code == 409 and refused.json()["code"] == "thread_busy"
        assert "waits for an answer" in refused.json()["message"]
        # A wrong answer, another thread, an unknown interrupt: refused, the wait goes on.
        resume = {**body, "runId": "run-3", "resume": [{"interruptId": interrupt_id}]}
        for entry, thread, code in [
            ({"status": "resolved", "payload": {"text": ""}}, "thread-ask", "invalid_answer"),
            ({"status": "resolved", "payload": {"text": "4"}}, "other", "invalid_field"),
        ]:
            bad = {**resume, "threadId": thread, "resume": [{"interruptId": interrupt_id, **entry}]}
            reply = await http.post(url, json=bad)
            assert reply.json()["code"] == code, reply.text
        unknown = {**resume, "resume": [{"interruptId": "run-ask~nope", "status": "resolved"}]}
        assert (await http.post(url, json=unknown)).json()["code"] == "unknown_request"

        good = {"interruptId": interrupt_id, "status": "resolved", "payload": {"text": "4"}}
        resumed = await http.post(url, json={**resume, "resume": [good]})
        after = [e for _, e in _sse(resumed.text.splitlines())]
        assert after[0]["type"] == "RUN_STARTED" and after[0]["runId"] == "run-3"
        assert after[-1]["result"]["final_answer"] == "8"
        # the answer is taken once
        twice = await http.post(url, json={**resume, "runId": "run-4", "resume": [good]})
        assert twice.status_code == 409 and twice.json()["code"] == "already_answered"


async def test_a_run_on_a_busy_thread_waits_for_the_running_one() -> None:
    held = Held("summary")
    async with (
        serve_in_background(Settings(port=0, web_root=None), runner_factory=held.runner()) as gw,
        httpx.AsyncClient(timeout=30) as http,
    ):
        url = f"{gw.http_url}/agui"

        def run(run_id: str, text: str) -> dict[str, Any]:
            messages = [{"id": run_id, "role": "user", "content": text}]
            return {"threadId": "thread-busy", "runId": run_id, "messages": messages}

        async with http.stream("POST", url, json=run("run-1", QUESTION)) as first:
            lines = first.aiter_lines()
            async for line in lines:
                if '"STEP_STARTED"' in line and '"summary"' in line:
                    break
            await held.reached("summary")  # the first run is still running
            async with http.stream("POST", url, json=run("run-2", "Add 5 to that")) as second:
                events = (
                    json.loads(x[6:]) async for x in second.aiter_lines() if x[:6] == "data: "
                )
                assert (await anext(events))["type"] == "RUN_STARTED"
                waiting = await anext(events)
                assert waiting["name"] == "ospark.progress"
                assert waiting["value"]["step"] == "waiting_for_thread"
                held.release()
                rest = [e async for e in events]
            assert '"final_answer":"395"' in "".join([line async for line in lines])
    assert rest[-1]["type"] == "RUN_FINISHED" and rest[-1]["result"]["final_answer"] == "400"
