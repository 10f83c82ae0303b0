"""The offline demo model: deterministic, no network, no API key. It is a demo, not a model.

It reads the task (the first user message, without the guidance) and plays an agent:

1. if the task contains the word **research** or **delegate** and a sub-agent tool is offered, it
   hands the whole task to the first sub-agent (``agents__…``) and waits for its report;
2. if the task says ``read <file or URL>`` and the reading tool (``…__read_file``) is offered,
   it reads that document; if it says ``run python: <code>`` (or ``run shell: <command>``) and
   the code tool (``…__run_python_code`` / ``…__run_command``) is offered, it runs the code in
   the sandbox; these take the place of steps 3 and 4;
3. if the task contains arithmetic (``17*23+4``, ``(2^10)/3``), it calls the calculator;
4. if the task asks about the time or the date (``time``, ``date``, ``today``, ``clock``,
   ``day``), it calls the clock;
5. if the task contains **ask me** and the ``ask_user`` tool is offered, it asks which number
   to use, then doubles the number in the answer with the calculator;
6. in a conversation, "add N to that" (also "plus", "subtract N from that", "multiply that by
   N", "divide that by N") calls the calculator on the previous turn's boxed answer: after
   "What is 17*23+4?" (395), "Add 5 to that" computes ``395+5``;
7. then it answers (mentioning any message the user sent meanwhile). Asked for a summary, it
   streams a report ending in ``\\boxed{answer}``: the calculator's result, else the
   sub-agent's boxed answer, else the document's first line or the code's last line of output
   (shown in a code block), else the clock's reading.

One tool call per turn. Before each step it streams its reasoning word by word on the reasoning
channel, ``pace_ms`` milliseconds per word (``0``: no sleeping at all, for benchmarks).

Its work is bounded whatever the input: it looks only at the first :data:`MAX_SCAN_CHARS`
characters of the task, and every pattern it matches runs in time linear in what it looks at
(the arithmetic finder takes maximal runs of arithmetic characters, no backtracking search), so
a hostile task such as 100,000 ``(`` costs no more than an ordinary one.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from ..config import LLMConfig
from ..files import FILES_MARKER
from ..prompts import GUIDANCE_MARKER, extract_boxed
from .base import (
    Delta,
    LLMRequest,
    Message,
    ReasoningDelta,
    Stop,
    TextDelta,
    TokenUsage,
    ToolCallArgs,
    ToolCallBegin,
    ToolCallEnd,
    ToolSpec,
)

MAX_SCAN_CHARS = 10_000  # the demo model reads at most this much of a task
DELEGATE_TRIGGER = re.compile(r"\b(research|delegate)\b", re.IGNORECASE)
TIME_TRIGGER = re.compile(r"\b(time|date|today|clock|day)\b", re.IGNORECASE)
READ_TRIGGER = re.compile(r"\bread\s+(\S+)", re.IGNORECASE)
PYTHON_TRIGGER = re.compile(r"\brun\s+python\s*:(.+)", re.IGNORECASE | re.DOTALL)
SHELL_TRIGGER = re.compile(r"\brun\s+(?:shell|command)\s*:(.+)", re.IGNORECASE | re.DOTALL)
ASK_TRIGGER = re.compile(r"\bask me\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FOLLOW_UPS = (
    (re.compile(r"\b(?:add|plus)\s+(-?\d+(?:\.\d+)?)\s+to\s+(?:that|it)\b", re.I), "{p}+{n}"),
    (re.compile(r"\bsubtract\s+(-?\d+(?:\.\d+)?)\s+from\s+(?:that|it)\b", re.I), "{p}-{n}"),
    (re.compile(r"\bmultiply\s+(?:that|it)\s+by\s+(-?\d+(?:\.\d+)?)", re.I), "{p}*{n}"),
    (re.compile(r"\bdivide\s+(?:that|it)\s+by\s+(-?\d+(?:\.\d+)?)", re.I), "{p}/{n}"),
)
# From a possible start to the end of its run of arithmetic characters. Nothing after the
# greedy part must match, so the engine never backtracks: each character is looked at once.
_ARITHMETIC_RUN = re.compile(r"[\d.(][\d.\s()+\-*/^%×÷]*")
_OPERATOR_BETWEEN_NUMBERS = re.compile(r"[\d)]\s*(\*\*|[+\-*/^%×÷])\s*[\d.(]")
_WORDS = re.compile(r"\S+\s*|\s+")
_NOT_AN_END = ".(+-*/^%×÷ \t\n\r\f\v"  # an expression ends with a digit or ")"

DeltaHook = Callable[[LLMRequest, AsyncIterator[Delta]], AsyncIterator[Delta]]
DELTA_HOOK: ContextVar[DeltaHook | None] = ContextVar("ospark_demo_delta_hook", default=None)
"""Wraps every model call's deltas in the current context (tests: :mod:`gateway.testing.held`
holds a call at a named point until released, or breaks its stream)."""


def find_arithmetic(text: str) -> str | None:
    """The longest arithmetic expression in ``text`` that has an operator, if any.

    An expression starts with a digit, ``.`` or ``(`` and ends with a digit or ``)``: in each
    run of arithmetic characters the candidate spans from the first possible start to the last
    possible end. Linear in ``len(text)``.
    """
    best: str | None = None
    for match in _ARITHMETIC_RUN.finditer(text):
        candidate = match.group().rstrip(_NOT_AN_END)
        if (
            candidate
            and (best is None or len(candidate) > len(best))
            and _OPERATOR_BETWEEN_NUMBERS.search(candidate)
        ):
            best = candidate
    return best


@dataclass(frozen=True, slots=True)
class _Action:
    tool: str
    arguments: str
    reasoning: str
    text: str


class DemoProvider:
    """The offline deterministic demo model (see the module docstring)."""

    name = "demo"

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._pace = config.pace_ms / 1000.0

    async def aclose(self) -> None:
        return None

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[Delta]]:
        hook = DELTA_HOOK.get()
        yield self._deltas(request) if hook is None else hook(request, self._deltas(request))

    async def _words(self, text: str, reasoning: bool) -> AsyncIterator[Delta]:
        for word in _WORDS.findall(text):
            if self._pace:
                await asyncio.sleep(self._pace)
            yield ReasoningDelta(word) if reasoning else TextDelta(word)

    async def _deltas(self, request: LLMRequest) -> AsyncIterator[Delta]:
        messages = request.messages
        task = _task(messages)
        results = _tool_results(messages)
        previous = _previous_answer(messages)
        said = _said_meanwhile(messages)
        input_tokens = sum(len(m.content.split()) for m in messages)
        if request.phase == "summary":
            reasoning, text = _summary(task, results)
            action = None
        else:
            action = _next_action(task, request.tools, results, previous)
            if action is None:
                reasoning, text = _final(results)
                if said:
                    text += "You also said: " + " / ".join(said) + "\n"
            else:
                reasoning, text = action.reasoning, action.text
        async for delta in self._words(reasoning, reasoning=True):
            yield delta
        async for delta in self._words(text, reasoning=False):
            yield delta
        if action is not None:
            call_id = f"demo-call-{sum(1 for m in messages if m.role == 'assistant') + 1}"
            yield ToolCallBegin(0, call_id, action.tool)
            yield ToolCallArgs(0, action.arguments)
            yield ToolCallEnd(0)
        yield TokenUsage(input_tokens, len(reasoning.split()) + len(text.split()))
        yield Stop("tool_use" if action is not None else "end_turn")


def _task_index(messages: Sequence[Message]) -> int:
    """Index of the task's message: the (last) one with the guidance; earlier user messages
    are earlier turns of a conversation, later ones the user's messages meanwhile."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role == "user" and GUIDANCE_MARKER in m.content:
            return i
    return next((i for i, m in enumerate(messages) if m.role == "user"), -1)


def _task(messages: Sequence[Message]) -> str:
    """The task as the demo model sees it: without the files note and the guidance, cut to
    MAX_SCAN_CHARS (so ``run python: …`` is the code alone when the task has files)."""
    i = _task_index(messages)
    if i < 0:
        return ""
    content = messages[i].content
    end = MAX_SCAN_CHARS
    for note in (FILES_MARKER, GUIDANCE_MARKER):
        marker = content.find(note, 0, MAX_SCAN_CHARS + len(note))
        if marker >= 0:
            end = min(end, marker)
    return content[:end].strip()


def _previous_answer(messages: Sequence[Message]) -> str | None:
    """The number the conversation's previous turn answered (its boxed answer), looking at
    the last MAX_SCAN_CHARS of it."""
    i = _task_index(messages)
    if i > 0 and messages[i - 1].role == "assistant":
        text = messages[i - 1].content[-MAX_SCAN_CHARS:]
        numbers = _NUMBER.findall(extract_boxed(text) or text)
        return numbers[-1] if numbers else None
    return None


def _said_meanwhile(messages: Sequence[Message]) -> list[str]:
    i = _task_index(messages)
    return (
        [m.content[:MAX_SCAN_CHARS] for m in messages[i + 1 :] if m.role == "user"]
        if i >= 0
        else []
    )


def _tool_results(messages: Sequence[Message]) -> dict[str, tuple[str, bool]]:
    """Tool name -> (result text, is_error), from the history."""
    names = {c.id: c.name for m in messages if m.role == "assistant" for c in m.tool_calls}
    return {
        names.get(m.tool_call_id or "", ""): (m.content, m.is_error)
        for m in messages
        if m.role == "tool"
    }


def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _next_action(
    task: str,
    tools: Sequence[ToolSpec],
    results: dict[str, tuple[str, bool]],
    previous: str | None = None,
) -> _Action | None:
    names = [t.name for t in tools]
    plan: list[_Action] = []
    direct = _direct_action(task, names)
    if direct is not None:
        return None if direct.tool in results else direct
    agent = next((n for n in names if n.startswith("agents__")), None)
    if agent and DELEGATE_TRIGGER.search(task):
        who = agent.split("__", 1)[1]
        plan.append(
            _Action(
                agent,
                '{"task": ' + _json_string(task) + "}",
                f"The task asks for research, so I will hand it to the sub-agent {who} and wait "
                "for its report before answering.\n",
                f"Delegating to {who}.\n",
            )
        )
    delegating = bool(plan)  # the sub-agent will do the rest
    expression = find_arithmetic(task)
    if expression is None and previous is not None:
        for pattern, form in _FOLLOW_UPS:
            if m := pattern.search(task):
                expression = form.format(p=previous, n=m.group(1))
                break
    asker = next((n for n in names if n.endswith("__ask_user")), None)
    if asker and ASK_TRIGGER.search(task) and not delegating:
        plan.append(
            _Action(
                asker,
                '{"question": "Which number should I use?"}',
                "The task says to ask, so I will ask the user which number to use.\n",
                "Asking you which number to use.\n",
            )
        )
        reply = results.get(asker)
        numbers = _NUMBER.findall(reply[0]) if reply and not reply[1] else []
        expression = f"{numbers[0]}*2" if numbers else None
    calculator = next((n for n in names if n.endswith("__calculate")), None)
    if expression and calculator and not delegating:
        plan.append(
            _Action(
                calculator,
                '{"expression": ' + _json_string(expression) + "}",
                f"The question contains the arithmetic expression {expression}. Rather than "
                "working it out in my head, I will use the calculator tool.\n",
                "Calling the calculator.\n",
            )
        )
    clock = next((n for n in names if n.endswith("__now")), None)
    if clock and TIME_TRIGGER.search(task) and not delegating:
        plan.append(
            _Action(
                clock,
                "{}",
                "The question is about the current time or date, which I cannot know without "
                "looking, so I will ask the clock tool.\n",
                "Checking the clock.\n",
            )
        )
    return next((a for a in plan if a.tool not in results), None)


def _direct_action(task: str, names: Sequence[str]) -> _Action | None:
    """Reading a document or running code, when the task asks for it and the tool is there."""
    reader = next((n for n in names if n.endswith("__read_file")), None)
    python = next((n for n in names if n.endswith("__run_python_code")), None)
    shell = next((n for n in names if n.endswith("__run_command")), None)
    code = PYTHON_TRIGGER.search(task) if python else None
    if python and code and code.group(1).strip():
        source = code.group(1).strip()
        return _Action(
            python,
            '{"code_block": ' + _json_string(source) + "}",
            "The task gives me Python code to run. I will run it in the sandbox and report "
            "what it prints.\n",
            "Running the code in the sandbox.\n",
        )
    command = SHELL_TRIGGER.search(task) if shell else None
    if shell and command and command.group(1).strip():
        line = command.group(1).strip()
        return _Action(
            shell,
            '{"command": ' + _json_string(line) + "}",
            "The task gives me a shell command to run. I will run it in the sandbox.\n",
            "Running the command in the sandbox.\n",
        )
    wanted = READ_TRIGGER.search(task) if reader else None
    if reader and wanted:
        uri = wanted.group(1).rstrip(".,;:!?)\"'").lstrip("(\"'")
        if uri:
            return _Action(
                reader,
                '{"uri": ' + _json_string(uri) + "}",
                f"The task asks me to read {uri}. I will open it with the reading tool and "
                "look at what it says.\n",
                f"Reading {uri}.\n",
            )
    return None


def _stdout(result: str) -> tuple[str, str]:
    """(status line, stdout) of a code tool result (``exit code N`` then sections)."""
    status = result.split("\n", 1)[0]
    _, found, rest = result.partition("--- stdout ---\n")
    stdout = rest.split("\n--- stderr ---\n", 1)[0] if found else ""
    return status, stdout


def _excerpt(text: str, limit: int = 1500) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[… {len(text) - limit:,} more characters in the tool result]"


def _answer(results: dict[str, tuple[str, bool]]) -> tuple[str, list[str]]:
    """The final answer and the facts that support it."""
    facts: list[str] = []
    answer = ""
    for name, (text, is_error) in results.items():
        tool = name.split("__", 1)[-1]
        if is_error:
            facts.append(f"The {tool} tool failed: {text.strip()}")
            continue
        if name.startswith("agents__"):
            found = extract_boxed(text)
            facts.append(f"The sub-agent {tool} reported the answer {found or 'none'}.")
            answer = answer or found
        elif tool == "calculate":
            facts.append(f"The calculator returned {text.strip()}.")
            answer = text.strip()
        elif tool == "now":
            facts.append(f"The clock reads {text.strip()}.")
            answer = answer or text.strip()
        elif tool == "read_file":
            lines = [line.strip().lstrip("#").strip() for line in text.splitlines()]
            first = next((line for line in lines if line), "")[:200]
            facts.append(
                f"The reading tool returned {len(text):,} characters. It begins:\n\n"
                f"```text\n{_excerpt(text, 600)}\n```"
            )
            answer = answer or first
        elif tool in ("run_python_code", "run_command"):
            status, stdout = _stdout(text)
            facts.append(f"The code ran ({status}). Its output:\n\n```text\n{_excerpt(text)}\n```")
            printed = [line.strip() for line in stdout.splitlines() if line.strip()]
            answer = answer or (printed[-1][:200] if printed else status)
    return answer, facts


def _final(results: dict[str, tuple[str, bool]]) -> tuple[str, str]:
    answer, facts = _answer(results)
    if facts:
        reasoning = " ".join(facts) + " That is all I need, so I can answer now.\n"
        text = f"The answer is {answer}.\n" if answer else "I could not find an answer.\n"
    else:
        reasoning = "This needs no tools. I am an offline demo model, so my answer is limited.\n"
        text = (
            "I am the offline demo model; I can do arithmetic, tell the time, read a file "
            "(read <file>), run code (run python: <code>) and delegate.\n"
        )
    return reasoning, text


def _summary(task: str, results: dict[str, tuple[str, bool]]) -> tuple[str, str]:
    answer, facts = _answer(results)
    reasoning = "I will now write the report and put the final answer in a box.\n"
    lines = [
        "Summary (offline demo model)",
        "",
        f"Task: {task if len(task) <= 300 else task[:300] + ' […]'}",
        "",
        *(f"- {fact}" for fact in facts),
    ]
    if not facts:
        lines.append("- No tool was needed or available for this task.")
    boxed = answer or "no answer (offline demo model)"
    lines += ["", f"Final answer: \\boxed{{{boxed}}}"]
    return reasoning, "\n".join(lines)
