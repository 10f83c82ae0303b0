"""The terminal client: ``ospark run``, ``ospark chat``, ``ospark status``, ``ospark cancel``.

``ospark run "question"`` starts a task over :class:`gateway.client.GatewayClient` and shows it
live with rich: a spinner with the elapsed time, the progress steps, then what the agents did in
the order it happened: reasoning (dimmed), streamed text, each tool call as it starts and
finishes, a sub-agent's output labelled with its path; then the final answer. When a model call
is made again (step ``retrying``), the text it had streamed is replaced by the new copy. With
``--json`` it prints every event frame as one JSON object per line instead, for scripts.

When the task asks (``input_required``: a question, a choice, or an approval of a tool call)
and the command runs in a terminal, the live view pauses and the question is asked on the
terminal; the answer goes back with ``input`` (another connection of yours may answer first:
then that is said). Without a terminal (or with ``--json``) the task waits for an answer from
elsewhere. ``ospark chat`` is a conversation: each line typed is a turn of one thread (the
follow-ups see the earlier turns), shown like ``run``; an empty line or end of input ends it.

Ctrl-C sends ``cancel`` and keeps showing events until the terminal one arrives (a second
Ctrl-C quits at once). Exit status: 0 completed, 1 failed, 130 cancelled, 2 when the gateway
cannot be reached or refuses the request. Output closed early (``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.padding import Padding
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from gateway.client import (
    DEFAULT_URL,
    GatewayClient,
    GatewayError,
    RequestError,
    TaskFrame,
    TaskHandle,
    Terminal,
)
from protocol import (
    TERMINAL_STATES,
    ErrorEvent,
    EventFrame,
    Gap,
    InputReceived,
    InputRequest,
    InputRequired,
    LlmResponse,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskStarted,
    ToolCallComplete,
    ToolCallStart,
    UnknownEventFrame,
    UserMessage,
)

__all__ = ["add_parsers", "cancel_main", "chat_main", "run_main", "status_main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
Handler = Callable[[argparse.Namespace], int]
_JSON = msgspec.json.Encoder()


def _default_url() -> str:
    return os.environ.get("OSPARK_URL") or DEFAULT_URL


def add_parsers(sub: Any) -> None:
    """Add ``run``, ``status`` and ``cancel`` to the ``ospark`` subcommand parsers."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=_default_url(), help=f"gateway (default {DEFAULT_URL})")
        p.add_argument(
            "--token", default=os.environ.get("OSPARK_TOKEN"), help="token (or OSPARK_TOKEN)"
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("run", help="run a task and watch it live")
    p.add_argument("input", help="the question or instruction")
    common(p)
    p.add_argument("--task-id", help="client-chosen task id")
    p.add_argument("--max-turns", type=int, help="override the main agent's turn limit")
    p.add_argument("--agent", help="agent configuration name (e.g. demo-approval)")
    p.add_argument("--thread", help="continue this conversation (a thread id)")
    p.set_defaults(handler=run_main)

    p = sub.add_parser("chat", help="a conversation in the terminal (follow-ups see it)")
    common(p)
    p.add_argument("--thread", help="continue this conversation (default: a new one)")
    p.add_argument("--agent", help="agent configuration name (e.g. demo-approval)")
    p.set_defaults(handler=chat_main)

    p = sub.add_parser("status", help="show the state of your tasks")
    p.add_argument("task_id", nargs="?", help="one task (default: all)")
    common(p)
    p.set_defaults(handler=status_main)

    p = sub.add_parser("cancel", help="cancel a task")
    p.add_argument("task_id")
    common(p)
    p.set_defaults(handler=cancel_main)


def _client(args: argparse.Namespace) -> GatewayClient:
    return GatewayClient(args.url, token=args.token, reconnect_timeout=30.0)


def _fail(command: str, error: BaseException, url: str) -> int:
    message = str(error)
    if url not in message:
        message = f"{url}: {message}"
    print(f"ospark {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (``ospark status --json | head``): stop quietly.
    Whatever is still buffered for stdout goes to /dev/null, so that Python's final flush
    does not print a second traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_OK


class _Console(Console):
    def on_broken_pipe(self) -> None:
        raise BrokenPipeError  # handled like everywhere else: quietly, exit status 0


def _main(command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Handler:
    def main(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(command(args))
        except BrokenPipeError:
            return _quiet_broken_pipe()
        except KeyboardInterrupt:  # a second Ctrl-C during `run`
            return EXIT_CANCELLED

    main.__doc__ = f"``ospark {command.__name__.strip('_')}``."
    return main


# ---------------------------------------------------------------------------------- run


def _frame_json(frame: TaskFrame) -> bytes:
    if isinstance(frame, UnknownEventFrame):
        body = {"type": "event", "task_id": frame.task_id, "seq": frame.seq, "ts": frame.ts}
        return _JSON.encode({**body, "event": frame.event.data})
    return _JSON.encode(frame)


def _options(args: argparse.Namespace) -> dict[str, Any] | None:
    options: dict[str, Any] = {}
    if getattr(args, "max_turns", None) is not None:
        options["max_turns"] = args.max_turns
    if getattr(args, "agent", None):
        options["agent"] = args.agent
    return options or None


def _interactive(args: argparse.Namespace) -> bool:
    return not args.json and sys.stdin.isatty()


async def _run(args: argparse.Namespace) -> int:
    console = _Console(stderr=args.json, highlight=False)
    try:
        async with _client(args) as client:
            task = await client.start(
                args.input,
                task_id=args.task_id,
                options=_options(args),
                thread_id=args.thread,
                if_busy="enqueue" if args.thread else "reject",
            )
            view = None if args.json else TaskView(task.task_id, args.input)
            cancelled_by_user = False
            cancelling: list[asyncio.Task[str]] = []
            loop = asyncio.get_running_loop()
            main = asyncio.current_task()
            assert main is not None

            def on_sigint() -> None:
                nonlocal cancelled_by_user
                if cancelled_by_user:  # second Ctrl-C: stop waiting
                    main.cancel()
                    return
                cancelled_by_user = True
                if view is not None:
                    view.note = "cancelling… (Ctrl-C again to quit)"
                else:
                    console.print("ospark run: cancelling", style="yellow")
                cancelling.append(loop.create_task(task.cancel()))

            loop.add_signal_handler(signal.SIGINT, on_sigint)
            try:
                if view is None:
                    await _print_json(task)
                else:
                    await _watch(task, view, console, ask=_interactive(args))
            except asyncio.CancelledError:
                return EXIT_CANCELLED
            finally:
                loop.remove_signal_handler(signal.SIGINT)
    except BrokenPipeError:  # `ospark run --json ... | head`
        return _quiet_broken_pipe()
    except GatewayError as exc:
        return _fail("run", exc, args.url)
    result = task.result
    if isinstance(result, TaskCompleted):
        return EXIT_OK
    if isinstance(result, TaskCancelled):
        return EXIT_CANCELLED
    return EXIT_FAILED


async def _print_json(task: TaskHandle) -> None:
    out = sys.stdout.buffer
    async for frame in task.frames():
        out.write(_frame_json(frame) + b"\n")
        out.flush()


async def _watch(task: TaskHandle, view: TaskView, console: Console, *, ask: bool = False) -> None:
    with Live(view, console=console, refresh_per_second=12, transient=False) as live:
        async for frame in task.frames():
            view.apply(frame)
            live.refresh()
            event = frame.event if isinstance(frame, EventFrame) else None
            pending = task.pending_input
            if (
                ask
                and isinstance(event, InputRequired)
                and pending is not None
                and pending.request_id == event.request.request_id
            ):  # still open (not a replayed question answered already)
                live.stop()
                await _answer(task, event.request, console)
                live.start()
        view.finished = time.monotonic()
        live.refresh()


def _read_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


async def _answer(task: TaskHandle, request: InputRequest, console: Console) -> None:
    """Ask the person at the terminal and send the answer (see the module docstring)."""
    console.print(Text(f"? {request.prompt}", style="bold magenta"))
    answer: dict[str, Any]
    while True:
        if request.kind == "approval":
            line = await asyncio.to_thread(_read_line, "  approve? [y/n, or n: reason] ")
            if line is None:
                return
            word, _, reason = line.strip().partition(":")
            if word.strip().lower() in ("y", "yes"):
                answer = {"approved": True}
            elif word.strip().lower() in ("n", "no"):
                answer = {"approved": False, "reason": reason.strip() or None}
            else:
                continue
        elif request.kind == "choice":
            options = request.options or []
            for i, option in enumerate(options, 1):
                console.print(f"  {i}. {option}")
            line = await asyncio.to_thread(_read_line, "  choose (number or text): ")
            if line is None:
                return
            picked = line.strip()
            if picked.isdigit() and 1 <= int(picked) <= len(options):
                picked = options[int(picked) - 1]
            if picked not in options:
                continue
            answer = {"choice": picked}
        else:
            line = await asyncio.to_thread(_read_line, "  your answer: ")
            if line is None:
                return
            if not line.strip():
                continue
            answer = {"text": line.strip()}
        break
    try:
        if "approved" in answer:
            await task.approve(
                answer["approved"], reason=answer.get("reason"), request_id=request.request_id
            )
        else:
            await task.respond(
                answer.get("text"), choice=answer.get("choice"), request_id=request.request_id
            )
    except RequestError as exc:
        console.print(Text(f"  (not taken: {exc.code}: {exc})", style="yellow"))


async def _chat(args: argparse.Namespace) -> int:
    console = _Console(highlight=False)
    try:
        async with _client(args) as client:
            thread = client.thread(args.thread, if_busy="enqueue")
            console.print(
                Text(f"conversation {thread.thread_id} — an empty line ends it", style="dim")
            )
            while True:
                line = await asyncio.to_thread(_read_line, "you> ")
                if line is None or not line.strip():
                    break
                task = await thread.ask(line.strip(), options=_options(args))
                view = TaskView(task.task_id, line.strip())
                await _watch(task, view, console, ask=sys.stdin.isatty())
    except GatewayError as exc:
        return _fail("chat", exc, args.url)
    return EXIT_OK


@dataclass
class _ToolCall:
    label: str
    arguments: str
    agent: str
    started: float
    result: str | None = None
    error: str | None = None
    duration_ms: float | None = None


@dataclass
class _Output:
    """Consecutive ``llm_response`` deltas of one agent on one channel and phase."""

    channel: Literal["reasoning", "text"]
    agent: str
    phase: str
    text: str = ""


@dataclass
class _Note:
    text: str
    style: str
    agent: str = "main"


_Item = _Output | _ToolCall | _Note
_REASONING_LINES = 6  # the last lines of each reasoning block that the view shows


@dataclass
class TaskView:
    """What ``ospark run`` shows of one task; ``apply`` feeds it, rich renders it.

    ``items`` is what the agents did, in the order it happened: model output (per agent,
    channel and phase), tool calls, errors. A ``retrying`` step drops the output of the agent's
    model call that is being made again, so only the final copy is shown."""

    task_id: str
    input: str
    model: str = ""
    demo: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    note: str = ""
    steps: list[str] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)
    tools: dict[tuple[str, str], _ToolCall] = field(default_factory=dict)
    outcome: Terminal | None = None
    _call: dict[str, list[_Output]] = field(default_factory=dict)  # agent -> its model call

    def text(self, channel: str = "text", agent: str = "main") -> str:
        """The output shown for ``agent`` on ``channel``, joined."""
        return "".join(
            item.text
            for item in self.items
            if isinstance(item, _Output) and item.channel == channel and item.agent == agent
        )

    def _end_call(self, agent: str) -> None:
        self._call.pop(agent, None)

    def apply(self, frame: TaskFrame) -> None:
        if isinstance(frame, Gap):
            self.items.append(
                _Note(
                    f"! events {frame.after_seq + 1}–{frame.first_available_seq - 1} were no "
                    "longer available on the gateway",
                    "red",
                )
            )
            return
        event = frame.event
        agent = event.agent
        prefix = f"[{agent}] " if agent != "main" else ""
        match event:
            case TaskStarted(model=model, provider=provider):
                self.model = model
                self.demo = provider == "demo" or model == "ospark-demo"
            case LlmResponse(delta=delta, channel=channel, phase=phase):
                call = self._call.setdefault(agent, [])
                out = call[-1] if call else None
                kind: Literal["reasoning", "text"] = (
                    "reasoning" if channel == "reasoning" else "text"
                )
                if out is None or out.channel != kind or out.phase != phase:
                    out = _Output(kind, agent, phase)
                    call.append(out)
                    self.items.append(out)
                out.text += delta
            case TaskProgress(step="retrying", message=message):
                self.steps.append(prefix + "retrying")
                for out in self._call.pop(agent, ()):
                    self.items.remove(out)
                self.items.append(
                    _Note(f"↻ {prefix}model call made again ({message})", "yellow", agent)
                )
            case TaskProgress(step=step, turn=turn):
                self._end_call(agent)
                label = f"{step} {turn}" if step == "turn_started" and turn else step
                self.steps.append(prefix + label)
            case ToolCallStart(call_id=cid, server=server, tool=tool, arguments=arguments):
                self._end_call(agent)
                # Call ids are unique per agent only: a sub-agent numbers its own calls.
                call_item = self.tools[agent, cid] = _ToolCall(
                    f"sub-agent {tool}" if server == "agents" else f"{server}.{tool}",
                    json.dumps(arguments, ensure_ascii=False),
                    agent,
                    time.monotonic(),
                )
                self.items.append(call_item)
            case ToolCallComplete(call_id=cid):
                self._end_call(agent)
                found = self.tools.get((agent, cid))
                if found is None:
                    found = self.tools[agent, cid] = _ToolCall(
                        f"{event.server}.{event.tool}", "", agent, time.monotonic()
                    )
                    self.items.append(found)
                found.result, found.error, found.duration_ms = (
                    event.result,
                    event.error,
                    event.duration_ms,
                )
            case ErrorEvent(code=code, message=message, retryable=retryable):
                if not retryable:  # (a retryable one announces the `retrying` step)
                    self._end_call(agent)
                self.items.append(_Note(f"! {prefix}{code}: {message}", "red", agent))
            case InputRequired(request=request):
                self._end_call(agent)
                what = {"question": "asks", "choice": "asks you to choose", "approval": "asks"}
                self.items.append(
                    _Note(f"? {prefix}{what[request.kind]}: {request.prompt}", "magenta", agent)
                )
            case InputReceived(timed_out=True):
                self.items.append(_Note("… no answer in time", "yellow", agent))
            case InputReceived(approved=approved, text=text, choice=choice):
                if approved is not None:
                    said = "approved" if approved else "denied"
                    said += f" ({text})" if text and not approved else ""
                else:
                    said = choice if choice is not None else text or ""
                self.items.append(_Note(f"↳ {said}", "magenta", agent))
            case UserMessage(text=text):
                self._end_call(agent)
                self.items.append(_Note(f"» you said: {text}", "bold", agent))
            case TaskCompleted() | TaskFailed() | TaskCancelled():
                self.outcome = event
            case _:
                self._end_call(agent)
                self.steps.append(prefix + str(getattr(event, "kind", "event")))

    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def _render_item(self, item: _Item) -> RenderableType:
        match item:
            case _Output(channel="reasoning", agent=agent, text=text):
                lines = text.strip().splitlines()[-_REASONING_LINES:]
                label = "reasoning" if agent == "main" else f"[{agent}] reasoning"
                body = Text(f"{label}: ", style="dim cyan")
                body.append("\n".join(lines), style="dim italic")
                return body
            case _Output(agent="main", text=text):
                return Text(text.strip())
            case _Output(agent=agent, text=text):
                body = Text(f"[{agent}] ", style="cyan")
                body.append(text.strip(), style="dim")
                return body
            case _ToolCall():
                where = f"[{item.agent}] " if item.agent != "main" else ""
                head = f"{where}{item.label}({item.arguments})"
                if item.duration_ms is None:
                    return Spinner("dots", Text(f" {head}", style="yellow"))
                if item.error is not None:
                    line = f"✗ {head} → error: {item.error} ({item.duration_ms:.1f} ms)"
                    return Text(line, style="red")
                result = (item.result or "").strip().replace("\n", " ")
                if len(result) > 120:
                    result = result[:117] + "…"
                line = f"✓ {head} → {result} ({item.duration_ms:.1f} ms)"
                return Text(line, style="green")
            case _Note(text=text, style=style):
                return Text(text, style=style)
        raise AssertionError(item)  # pragma: no cover

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = []
        model = self.model or "…"
        if self.demo:
            model = f"{self.model} (offline demo model)"
        status = f"{self.task_id} · {model} · {self.elapsed():.1f}s"
        if self.outcome is None:
            parts.append(Spinner("dots", Text(f" running · {status}", style="bold cyan")))
        else:
            parts.append(Text(f"■ {TERMINAL_STATES[type(self.outcome)]} · {status}", style="bold"))
        parts.append(Text(f"› {self.input}", style="bold"))
        if self.steps:
            parts.append(Text(" → ".join(self.steps[-8:]), style="dim cyan"))
        for item in self.items:
            if not (isinstance(item, _Output) and not item.text.strip()):
                depth = item.agent.count("/")  # a sub-agent's work sits under its call
                rendered = self._render_item(item)
                parts.append(Padding(rendered, (0, 0, 0, 2 * depth)) if depth else rendered)
        if self.note and self.outcome is None:
            parts.append(Text(self.note, style="yellow"))
        match self.outcome:
            case TaskCompleted(final_answer=answer):
                parts.append(
                    Panel(
                        Text(answer or "(no boxed answer)", style="bold"),
                        title="final answer",
                        border_style="green",
                        expand=False,
                    )
                )
            case TaskFailed(reason=reason, code=code):
                parts.append(
                    Panel(escape(reason), title=f"failed: {code}", border_style="red", expand=False)
                )
            case TaskCancelled(reason=reason):
                parts.append(Text(f"cancelled: {reason}", style="bold yellow"))
        return Group(*parts)


# ---------------------------------------------------------------------------------- status


async def _status(args: argparse.Namespace) -> int:
    try:
        async with _client(args) as client:
            tasks = await client.status(args.task_id)
    except GatewayError as exc:
        return _fail("status", exc, args.url)
    if args.json:
        for status in tasks:
            sys.stdout.buffer.write(_JSON.encode(status) + b"\n")
        sys.stdout.flush()
        return EXIT_OK
    console = _Console(highlight=False)
    if not tasks:
        console.print("no tasks")
        return EXIT_OK
    table = Table("task", "state", "seq", "turn", "progress", "updated")
    for s in sorted(tasks, key=lambda s: s.created):
        updated = time.strftime("%H:%M:%S", time.localtime(s.updated)) if s.updated else ""
        table.add_row(s.task_id, s.state, str(s.last_seq), str(s.turn), s.progress or "", updated)
    console.print(table)
    return EXIT_OK


# ---------------------------------------------------------------------------------- cancel


async def _cancel(args: argparse.Namespace) -> int:
    try:
        async with _client(args) as client:
            result = await client.cancel(args.task_id)
    except GatewayError as exc:
        return _fail("cancel", exc, args.url)
    if args.json:
        print(json.dumps({"task_id": args.task_id, "result": result}))
    else:
        print(f"{args.task_id}: {result.replace('_', ' ')}")
    return EXIT_FAILED if result == "unknown" else EXIT_OK


run_main = _main(_run)
status_main = _main(_status)
cancel_main = _main(_cancel)
chat_main = _main(_chat)
