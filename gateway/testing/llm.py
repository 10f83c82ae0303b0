"""A fake OpenAI and Anthropic server on 127.0.0.1 that speaks their real streaming formats.

The real ``openai`` and ``anthropic`` SDKs (and so the gateway's providers) run against it end
to end, with no network and no key::

    async with fake_llm_server() as llm:
        llm.add(Stream(openai_stream(text="Hello there")))
        config = demo_config(**{"llm.provider": "openai", "llm.base_url": llm.openai_url})

One server answers both ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages``
(Anthropic). Each request gets the next scripted reply, in order, or, when the server was made
with ``respond``, whatever that function returns for the request's JSON body. A reply is either
a :class:`Stream` of server-sent events (made by :func:`openai_stream` or
:func:`anthropic_stream`, or any iterable or async iterable of SSE strings), optionally cut by an
abrupt disconnect or held open until the client leaves, or an :class:`ErrorReply` (an HTTP
error with a JSON body, such as :data:`OPENAI_CONTEXT_ERROR`). A request with no reply left
gets a 500.

What the clients did is recorded: every request body and its headers, ``streaming`` (set when
a held stream reached its hold), ``disconnected`` (set when a client left before a stream
ended) and the count of streams started and still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = [
    "ANTHROPIC_CONTEXT_ERROR",
    "OPENAI_CONTEXT_ERROR",
    "OPENAI_DONE",
    "ErrorReply",
    "FakeLLMServer",
    "Reply",
    "Responder",
    "Stream",
    "anthropic_stream",
    "fake_llm_server",
    "openai_chunk",
    "openai_stream",
    "openai_text_pieces",
    "sse",
]


@dataclass
class Stream:
    """A ``200 text/event-stream`` reply: each item of ``events`` is sent as one body chunk."""

    events: Iterable[str] | AsyncIterable[str]
    disconnect_after: int | None = None
    """Drop the connection (no end of stream) after this many events."""
    hang: bool = False
    """After the events, keep the stream open until the client goes away."""


@dataclass
class ErrorReply:
    """An HTTP error with a JSON body, as the provider sends it."""

    status: int
    body: dict[str, Any]


Reply = Stream | ErrorReply
Responder = Callable[[dict[str, Any]], Reply]
"""Makes the reply to one request from its JSON body."""


class _Abort(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-response."""


@dataclass
class FakeLLMServer:
    """The scripted server's state; made and served by :func:`fake_llm_server`."""

    respond: Responder | None = None
    """When set, answers every request (the queue of :meth:`add` is not used)."""
    responses: deque[Reply] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    streams_started: int = 0
    streams_open: int = 0
    port: int = 0

    def add(self, *responses: Reply) -> None:
        """Queue replies for the next requests, in order."""
        self.responses.extend(responses)

    @property
    def openai_url(self) -> str:
        """The ``base_url`` for the OpenAI SDK (and ``llm.base_url`` of an openai agent)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        """The ``base_url`` for the Anthropic SDK (and ``llm.base_url`` of an anthropic agent)."""
        return f"http://127.0.0.1:{self.port}"

    def routes(self) -> list[Route]:
        """The two provider endpoints, to mount in another Starlette app."""
        endpoint = _Endpoint(self)
        return [
            Route("/v1/chat/completions", endpoint, methods=["POST"]),
            Route("/v1/messages", endpoint, methods=["POST"]),
        ]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI handler of one request to either endpoint."""
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        self.requests.append(request)
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        if self.respond is not None:
            reply = self.respond(request)
        elif self.responses:
            reply = self.responses.popleft()
        else:
            reply = ErrorReply(500, {"error": "the fake server has no reply left"})
        if isinstance(reply, ErrorReply):
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(reply.body).encode()})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        self.streams_started += 1
        self.streams_open += 1
        try:
            client_left = await self._stream(reply, receive, send)
        finally:
            self.streams_open -= 1
        if client_left:  # set last, so that a test woken by it sees the counts settled
            self.disconnected.set()

    async def _stream(self, reply: Stream, receive: Receive, send: Send) -> bool:
        """Send the stream; whether the client left before its end (or during a hang)."""
        # The body is sent while another task listens for the client leaving: a stream that
        # never ends on its own (hang, or an endless async iterable) stops when it does.
        gone = asyncio.Event()
        complete = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def body() -> None:
            nonlocal complete
            sent = 0
            async with contextlib.aclosing(_aiter(reply.events)) as events:
                async for event in events:
                    if reply.disconnect_after is not None and sent == reply.disconnect_after:
                        raise _Abort("scripted mid-stream disconnect")
                    await send(
                        {"type": "http.response.body", "body": event.encode(), "more_body": True}
                    )
                    sent += 1
            if reply.hang:
                self.streaming.set()
                await gone.wait()
                return
            complete = True  # from here on, the end of the request is not the client leaving
            await send({"type": "http.response.body", "body": b""})

        watcher = asyncio.create_task(watch())
        sender = asyncio.create_task(body())
        try:
            await asyncio.wait({watcher, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender.done() or complete:
                await sender  # re-raises _Abort, which makes uvicorn drop the connection
                return reply.hang
            sender.cancel()  # the client left before the end of the stream
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            return True
        finally:
            for task in (watcher, sender):
                task.cancel()
            await asyncio.gather(watcher, sender, return_exceptions=True)


async def _aiter(events: Iterable[str] | AsyncIterable[str]) -> AsyncGenerator[str, None]:
    """The events one by one; an async generator given as events is closed with the stream."""
    if isinstance(events, AsyncIterable):
        iterator = aiter(events)
        try:
            async for event in iterator:
                yield event
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
    else:
        for event in events:
            yield event


class _Endpoint:
    """A class instance is routed by Starlette as a raw ASGI app, not as a request handler."""

    def __init__(self, server: FakeLLMServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.server.handle(scope, receive, send)


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # leave the signal handlers of the process (pytest's) alone


@contextlib.asynccontextmanager
async def fake_llm_server(respond: Responder | None = None) -> AsyncIterator[FakeLLMServer]:
    """Serve a :class:`FakeLLMServer` on an ephemeral port of 127.0.0.1 for the block.

    Requests are accepted as soon as the block starts (the socket listens before uvicorn runs),
    so there is nothing to wait for.
    """
    fake = FakeLLMServer(respond=respond)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    fake.port = sock.getsockname()[1]
    config = uvicorn.Config(
        Starlette(routes=fake.routes()),
        log_level="critical",
        lifespan="off",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = _Uvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield fake
    finally:
        server.should_exit = True
        await task
        sock.close()


# --- OpenAI Chat Completions stream format ------------------------------------------------------

OPENAI_DONE = "data: [DONE]\n\n"


def openai_chunk(
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    usage: tuple[int, int] | None = None,
) -> str:
    """One ``chat.completion.chunk`` event: a delta of choice 0 and/or its finish reason, or
    (with neither) the final usage chunk with no choices."""
    choices: list[dict[str, Any]] = []
    if delta is not None or finish is not None:
        choices.append(
            {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
        )
    chunk: dict[str, Any] = {
        "id": "chatcmpl-fake123",
        "object": "chat.completion.chunk",
        "created": 1_760_000_000,
        "model": "gpt-fake",
        "system_fingerprint": "fp_fake",
        "choices": choices,
    }
    if usage is not None:
        prompt, completion = usage
        chunk["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return f"data: {json.dumps(chunk)}\n\n"


def openai_stream(
    text: str = "",
    tool_calls: Sequence[tuple[str, str, str]] = (),
    reasoning: str = "",
    usage: tuple[int, int] = (100, 20),
) -> list[str]:
    """A complete streamed completion: ``reasoning`` (as ``reasoning_content``, the field
    OpenAI-compatible servers use) and ``text`` word by word, then ``(call_id, name,
    arguments_json)`` tool calls with their arguments split into several fragments, the finish
    reason, the usage and ``[DONE]``."""
    events = [openai_chunk({"role": "assistant", "content": "", "refusal": None})]
    for word in reasoning.split(" ") if reasoning else ():
        events.append(openai_chunk({"reasoning_content": word + " "}))
    for word in text.split(" ") if text else ():
        events.append(openai_chunk({"content": word + " "}))
    for index, (call_id, name, arguments) in enumerate(tool_calls):
        start = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events.append(openai_chunk({"tool_calls": [start]}))
        for piece in _thirds(arguments):
            events.append(
                openai_chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            )
    events.append(openai_chunk({}, "tool_calls" if tool_calls else "stop"))
    events.append(openai_chunk(usage=usage))
    events.append(OPENAI_DONE)
    return events


def openai_text_pieces(pieces: Sequence[str], usage: tuple[int, int] = (100, 20)) -> list[str]:
    """A streamed text completion sent in exactly these pieces (to cut a tag or a word where a
    test wants it cut)."""
    events = [openai_chunk({"role": "assistant", "content": "", "refusal": None})]
    events.extend(openai_chunk({"content": piece}) for piece in pieces)
    events.append(openai_chunk({}, "stop"))
    events.append(openai_chunk(usage=usage))
    events.append(OPENAI_DONE)
    return events


def _thirds(text: str) -> tuple[str, str, str]:
    third = max(1, len(text) // 3)
    return text[:third], text[third : 2 * third], text[2 * third :]


OPENAI_CONTEXT_ERROR = ErrorReply(
    400,
    {
        "error": {
            "message": "This model's maximum context length is 128000 tokens. However, your "
            "messages resulted in 131072 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
)
"""What OpenAI answers when the prompt does not fit the model's context."""


# --- Anthropic Messages stream format -----------------------------------------------------------


def sse(event: str, data: dict[str, Any]) -> str:
    """One named server-sent event with a JSON payload (Anthropic's framing)."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _block(index: int, block: dict[str, Any], deltas: Iterable[dict[str, Any]]) -> list[str]:
    events = [
        sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )
    ]
    for delta in deltas:
        events.append(
            sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
    events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def anthropic_stream(
    text: str = "",
    tool_calls: Sequence[tuple[str, str, str]] = (),
    thinking: str = "",
    usage: tuple[int, int] = (100, 20),
) -> list[str]:
    """A complete streamed message: a ``thinking`` block (with its signature), a ``text``
    block, word by word, then ``(call_id, name, arguments_json)`` ``tool_use`` blocks with their
    input JSON split into several fragments, the stop reason and the usage."""
    message: dict[str, Any] = {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": 1},
    }
    events = [sse("message_start", {"type": "message_start", "message": message})]
    events.append(sse("ping", {"type": "ping"}))
    index = 0
    if thinking:
        deltas = [{"type": "thinking_delta", "thinking": w + " "} for w in thinking.split(" ")]
        deltas.append({"type": "signature_delta", "signature": "c2lnbmF0dXJl"})
        events += _block(index, {"type": "thinking", "thinking": "", "signature": ""}, deltas)
        index += 1
    if text:
        deltas = [{"type": "text_delta", "text": w + " "} for w in text.split(" ")]
        events += _block(index, {"type": "text", "text": ""}, deltas)
        index += 1
    for call_id, name, arguments in tool_calls:
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in _thirds(arguments)]
        events += _block(index, block, deltas)
        index += 1
    stop = "tool_use" if tool_calls else "end_turn"
    events.append(
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            },
        )
    )
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events


ANTHROPIC_CONTEXT_ERROR = ErrorReply(
    400,
    {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 208310 tokens > 200000 maximum",
        },
        "request_id": "req_fake01",
    },
)
"""What Anthropic answers when the prompt does not fit the model's context."""
