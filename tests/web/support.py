"""Helpers of the web demo tests: headless Chromium, pages that fail on JavaScript errors, a
gateway whose model is the fake OpenAI server (so answers really come from a model stream)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Locator, Page, expect

from gateway.server import RunningGateway, Settings, serve_in_background
from tests.agent.fakes import FakeLLMServer
from tests.client.support import ROOT

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
TIMEOUT_MS = 20_000
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = ROOT / "artifacts"


@asynccontextmanager
async def open_page(
    browser: Browser, url: str, *, wait_open: bool = True, **context: Any
) -> AsyncIterator[Page]:
    """A fresh browser context on ``url``; a JavaScript error on the page or a file it could
    not load fails the test."""
    context.setdefault("viewport", DESKTOP)
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()
    errors: list[str] = []
    missing: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Every file the page loads (scripts, styles, KaTeX fonts, the icon) is served; the page's
    # own GET of /ws after a refused handshake is the one expected refusal.
    page.on(
        "response",
        lambda r: (
            missing.append(f"{r.status} {r.url}")
            if r.status >= 400 and "/ws" not in r.url
            else None
        ),
    )
    await page.goto(url)
    if wait_open:
        await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    try:
        yield page
    finally:
        await ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert not missing, f"files the page could not load: {missing}"


async def ask(page: Page, question: str) -> str:
    """Type a question, press Enter, return the new turn's task id."""
    before = await page.locator(".turn").count()
    await page.fill("#input", question)
    await page.press("#input", "Enter")
    turn = page.locator(".turn").nth(before)
    await expect(turn).to_be_visible()
    task_id = await turn.get_attribute("data-task-id")
    assert task_id
    return task_id


def turn(page: Page, task_id: str) -> Locator:
    return page.locator(f'.turn[data-task-id="{task_id}"]')


async def wait_state(page: Page, task_id: str, state: str) -> None:
    await expect(turn(page, task_id)).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)


async def streamed_text(page: Page, task_id: str) -> str:
    """What the turn holds of the streamed deltas, as the page recorded them in order."""
    text: str = await page.evaluate("id => window.ospark.tasks.get(id).transcript", task_id)
    return text


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path))
    return path


def openai_config(directory: Path, fake: FakeLLMServer, **main: Any) -> str:
    """An agent config whose model is the fake OpenAI server (no retry backoff)."""
    config = {
        "llm": {
            "provider": "openai",
            "model_name": "fake-model",
            "base_url": fake.openai_url,
            "api_key": "test-key",
            "retry_backoff_s": 0,
            "max_retries": 2,
            "timeout_s": 20,
        },
        "main_agent": {"tool_config": ["calculator"], "max_turns": 4, **main},
    }
    path = directory / "openai.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return str(path)


@asynccontextmanager
async def openai_gateway(directory: Path, fake: FakeLLMServer) -> AsyncIterator[RunningGateway]:
    settings = Settings(port=0, agent_config=openai_config(directory, fake))
    async with serve_in_background(settings) as gw:
        yield gw
