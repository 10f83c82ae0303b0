"""Conversations in the web demo, end to end on a gateway that offers them: follow-ups in one
thread, the list of chats, a new chat, reopening a chat, a question and a tool approval
answered from their cards."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.server import RunningGateway, Settings, serve_in_background
from gateway.testing import write_demo_config
from tests.client.support import QUESTION

from .support import ARGS, CHROMIUM, PHONE, ask, open_page, turn, wait_state

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
    config = write_demo_config(tmp_path_factory.mktemp("web-conv"), 0)
    async with serve_in_background(Settings(port=0, agent_config=config)) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, gw: RunningGateway) -> AsyncIterator[Page]:
    async with open_page(browser, gw.http_url + "/") as page:
        await expect(page.locator("#new-chat")).to_be_visible()  # the gateway offers threads
        await page.evaluate(
            """() => { window.__sent = []; const ws = window.ospark.ws;
                 const send = ws.send.bind(ws);
                 ws.send = (d) => { window.__sent.push(JSON.parse(d)); send(d); }; }"""
        )
        yield page


def approval_config(directory: Path) -> str:
    """The demo config with every calculator call waiting for the user's approval."""
    config = Path(write_demo_config(directory, 0))
    config.write_text(config.read_text() + "require_approval: [calculator/calculate]\n")
    return str(config)


def boxed(page: Page, task_id: str):  # type: ignore[no-untyped-def]
    return turn(page, task_id).locator(".md.summary .katex annotation")


async def test_follow_ups_and_the_list_of_chats(page: Page) -> None:
    first = await ask(page, QUESTION)
    await wait_state(page, first, "completed")
    follow_up = await ask(page, "Add 5 to that")
    await wait_state(page, follow_up, "completed")
    # The follow-up saw the conversation: 395 + 5.
    await expect(boxed(page, follow_up)).to_have_text("\\boxed{400}")
    starts = await page.evaluate("window.__sent.filter(f => f.type === 'start')")
    thread = starts[0]["thread_id"]
    assert [s["thread_id"] for s in starts] == [thread, thread]
    assert {s["if_busy"] for s in starts} == {"enqueue"}
    chats = page.locator("#threads .thread")
    mine = page.locator(f'#threads .thread[data-thread-id="{thread}"]')
    await expect(chats.first).to_have_text(QUESTION)  # most recent first
    await expect(mine).to_have_attribute("aria-current", "true")

    # A new chat starts empty; its first question is a chat of its own.
    await page.locator("#new-chat").click()
    await expect(page.locator(".turn")).to_have_count(0)
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#input")).to_be_focused()
    other = await ask(page, "What is 6*7?")
    await wait_state(page, other, "completed")
    await expect(chats.first).to_have_text("What is 6*7?")
    await expect(chats.nth(1)).to_have_text(QUESTION)
    await expect(mine).not_to_have_attribute("aria-current", "true")

    # Reopening the first chat brings back its questions and answers.
    await mine.click()
    await expect(page.locator(".turn")).to_have_count(2)
    await expect(page.locator(".turn .bubble")).to_have_text([QUESTION, "Add 5 to that"])
    await wait_state(page, follow_up, "completed")
    await expect(boxed(page, follow_up)).to_have_text("\\boxed{400}")
    await expect(mine).to_have_attribute("aria-current", "true")
    # And the next question continues it.
    again = await ask(page, "Multiply that by 2")
    await wait_state(page, again, "completed")
    await expect(boxed(page, again)).to_have_text("\\boxed{800}")
    last = (await page.evaluate("window.__sent.filter(f => f.type === 'start')"))[-1]
    assert last["thread_id"] == thread


async def test_a_question_answered_from_its_card(page: Page) -> None:
    task_id = await ask(page, "Please ask me for a number to double")
    t = turn(page, task_id)
    card = t.locator(".ask-card")
    await expect(card.locator(".ask-prompt")).to_have_text("Which number should I use?")
    await expect(t).to_have_attribute("data-state", "input_required")
    await expect(t.locator(".task-state")).to_have_text("needs your answer")
    await card.locator("textarea").fill("21")
    await card.locator("textarea").press("Enter")
    await expect(card.locator(".ask-answer")).to_have_text("Answered: 21")
    await wait_state(page, task_id, "completed")
    await expect(boxed(page, task_id)).to_have_text("\\boxed{42}")


async def test_a_tool_call_approved_from_its_card(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings = Settings(port=0, agent_config=approval_config(tmp_path_factory.mktemp("web-ok")))
    async with serve_in_background(settings) as gw, open_page(browser, gw.http_url + "/") as page:
        await expect(page.locator("#new-chat")).to_be_visible()
        task_id = await ask(page, QUESTION)
        t = turn(page, task_id)
        card = t.locator(".ask-card[data-kind='approval']")
        await expect(card.locator(".ask-tool")).to_contain_text("calculate")
        await expect(card.locator(".ask-args")).to_contain_text('"expression": "17*23+4"')
        await card.get_by_role("button", name="Approve").click()
        await expect(card.locator(".ask-answer")).to_have_text("Approved.")
        await wait_state(page, task_id, "completed")
        await expect(t.locator("details.tool .tool-name")).to_have_text("calculate")
        await expect(boxed(page, task_id)).to_have_text("\\boxed{395}")


async def test_a_message_added_to_the_answer_being_written(page: Page) -> None:
    task_id = await ask(page, "Please ask me for a number to double")
    t = turn(page, task_id)
    card = t.locator(".ask-card")
    await expect(card.locator("textarea")).to_be_visible()  # the task waits mid tool call
    await expect(page.locator("#steer")).to_be_hidden()  # nothing typed yet
    await page.fill("#input", "also say hello")
    await page.locator("#steer").click()
    await expect(page.locator("#input")).to_have_value("")
    await expect(page.locator("#composer-hint")).to_contain_text("Added")
    sent = await page.evaluate("window.__sent.filter(f => f.type === 'message')")
    assert [(f["task_id"], f["text"]) for f in sent] == [(task_id, "also say hello")]
    await card.locator("textarea").fill("4")
    await card.locator("textarea").press("Enter")
    await wait_state(page, task_id, "completed")
    # Shown where the agent took it (after the tool call), and the agent answered it.
    await expect(t.locator(".steer .steer-text")).to_have_text("also say hello")
    await expect(t.locator(".md.turn-text").last).to_contain_text("You also said: also say hello")
    await expect(boxed(page, task_id)).to_have_text("\\boxed{8}")
    await expect(page.locator("#steer")).to_be_hidden()


async def test_the_list_of_chats_is_a_drawer_on_a_phone(
    browser: Browser, gw: RunningGateway
) -> None:
    async with open_page(browser, gw.http_url + "/", viewport=PHONE, is_mobile=True) as page:
        toggle = page.locator("#threads-toggle")
        await expect(toggle).to_be_visible()
        chats = page.locator("#threads")
        await expect(chats).to_be_hidden()
        first = await ask(page, "What is 6*7?")
        await wait_state(page, first, "completed")
        thread = await page.evaluate("window.ospark.thread")
        await page.locator("#new-chat").click()
        await expect(page.locator(".turn")).to_have_count(0)
        await toggle.click()
        await expect(chats).to_be_visible()
        await expect(page.locator("#scrim")).to_be_visible()
        await expect(toggle).to_have_attribute("aria-expanded", "true")
        await chats.locator(f'.thread[data-thread-id="{thread}"]').click()
        await expect(chats).to_be_hidden()  # choosing a chat closes the drawer
        await expect(page.locator("#scrim")).to_be_hidden()
        await expect(page.locator(".turn .bubble")).to_have_text(["What is 6*7?"])
        await wait_state(page, first, "completed")
        await toggle.click()
        await expect(chats).to_be_visible()
        await page.keyboard.press("Escape")
        await expect(chats).to_be_hidden()
        await expect(toggle).to_be_focused()
