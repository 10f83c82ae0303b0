"""The web demo's layout in headless Chromium: a phone that follows the stream, the developer
drawer, dark and light themes, keyboard-only use, the favicon, very long questions. The
screenshots in artifacts/ are written here (desktop light by test_web_markdown)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.server import RunningGateway
from gateway.testing.held import Held
from tests.client.support import QUESTION, demo_gateway, held_gateway

from .support import (
    ARGS,
    CHROMIUM,
    PHONE,
    ask,
    open_page,
    screenshot,
    turn,
    wait_state,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed"),
]

AT_BOTTOM = """() => { const s = document.getElementById('scroller');
  return s.scrollHeight - s.scrollTop - s.clientHeight <= 2; }"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    async with demo_gateway(tmp_path_factory.mktemp("web-layout"), pace_ms=0) as gw:
        yield gw


async def at_bottom(page: Page) -> bool:
    result: bool = await page.evaluate(AT_BOTTOM)
    return result


async def follows(page: Page) -> None:
    """Wait until the view has caught up with the stream (it moves once per frame)."""
    await page.wait_for_function(AT_BOTTOM)


async def test_phone_follows_the_stream_until_the_user_scrolls_up(browser: Browser) -> None:
    held = Held()
    async with (
        held_gateway(held) as gw,
        open_page(
            browser, gw.http_url + "/", viewport=PHONE, is_mobile=True, has_touch=True
        ) as page,
    ):
        # Earlier answers fill more than the screen.
        for question in ("What is 2+3?", "Please research (2^10)/3 for me", "What is 6*7?"):
            await wait_state(page, await ask(page, question), "completed")
        # The next answer's summary waits for the test (the thread's history makes the turn
        # numbers of a follow-up run on, the summary is always "summary").
        held.hold("summary")
        before = held.arrivals("summary")
        task_id = await ask(page, QUESTION)
        t = turn(page, task_id)
        # Each time the answer grows, its end is in view: its turns and the tool call.
        await held.reached("summary", before + 1)
        await expect(t.locator("details.tool")).to_have_attribute("data-status", "ok")
        await expect(t.locator(".md.turn-text").last).to_contain_text("The answer is 395")
        await follows(page)
        box = await t.locator("details.tool").bounding_box()
        assert box and box["y"] + box["height"] <= PHONE["height"]
        # The user scrolls up: the view stays where they put it, a button offers the way back.
        await page.evaluate("document.getElementById('scroller').scrollBy(0, -600)")
        await expect(page.locator("#jump")).to_be_visible()
        top = await page.evaluate("document.getElementById('scroller').scrollTop")
        held.release("summary")
        await wait_state(page, task_id, "completed")
        await expect(t.locator(".md.summary .katex")).to_have_count(1)
        assert await page.evaluate("document.getElementById('scroller').scrollTop") == top
        assert not await at_bottom(page)
        await page.locator("#jump").click()
        await expect(page.locator("#jump")).to_be_hidden()
        await follows(page)
        # Nothing is wider than the phone.
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        await screenshot(page, "web-phone.png")
        # The developer panel is a drawer: closed, opened over the chat, closed by Escape.
        dev = page.locator("#dev")
        await expect(dev).to_be_hidden()
        await page.locator("#dev-toggle").click()
        await expect(dev).to_be_visible()
        await expect(page.locator("#scrim")).to_be_visible()
        await expect(page.locator("#dev-close")).to_be_focused()
        await expect(page.locator(f'#status tr[data-task-id="{task_id}"]')).to_have_attribute(
            "data-state", "completed"
        )
        await page.keyboard.press("Escape")
        await expect(dev).to_be_hidden()
        await expect(page.locator("#dev-toggle")).to_be_focused()


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_theme_follows_the_color_scheme(
    browser: Browser, gw: RunningGateway, scheme: str
) -> None:
    async with open_page(browser, gw.http_url + "/", color_scheme=scheme) as page:
        task_id = await ask(page, "Please research (2^10)/3 for me")
        await wait_state(page, task_id, "completed")
        background = await page.evaluate(
            "getComputedStyle(document.documentElement).backgroundColor"
        )
        ink = await page.evaluate("getComputedStyle(document.documentElement).color")
        if scheme == "dark":
            assert background == "rgb(22, 24, 29)" and ink == "rgb(230, 232, 236)"
        else:
            assert background == "rgb(255, 255, 255)" and ink == "rgb(31, 35, 40)"
        # The highlight.js theme of the same scheme is the one applied.
        sheets = await page.evaluate(
            "[...document.styleSheets].filter(s => s.href && s.href.includes('highlight') &&"
            " matchMedia(s.media.mediaText).matches).map(s => s.href.split('/').pop())"
        )
        assert sheets == (["github-dark.min.css"] if scheme == "dark" else ["github.min.css"])
        if scheme == "dark":
            await screenshot(page, "web-desktop-dark.png")


async def test_keyboard_only(browser: Browser, gw: RunningGateway) -> None:
    async with open_page(browser, gw.http_url + "/") as page:
        # The first Tab reaches the skip link, which leads to the message box.
        await page.keyboard.press("Tab")
        await expect(page.locator(".skip")).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(page.locator("#input")).to_be_focused()
        await expect(page.locator("#send")).to_be_disabled()
        await page.keyboard.type("What is")
        await page.keyboard.press("Shift+Enter")
        await page.keyboard.type("17*23+4?")
        await expect(page.locator("#input")).to_have_value("What is\n17*23+4?")
        await expect(page.locator("#send")).to_be_enabled()
        height = await page.locator("#input").evaluate("n => n.offsetHeight")
        assert height > 30  # grew to two lines
        await page.keyboard.press("Enter")
        t = page.locator(".turn").first
        await expect(t.locator(".bubble")).to_have_text("What is\n17*23+4?")
        await expect(page.locator("#input")).to_have_value("")
        await expect(page.locator("#input")).to_be_focused()
        await expect(t).to_have_attribute("data-state", "completed")
        # Tab from the message box backwards through the answer's controls, to the details.
        toggle = t.locator(".details-toggle")
        for _ in range(12):
            await page.keyboard.press("Shift+Tab")
            if await toggle.evaluate("n => n === document.activeElement"):
                break
        await expect(toggle).to_be_focused()
        outline = await toggle.evaluate("n => getComputedStyle(n).outlineStyle")
        assert outline != "none"  # the focus is visible
        await page.keyboard.press("Enter")
        await expect(t.locator(".details")).to_be_visible()
        # The tool chip opens from the keyboard too.
        chip = t.locator("details.tool summary")
        await chip.focus()
        await page.keyboard.press("Enter")
        await expect(t.locator("details.tool .result")).to_have_text("395")
        # The streaming answer is a polite live region, done when the answer is.
        await expect(t.locator('.agent[data-agent="main"]')).to_have_attribute(
            "aria-live", "polite"
        )
        await expect(t.locator('.agent[data-agent="main"]')).to_have_attribute("aria-busy", "false")


async def test_favicon(browser: Browser, gw: RunningGateway) -> None:
    async with open_page(browser, gw.http_url + "/") as page:
        reply = await page.request.get(gw.http_url + "/favicon.ico")
        assert reply.status == 200
        assert (await reply.body())[:4] == b"\x00\x00\x01\x00"  # an ICO file
        icon = await page.evaluate("document.querySelector('link[rel=icon]').href")
        assert (await page.request.get(icon)).status == 200


async def test_long_questions_wrap_and_the_limit_is_said(
    browser: Browser, gw: RunningGateway
) -> None:
    limit = 100_000
    tail = " What is 2+3?"
    words = ("lorem ipsum " * (limit // 12 + 1))[: limit - len(tail)] + tail
    long_word = "x" * 5000
    async with open_page(browser, gw.http_url + "/") as page:
        task_id = await ask(page, long_word)
        await expect(turn(page, task_id).locator(".bubble")).to_be_visible()
        assert len(words) == limit
        task_id = await ask(page, words)
        t = turn(page, task_id)
        await wait_state(page, task_id, "completed")
        await expect(t.locator(".task-state")).to_have_text("completed")
        # Clamped with a way to read it all, and never wider than the conversation.
        await expect(t.locator(".user .more")).to_have_text("Show all 100,000 characters")
        widths = await page.evaluate(
            """() => { const s = document.getElementById('scroller');
                 const b = [...document.querySelectorAll('.bubble')]
                   .map(n => n.getBoundingClientRect().right);
                 return {scroll: s.scrollWidth, client: s.clientWidth, right: Math.max(...b),
                         width: s.getBoundingClientRect().right}; }"""
        )
        assert widths["scroll"] <= widths["client"]
        assert widths["right"] <= widths["width"]
        await t.locator(".user .more").click()
        await expect(t.locator(".user .more")).to_have_text("Show less")
        # One character more than the gateway takes: said at once, and the text is kept.
        too_long = "y" * (limit + 1)
        await page.fill("#input", too_long)
        await page.press("#input", "Enter")
        await expect(page.locator("#composer-error")).to_contain_text("at most 100,000")
        assert await page.locator("#input").evaluate("n => n.value.length") == limit + 1
        await expect(page.locator(".turn")).to_have_count(2)
