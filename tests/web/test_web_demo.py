"""The web demo in real headless Chromium against a real gateway on the demo model.

Every wait is on something the page shows (Playwright's auto-waiting ``expect``) or on the
held demo model reaching a point, never a sleep.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.connection import ConnectionSettings
from gateway.server import RunningGateway
from gateway.testing.held import Held
from protocol import Limits
from tests.client.support import (
    QUESTION,
    demo_gateway,
    drop_connections,
    held_gateway,
    transcript,
)

from .support import (
    ARGS,
    CHROMIUM,
    TIMEOUT_MS,
    ask,
    open_page,
    screenshot,
    streamed_text,
    turn,
    wait_state,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed"),
]

RESEARCH = "Please research (2^10)/3 for me"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gw(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGateway]:
    # 15 ms per word: an answer streams over many animation frames.
    async with demo_gateway(tmp_path_factory.mktemp("web"), pace_ms=15) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser, gw: RunningGateway) -> AsyncIterator[Page]:
    async with open_page(browser, gw.http_url + "/") as page:
        yield page


async def test_answer_with_tool_chip_and_subagent(page: Page) -> None:
    await page.evaluate(
        """() => {
          window.__replaced = 0;
          new MutationObserver((records) => {
            for (const r of records) for (const n of r.removedNodes)
              if (n.classList && n.classList.contains('md-block') && !n.classList.contains('live'))
                window.__replaced++;
          }).observe(document.getElementById('turns'), {childList: true, subtree: true});
        }"""
    )
    calc = await ask(page, QUESTION)
    research = await ask(page, RESEARCH)
    c = turn(page, calc)
    await wait_state(page, calc, "completed")
    await expect(c.locator(".bubble")).to_have_text(QUESTION)
    # The answer: markdown, the boxed answer typeset, no protocol detail in sight.
    summary = c.locator(".md.summary")
    await expect(summary.locator("li")).to_contain_text("The calculator returned 395.")
    await expect(summary.locator(".katex annotation")).to_have_text("\\boxed{395}")
    await expect(summary.locator(".katex .fbox")).to_have_count(1)
    answer_text = await c.locator(".assistant").inner_text()
    for detail in (calc, "tools_listed", "turn_started", "seq"):
        assert detail not in answer_text
    # One collapsed "Thought for N s" disclosure; the tool call as a closed chip.
    thought = c.locator("details.thought")
    await expect(thought).to_have_count(1)
    await expect(thought.locator("summary")).to_have_text(
        re.compile(r"^Thought for (<1|\d+(\.\d)?) s$")
    )
    assert not await thought.evaluate("d => d.open")
    chip = c.locator("details.tool")
    await expect(chip).to_have_attribute("data-status", "ok")
    await expect(chip.locator(".tool-name")).to_have_text("calculate")
    await expect(chip.locator(".tool-brief")).to_have_text("17*23+4")
    await expect(chip.locator(".duration")).to_contain_text("ms")
    await expect(chip.locator(".result")).to_be_hidden()
    await chip.locator("summary").click()
    await expect(chip.locator(".args")).to_contain_text('"expression": "17*23+4"')
    await expect(chip.locator(".result")).to_have_text("395")
    await expect(c.locator(".model")).to_have_text("offline demo model")
    # The protocol details are one toggle away.
    await expect(c.locator(".details")).to_be_hidden()
    await c.locator(".details-toggle").click()
    await expect(c.locator('.fact[data-fact="task_id"] dd')).to_have_text(calc)
    await expect(c.locator('.fact[data-fact="final_answer"] dd')).to_have_text("395")
    await expect(c.locator(".timeline .step").first).to_have_text("tools_listed")
    await expect(c.locator(".details-toggle")).to_have_attribute("aria-expanded", "true")

    r = turn(page, research)
    await wait_state(page, research, "completed")
    await expect(r.locator(".md.summary .katex annotation").last).to_have_text(
        "\\boxed{341.333333333}"
    )
    # The sub-agent's work is nested in the main agent's sub-agent chip, its summary once.
    nested = r.locator("details.tool.agents .nested .agent.sub")
    await expect(nested).to_have_attribute("data-agent", "main/agent-worker#1")
    await expect(nested.locator("details.tool .result")).to_have_text("341.333333333")
    sub_summary = "The calculator returned 341.333333333."
    await expect(r.get_by_text(sub_summary, exact=True)).to_have_count(1)
    await expect(r.locator("details.tool.agents > .tool-body .result")).to_have_count(0)

    await expect(page.locator(f'#status tr[data-task-id="{calc}"]')).to_have_attribute(
        "data-state", "completed"
    )
    # No settled markdown block was ever rendered twice.
    assert await page.evaluate("window.__replaced") == 0
    await page.evaluate("document.getElementById('scroller').scrollTop = 0")
    await screenshot(page, "web-demo.png")


async def test_stop_while_the_answer_streams(browser: Browser) -> None:
    held = Held()
    held.hold("summary text", task=QUESTION)
    async with held_gateway(held) as gw, open_page(browser, gw.http_url + "/") as page:
        await expect(page.locator("#stop")).to_be_hidden()
        first = await ask(page, QUESTION)
        await held.reached("summary text", task=QUESTION)
        victim = turn(page, first)
        await expect(victim).to_have_attribute("data-state", "running")
        await expect(victim.locator(".task-state")).to_have_text("writing…")
        await expect(victim.locator(".agent")).to_have_attribute("aria-busy", "true")
        # A follow-up asked meanwhile waits for the answer being written.
        second = await ask(page, "What time is it?")
        await expect(turn(page, second).locator(".task-state")).to_have_text(
            "after the previous answer"
        )
        await page.locator("#stop").click()  # stops the answer being written, not the next
        await wait_state(page, first, "cancelled")
        held.release()  # (the follow-up's history starts with the held question)
        await expect(victim.locator(".cancelled-box")).to_contain_text("Stopped")
        await expect(victim.locator(".md.summary")).to_have_count(0)
        await wait_state(page, second, "completed")
        await expect(page.locator("#stop")).to_be_hidden()
        other = turn(page, second)
        await expect(other.locator("details.tool .tool-name")).to_have_text("now")
        await expect(other.locator(".md.summary")).not_to_be_empty()


async def test_resume_after_server_side_close(page: Page, gw: RunningGateway) -> None:
    expected = await transcript(gw.url)
    task_id = await ask(page, QUESTION)
    t = turn(page, task_id)
    await expect(t.locator("details.tool")).to_be_visible(timeout=TIMEOUT_MS)
    assert drop_connections(gw) == 1
    await wait_state(page, task_id, "completed")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    assert await page.evaluate("window.ospark.reconnects") >= 1
    assert await streamed_text(page, task_id) == expected
    await expect(t.locator("details.tool")).to_have_count(1)


async def test_reload_keeps_the_times_of_the_events(page: Page, gw: RunningGateway) -> None:
    expected = await transcript(gw.url, "What is 6*7?")
    done = await ask(page, "What is 6*7?")
    await wait_state(page, done, "completed")
    elapsed = await turn(page, done).locator(".elapsed").inner_text()
    thought = await turn(page, done).locator("details.thought summary").inner_text()
    # Paced at 15 ms a word, the answer took seconds; a replay takes milliseconds.
    assert float(elapsed.split()[0]) >= 0.5, elapsed
    await page.reload()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await wait_state(page, done, "completed")
    await expect(turn(page, done).locator(".elapsed")).to_have_text(elapsed)
    await expect(turn(page, done).locator("details.thought summary")).to_have_text(thought)
    assert await streamed_text(page, done) == expected


async def test_reload_resumes_a_running_answer(browser: Browser) -> None:
    held = Held()
    held.hold("summary", task=QUESTION)
    async with held_gateway(held) as gw, open_page(browser, gw.http_url + "/") as page:
        task_id = await ask(page, QUESTION)
        await held.reached("summary", task=QUESTION)
        await expect(turn(page, task_id).locator("details.tool")).to_have_attribute(
            "data-status", "ok"
        )
        await page.reload()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        # Replayed up to where the task is, then followed live.
        t = turn(page, task_id)
        await expect(t.locator("details.tool")).to_have_attribute("data-status", "ok")
        await expect(t).to_have_attribute("data-state", "running")
        held.release("summary", task=QUESTION)
        await wait_state(page, task_id, "completed")
        await expect(t.locator(".md.summary .katex annotation")).to_have_text("\\boxed{395}")
        assert await streamed_text(page, task_id) == await transcript(gw.url)


async def test_clear_finished_clears_the_panel_too(page: Page) -> None:
    task_id = await ask(page, "What time is it?")
    await wait_state(page, task_id, "completed")
    row = page.locator(f'#status tr[data-task-id="{task_id}"]')
    await expect(row).to_have_attribute("data-state", "completed")
    await page.locator("#clear").click()
    await expect(turn(page, task_id)).to_have_count(0)
    await expect(row).to_have_count(0)
    await page.locator("#refresh").click()
    await expect(page.locator("#status-empty")).to_be_visible()
    await expect(row).to_have_count(0)
    await expect(page.locator("#empty")).to_be_visible()
    await page.reload()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    await expect(page.locator("#status-empty")).to_be_visible()
    await expect(turn(page, task_id)).to_have_count(0)


async def test_errors_and_unknown_frames_are_shown_not_fatal(page: Page) -> None:
    await page.evaluate("window.ospark.ws.send(JSON.stringify({type: 'launch', id: 'x1'}))")
    await expect(page.locator("#banner-text")).to_contain_text("unknown_type")
    task_id = await ask(page, QUESTION)
    t = turn(page, task_id)
    await wait_state(page, task_id, "completed")
    # As if from a newer server: an unknown frame type, and a batch holding an event of an
    # unknown kind and an event of a task this page does not follow.
    await page.evaluate(
        """id => {
          const handle = window.ospark.ws.onmessage;
          handle({data: JSON.stringify({type: 'teleport', x: 1})});
          handle({data: JSON.stringify({type: 'batch', events: [
            {type: 'event', task_id: id, seq: 10000, ts: 0,
             event: {kind: 'hologram', agent: 'main', colour: '<b>blue</b>'}},
            {type: 'event', task_id: 'nobody', seq: 1, ts: 0, event: {kind: 'task_started'}},
          ]})});
        }""",
        task_id,
    )
    await expect(t.locator(".unknown")).to_contain_text('hologram {"colour":"<b>blue</b>"}')
    await expect(t.locator(".unknown b")).to_have_count(0)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")


async def test_token_from_the_page_url(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    token = "page-token-0123456789"
    directory = tmp_path_factory.mktemp("web-auth")
    async with (
        demo_gateway(directory, pace_ms=0, tokens={token: "alice"}) as gw,
        open_page(browser, gw.http_url + "/", wait_open=False) as page,
    ):
        await expect(page.locator("#conn")).to_have_attribute("data-state", "closed")
        await expect(page.locator("#banner-text")).to_contain_text("401: a token is required")
        await expect(page.locator("#send")).to_be_disabled()
        await page.goto(gw.http_url + "/?token=" + token)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        await expect(page.locator("#session")).to_contain_text("principal alice")
        task_id = await ask(page, QUESTION)
        await wait_state(page, task_id, "completed")


async def test_a_refused_question_comes_back_to_the_box(browser: Browser) -> None:
    held = Held()
    held.hold("summary", task=QUESTION)
    connection = ConnectionSettings(limits=Limits(max_tasks_per_connection=1))
    async with (
        held_gateway(held, connection=connection) as gw,
        open_page(browser, gw.http_url + "/") as page,
    ):
        first = await ask(page, QUESTION)
        await held.reached("summary", task=QUESTION)
        refused = await ask(page, "What is 6*7?")
        t = turn(page, refused)
        await expect(t).to_have_attribute("data-state", "not sent")
        await expect(t.locator(".failed-box")).to_contain_text("too_many_tasks")
        await expect(page.locator("#input")).to_have_value("What is 6*7?")
        await expect(page.locator("#composer-error")).to_contain_text("too_many_tasks")
        await expect(page.locator("#send")).to_be_enabled()
        held.release("summary", task=QUESTION)
        await wait_state(page, first, "completed")
        # Sent again once there is room: the error goes, the question is answered.
        again = await ask(page, "What is 6*7?")
        await wait_state(page, again, "completed")
        await expect(page.locator("#composer-error")).to_be_hidden()


async def test_streaming_renders_only_the_last_block_again(browser: Browser) -> None:
    held = Held()
    held.hold("summary end", task=QUESTION)  # the summary's text is out, the task not done
    async with held_gateway(held) as gw, open_page(browser, gw.http_url + "/") as page:
        task_id = await ask(page, QUESTION)
        await held.reached("summary end", task=QUESTION)
        summary = turn(page, task_id).locator(".md.summary")
        # Rendered while streaming: the settled blocks, then the live last one.
        await expect(summary.locator(".md-block.live")).to_contain_text("Final answer")
        await expect(summary.locator(".md-block.live .katex")).to_have_count(1)
        settled = summary.locator(".md-block:not(.live)")
        await expect(settled.first).to_contain_text("Summary (offline demo model)")
        await settled.first.evaluate("n => { window.__settled = n; }")
        held.release("summary end", task=QUESTION)
        await wait_state(page, task_id, "completed")
        # The end of the stream settles the last block; what was settled is the same node.
        await expect(summary.locator(".md-block.live")).to_have_count(0)
        assert await settled.first.evaluate("n => n === window.__settled")
        assert await page.evaluate("document.body.contains(window.__settled)")
        await expect(summary.locator(".katex annotation")).to_have_text("\\boxed{395}")


INJECT = """([id, seq, event]) => window.ospark.ws.onmessage({data: JSON.stringify(
  {type: 'event', task_id: id, seq, ts: Date.now() / 1000, event})})"""


async def test_question_approval_and_choice_cards(browser: Browser) -> None:
    """Every kind of card, fed to the page as the gateway sends them (the demo model asks only
    questions; test_web_conversations answers real ones): each answers with an `input` frame,
    shows the gateway's refusal of a request it does not know, and then the outcome."""
    held = Held()
    held.hold("turn 1", task=QUESTION)
    async with held_gateway(held) as gw, open_page(browser, gw.http_url + "/") as page:
        task_id = await ask(page, QUESTION)
        await held.reached("turn 1", task=QUESTION)
        t = turn(page, task_id)
        await expect(t).to_have_attribute("data-state", "running")
        await page.evaluate(
            """() => { window.__sent = []; const ws = window.ospark.ws;
                 const send = ws.send.bind(ws);
                 ws.send = (d) => { window.__sent.push(JSON.parse(d)); send(d); }; }"""
        )
        question = {
            "kind": "input_required",
            "agent": "main",
            "request": {"request_id": "r1", "kind": "question", "prompt": "<b>Which unit?</b>"},
        }
        await page.evaluate(INJECT, [task_id, 1000, question])
        card = t.locator('.ask-card[data-request-id="r1"]')
        await expect(card.locator(".ask-prompt")).to_have_text("<b>Which unit?</b>")
        await expect(card.locator("b")).to_have_count(0)
        await expect(t.locator(".task-state")).to_have_text("needs your answer")
        await card.locator("textarea").fill("metres")
        await card.locator("textarea").press("Enter")
        sent = await page.evaluate("window.__sent.filter(f => f.type === 'input')")
        assert sent == [
            {
                "type": "input",
                "id": sent[0]["id"],
                "task_id": task_id,
                "request_id": "r1",
                "text": "metres",
            }
        ]
        # The gateway knows no request r1: the card says so and can be answered again.
        await expect(card.locator(".ask-error")).to_be_visible()
        await expect(card.locator("textarea")).to_be_enabled()
        received = {"kind": "input_received", "agent": "main", "request_id": "r1", "text": "metres"}
        await page.evaluate(INJECT, [task_id, 1001, received])
        await expect(card.locator(".ask-answer")).to_have_text("Answered: metres")
        await expect(t).to_have_attribute("data-state", "running")

        approval = {
            "kind": "input_required",
            "agent": "main",
            "request": {
                "request_id": "r2",
                "kind": "approval",
                "prompt": "Run the calculator?",
                "server": "calculator",
                "tool": "calculate",
                "arguments": {"expression": "<img src=x onerror=alert(1)>"},
            },
        }
        await page.evaluate(INJECT, [task_id, 1002, approval])
        card = t.locator('.ask-card[data-request-id="r2"]')
        await expect(card.locator(".ask-args")).to_contain_text("<img src=x")
        await expect(card.locator("img")).to_have_count(0)
        await card.get_by_role("button", name="Approve").click()
        choice = {
            "kind": "input_required",
            "agent": "main",
            "request": {"request_id": "r3", "kind": "choice", "options": ["feet", "metres"]},
        }
        await page.evaluate(INJECT, [task_id, 1003, choice])
        await (
            t.locator('.ask-card[data-request-id="r3"]')
            .get_by_role("button", name="metres")
            .click()
        )
        sent = await page.evaluate("window.__sent.filter(f => f.type === 'input').slice(1)")
        assert [(f["request_id"], f.get("approved"), f.get("choice")) for f in sent] == [
            ("r2", True, None),
            ("r3", None, "metres"),
        ]
        steer = {"kind": "user_message", "agent": "main", "text": "use SI units", "turn": 2}
        await page.evaluate(INJECT, [task_id, 1004, steer])
        await expect(t.locator(".steer .steer-text")).to_have_text("use SI units")
        await page.evaluate(
            INJECT,
            [task_id, 1005, {"kind": "task_cancelled", "agent": "main", "reason": "test over"}],
        )
        await expect(t).to_have_attribute("data-state", "cancelled")
        held.release()
