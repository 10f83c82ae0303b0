"""Answers that really come from a model stream (the fake OpenAI server through the real SDK
and a real gateway), rendered in headless Chromium: markdown, math, code, the sanitizer, and a
model call that breaks and is made again."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.server import RunningGateway
from tests.agent.fakes import FakeLLMServer, Stream, fake_llm_server, openai_stream

from .support import (
    ARGS,
    CHROMIUM,
    ask,
    open_page,
    openai_gateway,
    screenshot,
    streamed_text,
    turn,
    wait_state,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed"),
]

MARKDOWN = """## Results

The product is **395**, see [the docs](https://example.com/docs) and `calc()`.

| expression | value |
|---|---|
| 17*23 | 391 |
| +4 | 395 |

- first point
- second point

```python
def total(a, b):
    return a * b + 4
```

Inline math $x^2 + 1$ and a display formula:

$$\\int_0^1 x\\,dx = \\frac{1}{2}$$

Final answer: \\boxed{395}"""

CODE = "def total(a, b):\n    return a * b + 4"

# Everything a hostile model or tool could put in front of the page. Each attack, if it ran,
# would set window.__pwned.
ATTACKS = """# Report <script>window.__pwned = "script"</script>

<img src="x" onerror="window.__pwned = 'img'">

[click me](javascript:window.__pwned='link') and <a href="javascript:window.__pwned='a'">raw</a>

<iframe src="javascript:window.__pwned='iframe'"></iframe> <svg onload="window.__pwned='svg'"></svg>

![pic](javascript:window.__pwned='image') $\\href{javascript:window.__pwned='katex'}{x}$

```html
<script>window.__pwned = "code"</script>
```

Final answer: \\boxed{<b onmouseover="window.__pwned='box'">x</b>}"""

HOSTILE_ARGS = json.dumps({"expression": "<img src=x onerror=\"window.__pwned='args'\">"})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fake() -> AsyncIterator[FakeLLMServer]:
    async with fake_llm_server() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(
    fake: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningGateway]:
    async with openai_gateway(tmp_path_factory.mktemp("web-openai"), fake) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, gw: RunningGateway, fake: FakeLLMServer) -> AsyncIterator[Page]:
    fake.responses.clear()
    async with open_page(browser, gw.http_url + "/") as page:
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        yield page


async def watch_settled_blocks(page: Page) -> None:
    """Count, from now on, every rendered markdown block that is taken off the page once it was
    settled (not the live one): streaming must only ever replace the block being written."""
    await page.evaluate(
        """() => {
          window.__replaced = 0;
          new MutationObserver((records) => {
            for (const r of records) for (const n of r.removedNodes) {
              if (n.classList && n.classList.contains('md-block') && !n.classList.contains('live'))
                window.__replaced++;
            }
          }).observe(document.getElementById('turns'), {childList: true, subtree: true});
        }"""
    )


async def test_markdown_answer_is_rendered(page: Page, fake: FakeLLMServer) -> None:
    fake.add(
        Stream(openai_stream(text="Let me put that together.", reasoning="The user wants a table")),
        Stream(openai_stream(text=MARKDOWN)),
    )
    await watch_settled_blocks(page)
    task_id = await ask(page, "Summarise 17*23+4 as a report")
    await wait_state(page, task_id, "completed")
    t = turn(page, task_id)
    answer = t.locator(".md.summary")
    await expect(answer.locator("h2")).to_have_text("Results")
    await expect(answer.locator(".katex")).to_have_count(3)
    await page.evaluate("document.getElementById('scroller').scrollTop = 0")
    await screenshot(page, "web-desktop-light.png")  # the one in the README
    await expect(answer.locator("strong")).to_have_text("395")
    # Links open in a new tab without handing the page to the target.
    link = answer.locator("a", has_text="the docs")
    await expect(link).to_have_attribute("href", "https://example.com/docs")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await expect(answer.locator("p code")).to_have_text("calc()")
    # A table, a list.
    await expect(answer.locator("table th")).to_have_text(["expression", "value"])
    await expect(answer.locator("table tbody tr")).to_have_count(2)
    await expect(answer.locator("ul li")).to_have_text(["first point", "second point"])
    # Highlighted code with a working copy button.
    block = answer.locator(".codeblock")
    await expect(block.locator(".code-head")).to_contain_text("python")
    await expect(block.locator("code .hljs-keyword").first).to_have_text("def")
    await block.locator(".copy-code").click()
    await expect(block.locator(".copy-code")).to_have_text("Copied")
    assert await page.evaluate("navigator.clipboard.readText()") == CODE
    # Math typeset by KaTeX: inline, display and the bare \boxed{} the model wrote.
    await expect(answer.locator(".katex")).to_have_count(3)
    await expect(answer.locator(".katex-display")).to_have_count(1)
    await page.wait_for_function(  # KaTeX's own font, served by the gateway
        "[...document.fonts].some(f => f.family === 'KaTeX_Main' && f.status === 'loaded')"
    )
    await expect(answer.locator(".katex .fbox")).to_have_count(1)
    await expect(answer.locator(".katex annotation").last).to_have_text("\\boxed{395}")
    visible = await answer.evaluate("n => n.innerText")
    assert "\\boxed" not in visible and "**" not in visible and "```" not in visible
    # One collapsed "Thought for" disclosure, the copy button copies the markdown.
    thought = t.locator("details.thought")
    await expect(thought).to_have_count(1)
    await expect(thought.locator("summary")).to_contain_text("Thought for")
    assert await thought.evaluate("d => d.open") is False
    await t.locator(".copy-answer").click()
    assert (await page.evaluate("navigator.clipboard.readText()")).strip() == MARKDOWN
    assert (await streamed_text(page, task_id)).endswith(MARKDOWN + " ")
    # No settled block was ever rendered twice (the paced demo model's test sees many frames).
    assert await page.evaluate("window.__replaced") == 0


async def test_untrusted_output_never_runs(page: Page, fake: FakeLLMServer) -> None:
    fake.add(
        Stream(
            openai_stream(
                reasoning="<script>window.__pwned='reasoning'</script> thinking",
                text="<img src=x onerror=\"window.__pwned='text'\"> calling",
                tool_calls=[("call_1", "calculator__calculate", HOSTILE_ARGS)],
            )
        ),
        Stream(openai_stream(text="<script>window.__pwned='turn'</script> done")),
        Stream(openai_stream(text=ATTACKS)),
    )
    task_id = await ask(page, "<img src=x onerror=\"window.__pwned='question'\">")
    await wait_state(page, task_id, "completed")
    t = turn(page, task_id)
    await expect(t.locator(".md.summary h1")).to_contain_text("Report")
    # The markup is shown as text where it came as text...
    await expect(t.locator(".bubble")).to_have_text(
        "<img src=x onerror=\"window.__pwned='question'\">"
    )
    await expect(t.locator(".md.summary h1")).to_contain_text("<script>")
    chip = t.locator("details.tool")
    await chip.locator("summary").click()
    await expect(chip.locator(".args")).to_contain_text("<img src=x onerror")
    await expect(chip.locator(".error, .result")).to_contain_text("<img")
    await t.locator("details.thought summary").click()
    await expect(t.locator(".thought-body")).to_contain_text("<script>")
    # ... and nothing of it became a live element.
    dangerous = await t.evaluate(
        """t => [...t.querySelectorAll('*')].filter(n =>
             ['SCRIPT', 'IFRAME', 'IMG', 'OBJECT', 'EMBED', 'svg'].includes(n.tagName) &&
               !n.closest('.katex') ||
             [...n.attributes].some(a => a.name.startsWith('on')) ||
             /^\\s*javascript:/i.test(n.getAttribute('href') || '') ||
             /^\\s*javascript:/i.test(n.getAttribute('src') || '')
           ).map(n => n.outerHTML)"""
    )
    assert dangerous == []
    # No link but safe ones; hovering the math and clicking the text runs nothing either.
    for link in await t.locator(".md a").all():
        href = await link.get_attribute("href")
        assert href and href.startswith("https://")
    for node in await t.locator(".md.summary .katex, .md.summary .katex-error").all():
        await node.dispatch_event("mouseover")
    await t.locator(".md.summary").get_by_text("click me").click()
    await expect(t.locator(".md.summary")).to_contain_text("click me")
    assert await page.evaluate("window.__pwned") is None


async def test_retried_call_strikes_out_its_partial_output(page: Page, fake: FakeLLMServer) -> None:
    partial = "This first attempt will be cut off before it ends"
    fake.add(
        Stream(openai_stream(text=partial, reasoning="first try"), disconnect_after=6),
        Stream(openai_stream(text="Second attempt, complete.", reasoning="second try")),
        Stream(openai_stream(text="Report: \\boxed{ok}")),
    )
    task_id = await ask(page, "Say something")
    await wait_state(page, task_id, "completed")
    t = turn(page, task_id)
    # The partial text and reasoning of the broken call are struck out, the retryable error
    # stays a note, the retry is said once, and the answer that followed stands.
    struck = t.locator(".superseded")
    await expect(struck.filter(has_text="This first attempt")).to_have_count(1)
    await expect(t.locator(".thought-body .seg.superseded")).to_have_text("first try ")
    await expect(t.locator(".retry-note")).to_have_count(1)
    await expect(t.locator(".retry-note")).to_contain_text("retry 1 of 2")
    await expect(t.locator(".note.event-error.retryable")).to_have_count(1)
    await expect(t.locator(".note.event-error")).not_to_have_class("superseded")
    standing = t.locator(".md:not(.superseded)")
    await expect(standing.first).to_have_text("Second attempt, complete.")
    await expect(t.locator(".md.summary")).not_to_have_class("superseded")
    await expect(t.locator(".md.summary .katex .fbox")).to_have_count(1)
