"""The search tool as a real MCP stdio server against fake Serper and Jina services on loopback."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .support import call, fake_service, tool_client

SERPER_ANSWER = {
    "searchParameters": {"q": "ospark"},
    "answerBox": {"answer": "A WebSocket gateway", "link": "https://example.org/a"},
    "organic": [
        {"title": "OSpark Gateway", "link": "https://example.org/1", "snippet": "Streams agents."},
        {"title": "Second", "link": "https://example.org/2", "snippet": "More.", "date": "2026"},
    ],
    "peopleAlsoAsk": [{"question": "What is it?", "snippet": "A gateway."}],
}


def serper(request: Request, body: bytes) -> Response:
    if request.headers.get("x-api-key") != "serper-key":
        return JSONResponse({"message": "Unauthorized."}, status_code=403)
    return JSONResponse(SERPER_ANSWER)


def jina(request: Request, body: bytes) -> Response:
    if request.headers.get("authorization") != "Bearer jina-key":
        return JSONResponse({"message": "bad key"}, status_code=401)
    return PlainTextResponse("Title: Example\n\n# Example page\n\n" + "word " * 400)


async def test_google_search_and_scrape_speak_the_services_formats() -> None:
    async with fake_service() as fake:
        fake.routes = {"/search": serper, "/https://": jina}
        env = {
            "SERPER_API_KEY": "serper-key",
            "SERPER_BASE_URL": fake.url,
            "JINA_API_KEY": "jina-key",
            "JINA_BASE_URL": fake.url,
            "OSPARK_SEARCH_MAX_CHARS": "300",
        }
        async with tool_client("search", env) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == {"google_search", "scrape_website"}
            text, is_error = await call(client, "google_search", q=" ospark ", num=5)
            assert not is_error, text
            page, page_error = await call(client, "scrape_website", url="https://example.com/x")
            bad, bad_error = await call(client, "scrape_website", url="file:///etc/passwd")
    method, path, headers, body = fake.requests[0]
    assert (method, path, headers["x-api-key"]) == ("POST", "/search", "serper-key")
    assert json.loads(body) == {"q": "ospark", "gl": "us", "hl": "en", "num": 5, "page": 1}
    assert "Answer box: A WebSocket gateway" in text
    assert "1. OSpark Gateway\n   https://example.org/1\n   Streams agents." in text
    assert "What is it?" in text
    method, path, headers, _ = fake.requests[1]
    assert (method, path) == ("GET", "/https://example.com/x")
    assert headers["authorization"] == "Bearer jina-key"
    assert not page_error and page.startswith("Title: Example")
    assert "[page text truncated:" in page and "limit 300]" in page
    assert bad_error and "not a web address" in bad
    assert len(fake.requests) == 2  # the refused URL never left the server


async def test_missing_keys_and_refused_keys_are_clear_tool_errors() -> None:
    async with fake_service() as fake:
        fake.routes = {"/search": serper, "/https://": jina}
        no_keys = {"SERPER_BASE_URL": fake.url, "JINA_BASE_URL": fake.url}
        async with tool_client("search", no_keys) as client:
            search, search_error = await call(client, "google_search", q="x")
            page, page_error = await call(client, "scrape_website", url="https://example.com")
        assert not fake.requests  # nothing was sent without a key
        wrong = {**no_keys, "SERPER_API_KEY": "wrong", "JINA_API_KEY": "wrong"}
        async with tool_client("search", wrong) as client:
            refused, refused_error = await call(client, "google_search", q="x")
            denied, denied_error = await call(client, "scrape_website", url="https://example.com")
    assert search_error and "SERPER_API_KEY is not set" in search
    assert page_error and "JINA_API_KEY is not set" in page
    assert refused_error and "Serper refused the key in SERPER_API_KEY (HTTP 403)" in refused
    assert denied_error and "Jina reader refused the key in JINA_API_KEY (HTTP 401)" in denied
    assert "wrong" not in refused + denied  # keys never appear in messages


async def test_an_unreachable_service_names_the_url() -> None:
    env = {
        "SERPER_API_KEY": "k",
        "SERPER_BASE_URL": "http://127.0.0.1:9",
        "OSPARK_SEARCH_TIMEOUT_S": "5",
    }
    async with tool_client("search", env) as client:
        text, is_error = await call(client, "google_search", q="x")
    assert is_error and "Serper: cannot reach http://127.0.0.1:9/search" in text


async def test_miroflow_s_result_filters_leave_parts_out() -> None:
    answer = {
        **SERPER_ANSWER,
        "knowledgeGraph": {"title": "OSpark", "description": "A gateway", "attributes": {}},
    }
    async with fake_service() as fake:
        fake.routes = {"/search": lambda request, body: JSONResponse(answer)}
        env = {"SERPER_API_KEY": "serper-key", "SERPER_BASE_URL": fake.url}
        async with tool_client("search", env) as client:
            full, _ = await call(client, "google_search", q="ospark")
        filters = {
            "REMOVE_SNIPPETS": "true",
            "REMOVE_KNOWLEDGE_GRAPH": "1",
            "REMOVE_ANSWER_BOX": "yes",
        }
        async with tool_client("search", {**env, **filters}) as client:
            filtered, is_error = await call(client, "google_search", q="ospark")
    assert "Answer box:" in full and "Knowledge graph: OSpark" in full and "Streams agents." in full
    assert not is_error
    assert filtered == (
        "1. OSpark Gateway\n   https://example.org/1\n"
        "2. Second\n   https://example.org/2\n   2026\n\n"
        "People also ask:\n- What is it?"
    )
