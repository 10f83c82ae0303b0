"""``python -m gateway.agent "What is 17*23+4?"``: run one task and print it as it streams.

Options: ``--config PATH`` (a YAML file or a MiroFlow config directory; default: the built-in
demo config), ``--agent NAME`` (an agent of that directory), ``--file PATH`` (a file that comes
with the task, MiroFlow's ``task_file_name``), ``--set KEY=VALUE`` (repeatable overrides, e.g.
``--set main_agent.max_turns=3`` or ``--set model=gpt-4.1``), ``--trace`` (print the run's
trace as JSON at the end), ``--quiet`` (only the final answer).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from rich.console import Console
from rich.markup import escape

from . import (
    AgentError,
    Orchestrator,
    TaskFailedError,
    load_agents,
    load_config,
    stop_tool_servers,
)
from .events import AgentErrorEvent, CoreEvent, LLMDelta, StepEvent, ToolEnd, ToolStart, UsageEvent


class _Printer:
    """A sink that prints events; deltas of one stream are written on one line."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._stream: tuple[str, str, str] | None = None

    def _end_stream(self) -> None:
        if self._stream is not None:
            self.console.print()
            self._stream = None

    def __call__(self, event: CoreEvent) -> None:
        out = self.console
        if isinstance(event, LLMDelta):
            key = (event.agent, event.channel, event.phase)
            if key != self._stream:
                self._end_stream()
                self._stream = key
                out.print(f"[bold]{event.agent}[/] [dim]{event.channel}:[/] ", end="")
            style = "dim italic" if event.channel == "reasoning" else ""
            out.print(escape(event.text), end="", style=style, soft_wrap=True)
            return
        self._end_stream()
        if isinstance(event, StepEvent):
            turn = f" (turn {event.turn})" if event.turn is not None else ""
            out.print(
                f"[cyan]{event.agent}[/] [bold]{event.step}[/]{turn}: {escape(event.message)}"
            )
        elif isinstance(event, ToolStart):
            out.print(
                f"[cyan]{event.agent}[/] [yellow]→ {event.server}/{event.tool}[/] "
                f"{escape(str(event.arguments))}"
            )
        elif isinstance(event, ToolEnd):
            if event.error is not None:
                outcome = f"[red]error: {escape(event.error)}[/]"
            else:
                outcome = escape((event.result or "").strip()[:300])
            out.print(
                f"[cyan]{event.agent}[/] [yellow]← {event.server}/{event.tool}[/] "
                f"({event.duration_s:.2f}s) {outcome}"
            )
        elif isinstance(event, AgentErrorEvent):
            out.print(f"[cyan]{event.agent}[/] [red]{event.code}[/]: {escape(event.message)}")
        elif isinstance(event, UsageEvent):
            out.print(
                f"[dim]{event.agent} usage: {event.input_tokens} in, {event.output_tokens} out[/]"
            )


async def _run(orchestrator: Orchestrator, task: str, file: str | None) -> tuple[str, str]:
    try:
        return await orchestrator.run_main_agent(task, file)
    finally:
        # Ctrl-C cancels the run, whose tool servers then stop in the background: wait for
        # them before the event loop closes.
        await stop_tool_servers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.agent", description=__doc__)
    parser.add_argument("task", help="the task for the agent")
    parser.add_argument(
        "--config", help="YAML config or MiroFlow config directory (default: the demo config)"
    )
    parser.add_argument("--agent", help="the agent of a config directory to run")
    parser.add_argument("--file", help="a file that comes with the task")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--trace", action="store_true", help="print the trace as JSON at the end")
    parser.add_argument("--quiet", action="store_true", help="print only the final answer")
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    try:
        if args.agent is not None:
            if args.config is None:
                parser.error("--agent needs --config DIRECTORY")
            _, agents = load_agents(args.config, args.set)
            if args.agent not in agents:
                parser.error(f"no agent {args.agent!r} (known: {', '.join(agents)})")
            config = agents[args.agent]
        else:
            config = load_config(args.config, args.set)
    except AgentError as exc:
        console.print(f"[red]config error:[/] {escape(str(exc))}")
        return 2
    if config.main_agent.llm.provider == "demo" and not args.quiet:
        console.print("[magenta]Using the offline demo model (deterministic, no API key).[/]")
    printer = None if args.quiet else _Printer(console)
    orchestrator = Orchestrator(config, sink=printer)
    try:
        summary, answer = asyncio.run(_run(orchestrator, args.task, args.file))
    except TaskFailedError as exc:
        if printer is not None:
            printer._end_stream()
        console.print(f"[red]task failed:[/] {escape(exc.reason)}")
        return 1
    except AgentError as exc:
        console.print(f"[red]error ({exc.code}):[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        console.print("[red]cancelled[/]")
        return 130
    if printer is not None:
        printer._end_stream()
        console.print(f"[bold green]Final answer:[/] {escape(answer or '(none)')}")
    else:
        print(answer or summary)
    if args.trace:
        print(json.dumps(orchestrator.trace.to_dict(), ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
