"""The endpoint's I/O loop: an idle connection holds no writer task; the writer appears with
the first output, and every way a connection ends leaves no task of it behind."""

from __future__ import annotations

import asyncio

import websockets

from gateway.connection import Connection
from gateway.server import RunningGateway, Settings, serve_in_background
from protocol import Ping, Pong
from tests.server.helpers import Client


def writers(conn: Connection) -> list[asyncio.Task[object]]:
    name = f"ws-writer:{conn.session_id}"
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def gone(gw: RunningGateway, tasks: list[asyncio.Task[object]]) -> None:
    """Wait until the connection's tasks ended and the gateway let go of it."""
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    await asyncio.wait_for(gw.gateway._no_connections.wait(), 10)
    assert not gw.gateway.connections


async def test_an_idle_connection_has_no_writer_until_it_sends() -> None:
    async with serve_in_background(Settings(port=0, web_root=None)) as gw:
        async with await Client.connect(gw.url) as client:
            assert client.hello is not None
            conn = next(iter(gw.gateway.connections))
            assert writers(conn) == []  # hello went out from the endpoint itself
            await client.send(Ping(id="p1"))
            assert isinstance(await client.reply("p1"), Pong)
            started = writers(conn)
            assert len(started) == 1
            await client.send(Ping(id="p2"))
            assert isinstance(await client.reply("p2"), Pong)
            assert writers(conn) == started  # the same writer, parked in between
        await gone(gw, started)


async def test_a_requested_close_reaches_an_idle_client() -> None:
    async with serve_in_background(Settings(port=0, web_root=None)) as gw:
        client = await Client.connect(gw.url)
        conn = next(iter(gw.gateway.connections))
        conn.request_close(4003, "server shutting down")  # no writer was ever started
        try:
            await asyncio.wait_for(client.recv(), 10)
            raise AssertionError("the socket stayed open")
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 4003
        await gone(gw, writers(conn))
