"""One bounded HTTP request for the tool servers: a deadline, a size cap, errors as tool errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx2

from ._common import ToolError


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    url: str


Guard = Callable[[str], Awaitable[None]]
MAX_REDIRECTS = 5


async def fetch(
    method: str,
    url: str,
    *,
    service: str,
    timeout_s: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    guard: Guard | None = None,
) -> Response:
    """Send one request and read at most ``max_bytes`` of the answer (more is a tool error).

    ``service`` names the other side in every error ("Serper", "Jina reader", …), and the URL
    tried is in the message; the headers (which hold keys) never are. ``guard`` is awaited with
    every URL before it is requested, redirects included, and raises to refuse one.
    """
    try:
        async with httpx2.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                if guard is not None:
                    await guard(url)
                async with client.stream(
                    method, url, headers=dict(headers or {}), json=json
                ) as response:
                    location = response.headers.get("location")
                    if response.status_code in (301, 302, 303, 307, 308) and location:
                        url = urljoin(url, location)
                        if response.status_code == 303 or method != "GET":
                            method, json = "GET", None
                        continue
                    return await _read(response, url, service, max_bytes)
            raise ToolError(f"{service}: more than {MAX_REDIRECTS} redirects from {url}")
    except httpx2.TimeoutException:
        raise ToolError(f"{service}: no answer from {url} within {timeout_s:g} s") from None
    except httpx2.HTTPError as exc:
        raise ToolError(f"{service}: cannot reach {url}: {exc}") from None


async def _read(response: httpx2.Response, url: str, service: str, max_bytes: int) -> Response:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ToolError(
            f"{service}: the answer from {url} is {int(declared):,} bytes, more than the "
            f"limit of {max_bytes:,}"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ToolError(
                f"{service}: the answer from {url} is larger than the limit of {max_bytes:,} bytes"
            )
        chunks.append(chunk)
    return Response(
        response.status_code, response.headers.get("content-type", ""), b"".join(chunks), url
    )


def check_status(response: Response, service: str, key_name: str | None = None) -> None:
    """Turn an HTTP error status into a clear tool error."""
    status = response.status
    if status < 400:
        return
    detail = response.body[:300].decode("utf-8", errors="replace").strip()
    if status in (401, 403) and key_name:
        raise ToolError(f"{service} refused the key in {key_name} (HTTP {status}): {detail}")
    if status == 429:
        raise ToolError(f"{service} is rate limiting us (HTTP 429); try again later: {detail}")
    raise ToolError(f"{service} answered HTTP {status} for {response.url}: {detail}")
