"""ToolManager: every tool of a task, over MCP, by (server, tool, arguments).

One ToolManager serves one task (the main agent and its sub-agents share it). Stdio servers are
started lazily, when their tools are first listed, and kept for the task. Each stdio server is
owned by a background task of its own (its *host*), which starts it, holds its MCP client (the
client's anyio task group lives in the host) and, when asked, shuts it down: the SDK closes the
server's stdin, waits up to its grace period (2 s) for the process to exit, then terminates its
process group. The task's calls go through the client from the task itself. The in-process
built-ins are stateless, so every task of an event loop shares one MCP client per built-in, owned
by a background task of that loop: a session set-up per task would cost five times the call
itself, and thousands of tasks reaching their first tool call together would stall the loop.

Closing: :meth:`ToolManager.aclose` stops the task's stdio servers and waits until their
processes have exited; :meth:`ToolManager.close` only asks the hosts to stop and returns at
once, so a cancelled task ends as soon as its work has stopped while the shutdowns finish in the
background. :func:`stop_tool_servers` waits for every shutdown still under way (bounded): the
gateway awaits it when it shuts down, and a program that cancels runs must await it before its
event loop closes, so that no server process outlives it.

Cancellation: cancelling a running :meth:`call_tool` cancels the MCP request; for a stdio server
the SDK sends ``notifications/cancelled`` before the ``CancelledError`` propagates (and before
the server's stdin is closed). A per-call timeout also sends the cancel and becomes a
:class:`ToolError`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters

from ..config import ToolServerConfig
from ..errors import ToolError
from ..files import PATH_LISTS
from .builtin import BUILTIN_LISTINGS, builtin_server

STARTUP_TIMEOUT_S = 30.0  # starting a stdio server and listing its tools
STOP_TIMEOUT_S = 10.0
"""How long :func:`stop_tool_servers` waits by default: the SDK's own shutdown is bounded by
about 6.5 s (flush 0.5 s, stdin closed then 2 s, SIGTERM then 2 s, SIGKILL then 2 s)."""

log = logging.getLogger("gateway.agent.tools")


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """One tool of one server."""

    server: str
    name: str
    description: str
    parameters: dict[str, Any]


def _infos(server: str, tools: Iterable[types.Tool]) -> list[ToolInfo]:
    return [
        ToolInfo(server, t.name, t.description or "", dict(t.input_schema or {"type": "object"}))
        for t in tools
    ]


_BUILTIN_INFOS = {name: _infos(name, tools) for name, tools in BUILTIN_LISTINGS.items()}


def _result_text(result: types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content]")
    if not parts and result.structured_content is not None:
        parts.append(str(result.structured_content))
    return "\n".join(parts)


def _first_leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    """The first real error inside (possibly nested) exception groups."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Future[Client]]]
_SHARED = weakref.WeakKeyDictionary()
_HOSTS: set[asyncio.Task[None]] = set()


async def _host_builtin(name: str, ready: asyncio.Future[Client]) -> None:
    """Own the loop's client of a built-in server until the loop shuts down (cancels it)."""
    try:
        async with Client(builtin_server(name)) as client:
            # Listed once here, so that no call has to list the tools again to check its
            # result against the tool's output schema (the client's cache is per session).
            await client.list_tools()
            ready.set_result(client)
            await asyncio.get_running_loop().create_future()  # forever
    except BaseException as exc:
        _SHARED.get(asyncio.get_running_loop(), {}).pop(name, None)
        if not ready.done():
            ready.set_exception(
                exc if isinstance(exc, Exception) else RuntimeError("built-in tools stopped")
            )
            ready.exception()  # retrieved here; awaiting callers get it too
        if not isinstance(exc, asyncio.CancelledError | GeneratorExit):
            raise


async def shared_builtin_client(name: str) -> Client:
    """This event loop's MCP client of the built-in server ``name`` (started on first use)."""
    loop = asyncio.get_running_loop()
    per_loop = _SHARED.setdefault(loop, {})
    ready = per_loop.get(name)
    if ready is None:
        ready = per_loop[name] = loop.create_future()
        host = loop.create_task(_host_builtin(name, ready), name=f"builtin-tools:{name}")
        _HOSTS.add(host)
        host.add_done_callback(_HOSTS.discard)
    return await asyncio.shield(ready)


class _StdioHost:
    """The owner of one stdio server: a background task that starts it, holds its MCP client
    until :meth:`stop` is called, then shuts it down (the SDK's bounded sequence)."""

    __slots__ = ("_stop", "name", "ready", "task")

    def __init__(self, name: str, params: StdioServerParameters) -> None:
        loop = asyncio.get_running_loop()
        self.name = name
        self.ready: asyncio.Future[Client] = loop.create_future()
        self._stop = asyncio.Event()
        self.task = loop.create_task(self._own(Client(params)), name=f"tool-server:{name}")
        _STDIO_HOSTS.add(self)
        self.task.add_done_callback(self._done)

    def stop(self) -> None:
        """Shut the server down in the background. Idempotent; never waits."""
        self._stop.set()

    async def _own(self, client: Client) -> None:
        async with AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    await stack.enter_async_context(client)
            except asyncio.CancelledError:
                self._fail(RuntimeError(f"server {self.name!r} was stopped while starting"))
                raise
            except Exception as exc:
                self._fail(exc)
                return
            self.ready.set_result(client)
            await self._stop.wait()
        # Leaving the stack ran the SDK's shutdown: the process has exited (or was killed).

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved here: the task that wanted it may be gone

    def _done(self, task: asyncio.Task[None]) -> None:
        _STDIO_HOSTS.discard(self)
        self._fail(RuntimeError(f"server {self.name!r} stopped"))
        if not task.cancelled() and task.exception() is not None:
            log.warning("stopping the tool server %r failed", self.name, exc_info=task.exception())


_STDIO_HOSTS: set[_StdioHost] = set()
"""Every stdio server of this process whose host has not ended (running or shutting down)."""


async def stop_tool_servers(deadline: float = STOP_TIMEOUT_S) -> int:
    """Stop every stdio tool server of this event loop and wait until their processes have
    exited, at most ``deadline`` seconds (hosts still running then are cancelled). Returns how
    many were still running or shutting down. The gateway calls it when it shuts down; a
    program that cancels runs itself calls it before its event loop closes."""
    loop = asyncio.get_running_loop()
    hosts = [h for h in _STDIO_HOSTS if h.task.get_loop() is loop and not h.task.done()]
    for host in hosts:
        host.stop()
    if not hosts:
        return 0
    _, late = await asyncio.wait([h.task for h in hosts], timeout=deadline)
    if late:
        log.error("%d tool server(s) did not stop in %gs; abandoning them", len(late), deadline)
        for task in late:
            task.cancel()
        await asyncio.wait(late, timeout=1.0)
    return len(hosts)


class ToolManager:
    """Lists and calls the tools of the configured MCP servers for one task."""

    def __init__(
        self, servers: Mapping[str, ToolServerConfig], task_env: Mapping[str, str] | None = None
    ) -> None:
        self._servers = servers
        self._task_env = dict(task_env or {})
        self._hosts: dict[str, _StdioHost] = {}
        self._clients: dict[str, Client] = {}
        self._listings: dict[str, list[ToolInfo]] = {}
        self._closed = False

    def server_config(self, server: str) -> ToolServerConfig:
        try:
            return self._servers[server]
        except KeyError:
            raise ToolError(f"unknown tool server {server!r}", server=server, tool="") from None

    async def _client(self, server: str) -> Client:
        client = self._clients.get(server)
        if client is not None:
            return client
        if self._closed:
            raise ToolError("the tool manager is closed", server=server, tool="")
        cfg = self.server_config(server)
        if cfg.builtin is not None:
            client = await shared_builtin_client(cfg.builtin)
            self._clients[server] = client
            return client
        assert cfg.command is not None
        host = self._hosts.get(server)
        if host is None:
            params = StdioServerParameters(
                command=cfg.command, args=list(cfg.args), env=self._env(cfg.env)
            )
            host = self._hosts[server] = _StdioHost(server, params)
        try:
            # Shielded: a cancelled caller leaves the start to the host (stopped by close()).
            client = await asyncio.shield(host.ready)
        except TimeoutError:
            self._forget(server, host)
            raise ToolError(
                f"server {server!r} did not start in time", server=server, tool=""
            ) from None
        except (OSError, MCPError, RuntimeError) as exc:
            self._forget(server, host)
            raise ToolError(
                f"cannot start server {server!r}: {exc}", server=server, tool=""
            ) from exc
        except ExceptionGroup as group:  # the SDK's task group: e.g. the process exited at once
            self._forget(server, host)
            raise ToolError(
                f"cannot start server {server!r}: {_first_leaf(group)}", server=server, tool=""
            ) from group
        self._clients[server] = client
        return client

    def _forget(self, server: str, host: _StdioHost) -> None:
        """A server that failed to start: the next use starts it again."""
        if self._hosts.get(server) is host:
            del self._hosts[server]
        host.stop()

    def _env(self, configured: Mapping[str, str]) -> dict[str, str]:
        """A stdio server's environment: its configured one plus the task's (see
        :func:`gateway.agent.files.task_env`); path lists are joined, not replaced."""
        env = dict(configured)
        for key, value in self._task_env.items():
            if key in PATH_LISTS:
                base = env.get(key) or os.environ.get(key) or os.getcwd()
                env[key] = os.pathsep.join([base, value])
            else:
                env[key] = value
        return env

    async def list_tools(self, server: str) -> list[ToolInfo]:
        """The tool definitions of one server; listed once per task (built-ins once per process)."""
        cfg = self.server_config(server)
        if cfg.builtin is not None:
            return _BUILTIN_INFOS[cfg.builtin]
        listing = self._listings.get(server)
        if listing is None:
            client = await self._client(server)
            tools: list[types.Tool] = []
            cursor: str | None = None
            try:
                async with asyncio.timeout(STARTUP_TIMEOUT_S):
                    while True:
                        page = await client.list_tools(cursor=cursor)
                        tools.extend(page.tools)
                        cursor = page.next_cursor
                        if not cursor:
                            break
            except TimeoutError:
                raise ToolError("listing tools timed out", server=server, tool="") from None
            except MCPError as exc:
                raise ToolError(f"cannot list tools: {exc}", server=server, tool="") from exc
            listing = self._listings[server] = _infos(server, tools)
        return listing

    async def call_tool(self, server: str, tool: str, arguments: dict[str, Any]) -> str:
        """Run one tool and return its text, or raise :class:`ToolError` (timeout, tool error,
        server failure). ``CancelledError`` propagates after the server was told to cancel."""
        cfg = self.server_config(server)
        client = await self._client(server)
        try:
            result = await client.call_tool(tool, arguments, read_timeout_seconds=cfg.timeout_s)
        except MCPError as exc:
            if exc.code == types.REQUEST_TIMEOUT:
                message = f"tool call timed out after {cfg.timeout_s:g}s"
            else:
                message = exc.message
            raise ToolError(message, server=server, tool=tool) from exc
        except (OSError, RuntimeError) as exc:
            raise ToolError(f"server failure: {exc}", server=server, tool=tool) from exc
        except ExceptionGroup as group:
            raise ToolError(
                f"server failure: {_first_leaf(group)}", server=server, tool=tool
            ) from group
        text = _result_text(result)
        if result.is_error:
            raise ToolError(text or "the tool reported an error", server=server, tool=tool)
        return text

    def close(self) -> None:
        """Stop every stdio server of this manager in the background (each host shuts its
        server down; :func:`stop_tool_servers` waits for them) and refuse further calls.
        Idempotent; never waits."""
        self._closed = True
        self._clients.clear()
        for host in self._hosts.values():
            host.stop()

    async def aclose(self) -> None:
        """Stop every stdio server of this manager and wait until their processes have
        exited. Idempotent."""
        self.close()
        tasks = [host.task for host in self._hosts.values()]
        if tasks:
            await asyncio.wait(tasks)
