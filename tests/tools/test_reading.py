"""The reading tool: documents of every kind as text, limits, refusals and a bounded worker."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response

from gateway.tools._common import ToolError
from gateway.tools.reading import Settings, Worker, read_document

from .documents import write_docx, write_pdf, write_pptx, write_xlsx
from .support import call, fake_service, processes_with, tool_client


def page(request: Request, body: bytes) -> Response:
    html = "<html><head><title>T</title></head><body><h1>Served page</h1><p>Body text.</p>"
    return Response(html + "</body></html>", media_type="text/html")


async def test_every_kind_of_document_reads_as_text(tmp_path: Path) -> None:
    write_pdf(tmp_path / "report.pdf", "Quarterly numbers 42")
    write_docx(tmp_path / "memo.docx", "Memo heading", "Meet on Tuesday.")
    write_xlsx(tmp_path / "prices.xlsx")
    write_pptx(tmp_path / "deck.pptx", "Launch plan")
    (tmp_path / "page.html").write_text("<h1>Local page</h1><p>Hello <b>there</b></p>")
    (tmp_path / "notes.txt").write_text("plain notes\n" + "z" * 3000)
    (tmp_path / ".env").write_text("SECRET=1")
    (tmp_path / "big.txt").write_text("b" * 300_000)
    env = {"OSPARK_READING_MAX_CHARS": "2000", "OSPARK_READING_MAX_BYTES": "200000"}
    async with fake_service() as fake:
        fake.routes = {"/doc": page}
        async with tool_client(
            "reading", {**env, "OSPARK_READING_ALLOW_PRIVATE": "1"}, tmp_path
        ) as client:
            texts = {
                name: await call(client, "read_file", uri=name)
                for name in ("report.pdf", "memo.docx", "prices.xlsx", "deck.pptx", "page.html")
            }
            notes = await call(client, "read_file", uri=f"file://{tmp_path}/notes.txt")
            url = await call(client, "read_file", uri=f"{fake.url}/doc")
            data = await call(
                client,
                "read_file",
                uri="data:text/html;base64," + base64.b64encode(b"<h2>Inline</h2>").decode(),
            )
            outside = await call(client, "read_file", uri="/etc/passwd")
            hidden = await call(client, "read_file", uri=".env")
            big = await call(client, "read_file", uri="big.txt")
            missing = await call(client, "read_file", uri="nope.pdf")
    for name, (text, is_error) in texts.items():
        assert not is_error, (name, text)
    assert "Quarterly numbers 42" in texts["report.pdf"][0]
    assert "# Memo heading" in texts["memo.docx"][0] and "Meet on Tuesday." in texts["memo.docx"][0]
    assert "## Prices" in texts["prices.xlsx"][0] and "| quince | 7 |" in texts["prices.xlsx"][0]
    assert "Launch plan" in texts["deck.pptx"][0]
    assert "# Local page" in texts["page.html"][0] and "**there**" in texts["page.html"][0]
    text, is_error = notes
    assert not is_error and text.startswith("plain notes")
    assert text.endswith("[document truncated: 1,012 more characters not shown; limit 2,000]")
    assert url == ("# Served page\n\nBody text.", False)
    assert data == ("## Inline", False)
    assert outside[1] and "outside the directories this tool may read" in outside[0]
    assert hidden[1] and "hidden" in hidden[0]
    assert big[1] and "300,000 bytes, more than the limit of 200,000" in big[0]
    assert missing[1] and "no such file" in missing[0]


async def test_urls_to_private_addresses_are_refused_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OSPARK_READING_ALLOW_PRIVATE", raising=False)
    async with fake_service() as fake:
        fake.routes = {"/doc": page}
        with pytest.raises(ToolError, match=r"non-public address \(127\.0\.0\.1\)"):
            await read_document(f"{fake.url}/doc")
    assert not fake.requests
    with pytest.raises(ToolError, match="not a web address"):
        await read_document("ftp://example.com/x")


async def test_a_redirect_to_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guard sees every hop: a public page cannot bounce the tool to localhost."""
    seen: list[str] = []

    async def guard(url: str) -> None:
        seen.append(url)
        if "/secret" in url:
            raise ToolError(f"{url} points to a non-public address")

    def bounce(request: Request, body: bytes) -> Response:
        return Response(status_code=302, headers={"location": "/secret"})

    from gateway.tools._http import fetch

    async with fake_service() as fake:
        fake.routes = {"/start": bounce, "/secret": page}
        with pytest.raises(ToolError, match="non-public"):
            await fetch(
                "GET", f"{fake.url}/start", service="t", timeout_s=10, max_bytes=1000, guard=guard
            )
    assert seen == [f"{fake.url}/start", f"{fake.url}/secret"]
    assert [r[1] for r in fake.requests] == ["/start"]  # the secret was never requested


async def test_conversion_past_its_deadline_is_killed_and_the_next_one_works(
    tmp_path: Path,
) -> None:
    """Conversion runs in a worker process: a deadline kills it (and its group), the next request
    starts a fresh worker. The marker is the worker's memory argument, unique to this test."""
    (tmp_path / "a.html").write_text("<h1>After</h1>")
    worker = Worker()
    marker = "gateway.tools._convert 777"
    hurried = Settings(max_bytes=10_000, max_chars=1000, timeout_s=0.05, memory_mb=777)
    with pytest.raises(ToolError, match=r"took longer than 0\.05 s"):
        await worker.convert(tmp_path / "a.html", ".html", "text/html", None, hurried)
    assert processes_with(marker) == []  # killed and reaped before the error was raised
    patient = Settings(max_bytes=10_000, max_chars=1000, timeout_s=120, memory_mb=777)
    try:
        text, total = await worker.convert(tmp_path / "a.html", ".html", "text/html", None, patient)
        assert (text, total) == ("# After", 7)
        assert worker.started == 2 and len(processes_with(marker)) == 1
    finally:
        await worker.aclose()
    assert processes_with(marker) == []
