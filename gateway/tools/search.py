"""The search tool: Google results through Serper, and any web page as text through Jina Reader.

``python -m gateway.tools.search`` serves, over stdio:

- ``google_search(q, gl, hl, num, page, tbs, location)``: ``POST {SERPER_BASE_URL}/search``
  with the key in ``X-API-KEY``; the organic results, answer box, knowledge graph and related
  questions come back as a readable list;
- ``scrape_website(url)``: ``GET {JINA_BASE_URL}/{url}`` with ``Authorization: Bearer
  {JINA_API_KEY}``; the page comes back as text (markdown), cut at ``OSPARK_SEARCH_MAX_CHARS``.

These are the services and tool names MiroFlow's search tools use, so its prompts carry over.
Environment: ``SERPER_API_KEY``, ``JINA_API_KEY`` (a missing key is a clear tool error, the other
tool still works), ``SERPER_BASE_URL`` (default ``https://google.serper.dev``),
``JINA_BASE_URL`` (default ``https://r.jina.ai``), ``OSPARK_SEARCH_TIMEOUT_S`` (30),
``OSPARK_SEARCH_MAX_CHARS`` (20,000 characters of page text per call), and MiroFlow's result
filters ``REMOVE_SNIPPETS``, ``REMOVE_KNOWLEDGE_GRAPH``, ``REMOVE_ANSWER_BOX`` (``true``, ``1`` or
``yes`` leaves that part out of ``google_search``'s results; default: kept).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from mcp.server.mcpserver import MCPServer

from ._common import ToolError, env_float, env_int, env_str, truncate
from ._http import check_status, fetch

MAX_RESPONSE_BYTES = 10 * 1024 * 1024

server: MCPServer[None] = MCPServer(
    "search",
    instructions="Search the web (Google via Serper) and read web pages as text (Jina Reader).",
    log_level="WARNING",
)


def _key(name: str, tool: str) -> str:
    key = env_str(name)
    if not key:
        raise ToolError(
            f"{name} is not set, so {tool} is not available; give the tool server "
            f"the key in its environment (env: {{{name}: ...}} in the agent config)"
        )
    return key


def _flag(name: str) -> bool:
    return env_str(name).lower() in ("true", "1", "yes")


def _format_results(data: dict[str, Any], limit: int) -> str:
    lines: list[str] = []
    snippets = not _flag("REMOVE_SNIPPETS")
    box = None if _flag("REMOVE_ANSWER_BOX") else data.get("answerBox")
    if isinstance(box, dict):
        answer = box.get("answer") or box.get("snippet") or ""
        if answer:
            lines += [f"Answer box: {answer}", f"  {box.get('link', '')}".rstrip(), ""]
    graph = None if _flag("REMOVE_KNOWLEDGE_GRAPH") else data.get("knowledgeGraph")
    if isinstance(graph, dict) and graph.get("title"):
        lines.append(f"Knowledge graph: {graph['title']} — {graph.get('description', '')}")
        for name, value in (graph.get("attributes") or {}).items():
            lines.append(f"  {name}: {value}")
        lines.append("")
    organic = [r for r in data.get("organic") or [] if isinstance(r, dict)]
    for i, result in enumerate(organic, 1):
        lines.append(f"{i}. {result.get('title', '(no title)')}")
        lines.append(f"   {result.get('link', '')}")
        if result.get("date"):
            lines.append(f"   {result['date']}")
        if snippets and result.get("snippet"):
            lines.append(f"   {result['snippet']}")
    people = [p for p in data.get("peopleAlsoAsk") or [] if isinstance(p, dict)]
    if people:
        lines += ["", "People also ask:"]
        for p in people:
            snippet = p.get("snippet", "") if snippets else ""
            lines.append(f"- {p.get('question', '')}" + (f": {snippet}" if snippet else ""))
    if not organic and not lines:
        lines.append("No results.")
    return truncate("\n".join(lines).strip(), limit, "search results")


@server.tool()
async def google_search(
    q: str,
    gl: str = "us",
    hl: str = "en",
    num: int = 10,
    page: int = 1,
    tbs: str | None = None,
    location: str | None = None,
) -> str:
    """Search Google (through Serper) and return the results: titles, links and snippets, plus
    the answer box and knowledge graph when there is one.

    Args:
        q: the search query.
        gl: country of the search, e.g. 'us', 'cn', 'uk'.
        hl: interface language, e.g. 'en', 'zh'.
        num: how many results (1-100).
        page: which page of results, from 1.
        tbs: time filter: 'qdr:h' (past hour), 'qdr:d', 'qdr:w', 'qdr:m', 'qdr:y'.
        location: a city-level location such as 'Paris, France'.
    """
    key = _key("SERPER_API_KEY", "google_search")
    if not q.strip():
        raise ToolError("the query q is empty")
    if not 1 <= num <= 100:
        raise ToolError(f"num must be between 1 and 100, got {num}")
    if page < 1:
        raise ToolError(f"page must be at least 1, got {page}")
    payload: dict[str, Any] = {"q": q.strip(), "gl": gl, "hl": hl, "num": num, "page": page}
    if tbs:
        payload["tbs"] = tbs
    if location:
        payload["location"] = location
    base = env_str("SERPER_BASE_URL", "https://google.serper.dev").rstrip("/")
    response = await fetch(
        "POST",
        f"{base}/search",
        service="Serper",
        timeout_s=env_float("OSPARK_SEARCH_TIMEOUT_S", 30.0),
        max_bytes=MAX_RESPONSE_BYTES,
        headers={"X-API-KEY": key, "Content-Type": "application/json"},
        json=payload,
    )
    check_status(response, "Serper", "SERPER_API_KEY")
    try:
        data = json.loads(response.body)
    except ValueError:
        raise ToolError("Serper answered something that is not JSON") from None
    if not isinstance(data, dict):
        raise ToolError("Serper answered JSON that is not an object")
    return _format_results(data, env_int("OSPARK_SEARCH_MAX_CHARS", 20_000))


@server.tool()
async def scrape_website(url: str) -> str:
    """Fetch a web page and return its content as text (markdown), through Jina Reader.

    Args:
        url: the page's address, starting with http:// or https://.
    """
    key = _key("JINA_API_KEY", "scrape_website")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ToolError(f"not a web address (http:// or https://): {url!r}")
    base = env_str("JINA_BASE_URL", "https://r.jina.ai").rstrip("/")
    response = await fetch(
        "GET",
        f"{base}/{url.strip()}",
        service="Jina reader",
        timeout_s=env_float("OSPARK_SEARCH_TIMEOUT_S", 30.0) * 2,
        max_bytes=MAX_RESPONSE_BYTES,
        headers={"Authorization": f"Bearer {key}", "Accept": "text/plain"},
    )
    check_status(response, "Jina reader", "JINA_API_KEY")
    text = response.body.decode("utf-8", errors="replace").strip()
    if not text:
        raise ToolError(f"Jina reader returned no text for {url}")
    return truncate(text, env_int("OSPARK_SEARCH_MAX_CHARS", 20_000), "page text")


def main() -> None:
    server.run("stdio")


if __name__ == "__main__":
    main()
