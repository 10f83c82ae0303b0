"""The web demo in real headless Chromium against a real gateway on the demo model.

Every wait is on something the page shows (Playwright's auto-waiting ``expect``), never a sleep.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.server import RunningGateway
from tests.client.support import QUESTION, ROOT, demo_gateway, drop_connections, transcript

CHROMIUM = os.environ.get("OSPARK_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed"),
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    # 15 ms per word: a task takes about a second, long enough to act on it while it runs.
    async with demo_gateway(tmp_path_factory.mktemp("web"), pace_ms=15) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, gw: RunningGateway) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(gw.http_url + "/")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    yield page
    await context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


async def ask(page: Page, question: str) -> str:
    """Type a question, submit it, return the new card's task id."""
    before = await page.locator(".task").count()
    await page.fill("#input", question)
    await page.press("#input", "Enter")
    card = page.locator(".task").nth(before)
    await expect(card).to_be_visible()
    task_id = await card.get_attribute("data-task-id")
    assert task_id
    return task_id


def card(page: Page, task_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'.task[data-task-id="{task_id}"]')


async def streamed_text(page: Page, task_id: str) -> str:
    """What the card shows of the streamed deltas (reasoning and text), in page order."""
    text: str = await card(page, task_id).evaluate(
        "c => [...c.querySelectorAll('.reasoning .body, .llm-text')]"
        ".map(n => n.textContent).join('')"
    )
    return text


async def test_answer_with_tool_card_and_subagent(page: Page, gw: RunningGateway) -> None:
    calc = await ask(page, QUESTION)
    research = await ask(page, "Please research (2^10)/3 for me")
    c = card(page, calc)
    await expect(c.locator(".final-answer .value")).to_have_text("395", timeout=TIMEOUT_MS)
    await expect(c.locator(".task-state")).to_have_text("completed")
    tool = c.locator(".tool-card")
    await expect(tool).to_have_attribute("data-status", "ok")
    await expect(tool.locator(".tool-name")).to_contain_text("calculate")
    await expect(tool.locator(".args")).to_contain_text("17*23+4")
    await expect(tool.locator(".result")).to_have_text("395")
    await expect(tool.locator(".duration")).to_contain_text("ms")
    await expect(c.locator(".model")).to_have_text("offline demo model")
    await expect(c.locator("details.reasoning").first).to_be_visible()
    await expect(c.locator(".timeline li").first).to_be_visible()

    r = card(page, research)
    await expect(r.locator(".final-answer .value")).to_have_text(
        "341.333333333", timeout=TIMEOUT_MS
    )
    # The sub-agent's work is nested inside the main agent's sub-agent tool card.
    nested = r.locator(".tool-card.agents .nested .agent.sub")
    await expect(nested).to_have_attribute("data-agent", "main/agent-worker#1")
    await expect(nested.locator(".tool-card .result")).to_have_text("341.333333333")

    await expect(page.locator(f'#status tr[data-task-id="{calc}"]')).to_have_attribute(
        "data-state", "completed"
    )
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    await page.screenshot(path=str(artifacts / "web-demo.png"), full_page=True)


async def test_two_tasks_cancel_one(page: Page) -> None:
    first = await ask(page, QUESTION)
    second = await ask(page, "What time is it?")
    victim = card(page, first)
    await expect(victim.locator(".task-state")).to_have_text("running")
    await victim.locator(".cancel").click()
    await expect(victim.locator(".task-state")).to_have_text("cancelled", timeout=TIMEOUT_MS)
    await expect(victim.locator(".cancelled-box")).to_contain_text("Cancelled")
    await expect(victim.locator(".final-answer")).to_have_count(0)
    other = card(page, second)
    await expect(other.locator(".task-state")).to_have_text("completed", timeout=TIMEOUT_MS)
    await expect(other.locator(".final-answer .value")).not_to_be_empty()
    await expect(other.locator(".tool-card .tool-name")).to_contain_text("now")


async def test_resume_after_server_side_close(page: Page, gw: RunningGateway) -> None:
    expected = await transcript(gw.url)
    task_id = await ask(page, QUESTION)
    c = card(page, task_id)
    await expect(c.locator(".tool-card")).to_be_visible(timeout=TIMEOUT_MS)
    assert drop_connections(gw) == 1
    await expect(c.locator(".final-answer .value")).to_have_text("395", timeout=TIMEOUT_MS)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    assert await page.evaluate("window.ospark.reconnects") >= 1
    assert await streamed_text(page, task_id) == expected
    assert await c.evaluate("c => c.querySelectorAll('.tool-card').length") == 1


async def test_reload_resumes_running_task(page: Page, gw: RunningGateway) -> None:
    expected = await transcript(gw.url)
    task_id = await ask(page, QUESTION)
    await expect(card(page, task_id).locator(".tool-card")).to_be_visible(timeout=TIMEOUT_MS)
    await page.reload()
    c = card(page, task_id)
    await expect(c.locator(".final-answer .value")).to_have_text("395", timeout=TIMEOUT_MS)
    assert await streamed_text(page, task_id) == expected


async def test_errors_and_unknown_frames_are_shown_not_fatal(page: Page) -> None:
    await page.evaluate("window.ospark.ws.send(JSON.stringify({type: 'launch', id: 'x1'}))")
    await expect(page.locator("#banner-text")).to_contain_text("unknown_type")
    task_id = await ask(page, QUESTION)
    c = card(page, task_id)
    await expect(c.locator(".final-answer .value")).to_have_text("395", timeout=TIMEOUT_MS)
    # As if from a newer server: an unknown frame type, and a batch holding an event of an
    # unknown kind and an event of a task this page does not follow.
    await page.evaluate(
        """id => {
          const handle = window.ospark.ws.onmessage;
          handle({data: JSON.stringify({type: 'teleport', x: 1})});
          handle({data: JSON.stringify({type: 'batch', events: [
            {type: 'event', task_id: id, seq: 10000, ts: 0,
             event: {kind: 'hologram', agent: 'main', colour: 'blue'}},
            {type: 'event', task_id: 'nobody', seq: 1, ts: 0, event: {kind: 'task_started'}},
          ]})});
        }""",
        task_id,
    )
    await expect(c.locator(".unknown")).to_contain_text("hologram")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")


async def test_token_from_the_page_url(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    token = "page-token-0123456789"
    directory = tmp_path_factory.mktemp("web-auth")
    async with demo_gateway(directory, pace_ms=0, tokens={token: "alice"}) as gw:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(gw.http_url + "/")
        await expect(page.locator("#conn")).to_have_attribute("data-state", "closed")
        await expect(page.locator("#banner-text")).to_contain_text("401: a token is required")
        await page.goto(gw.http_url + "/?token=" + token)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        await expect(page.locator("#session")).to_contain_text("principal alice")
        task_id = await ask(page, QUESTION)
        await expect(card(page, task_id).locator(".final-answer .value")).to_have_text(
            "395", timeout=TIMEOUT_MS
        )
        await context.close()
