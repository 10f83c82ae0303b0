"""The autouse guard in tests/conftest.py: only loopback and Unix sockets are reachable."""

from __future__ import annotations

import socket

import httpx2
import pytest

from tests.conftest import NetworkBlockedError


def test_remote_connect_is_blocked() -> None:
    with socket.socket() as sock, pytest.raises(NetworkBlockedError):
        sock.connect(("192.0.2.1", 443))


def test_name_lookup_is_blocked() -> None:
    with pytest.raises(NetworkBlockedError):
        socket.getaddrinfo("api.openai.com", 443)


async def test_sdk_http_client_cannot_reach_the_internet() -> None:
    async with httpx2.AsyncClient() as client:
        with pytest.raises(Exception) as info:
            await client.get("https://api.anthropic.com/v1/messages")
    chain = [info.value, info.value.__cause__, info.value.__context__]
    assert any(isinstance(e, NetworkBlockedError) for e in chain) or "blocked" in str(info.value)


async def test_loopback_is_allowed() -> None:
    server = await __import__("asyncio").start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)):
        pass
    server.close()
    await server.wait_closed()
