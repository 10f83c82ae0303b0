"""The words the core says to models: system prompt, task guidance, summary request.

Also :func:`extract_boxed`, which takes the final answer out of a summary.
"""

from __future__ import annotations

GUIDANCE_MARKER = "\n\n## How to work on this task\n"

_GUIDANCE = """\
- Gather the information you need before you answer; use the tools you have, and check what \
they return rather than trusting a single source.
- Report transparently: say what you looked at, what each tool returned, and where you are \
unsure.
- Keep every candidate answer you find together with its evidence; do not throw one away \
until the evidence rules it out.
- Do not conclude early: an answer that looks right after one step may be wrong after two.
- When you have finished, answer without calling any more tools."""

_CHINESE_GUIDANCE = """
- This task is in a Chinese-language context: search and read sources in Chinese first, and \
prefer Chinese terms, names and transliterations as they appear in Chinese sources.
- Reason and write your report and final answer in Chinese (中文), keeping proper names and \
figures exactly as found."""

SYSTEM_PROMPT = """\
You are a careful research agent. You solve the user's task step by step. You may call the \
tools you are given; their results come back to you as tool messages. Sub-agents (tools whose \
name starts with `agents__`) are full agents: give them a self-contained task and they return \
their report."""

SUMMARY_PROMPT = """\
Stop working on the task now and write your final report. Summarise what you did, what the \
tools returned and how sure you are, listing any candidate answers with their evidence. End \
with the final answer alone inside \\boxed{}, for example \\boxed{42}."""


def _get_task_guidance(chinese_context: bool) -> str:
    """Guidance appended to every task: be thorough, transparent, keep candidates, don't rush.

    With ``chinese_context`` it adds guidance for Chinese-language tasks.
    """
    return GUIDANCE_MARKER + _GUIDANCE + (_CHINESE_GUIDANCE if chinese_context else "")


def task_message(task_description: str, chinese_context: bool) -> str:
    return task_description.strip() + _get_task_guidance(chinese_context)


def extract_boxed(text: str) -> str:
    """The content of the last ``\\boxed{...}`` in ``text`` (nested braces allowed), or ``""``."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth = 0
        for i in range(start + len("\\boxed{") - 1, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len("\\boxed{") : i].strip()
        start = text.rfind("\\boxed{", 0, start)  # unbalanced: try an earlier one
    return ""
