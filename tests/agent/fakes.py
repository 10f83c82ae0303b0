"""Fake OpenAI and Anthropic servers: Starlette + uvicorn on 127.0.0.1, real SSE formats.

Each server answers POSTs with scripted responses, in order. A response is a list of SSE event
strings (``Stream``), optionally cut by an abrupt disconnect after some events or held open until
the client goes away (``hang``), or an HTTP error with a JSON body (``ErrorReply``). Requests are
recorded, and ``disconnected`` is set when a client closes a held stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send


@dataclass
class Stream:
    events: list[str]
    disconnect_after: int | None = None  # drop the connection after this many events
    hang: bool = False  # after the events, keep the stream open until the client leaves


@dataclass
class ErrorReply:
    status: int
    body: dict[str, Any]


class _Abort(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-response."""


@dataclass
class FakeLLMServer:
    responses: deque[Stream | ErrorReply] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def add(self, *responses: Stream | ErrorReply) -> None:
        self.responses.extend(responses)

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append(json.loads(body))
        self.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        reply = self.responses.popleft() if self.responses else ErrorReply(500, {"error": "none"})
        if isinstance(reply, ErrorReply):
            payload = json.dumps(reply.body).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": reply.status,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": payload})
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
        for i, event in enumerate(reply.events):
            if reply.disconnect_after is not None and i == reply.disconnect_after:
                raise _Abort("scripted mid-stream disconnect")
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        if reply.hang:
            self.streaming.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            return
        await send({"type": "http.response.body", "body": b""})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield  # leave pytest's signal handlers alone


@contextlib.asynccontextmanager
async def fake_llm_server():  # type: ignore[no-untyped-def]
    fake = FakeLLMServer()

    class Endpoint:  # a class instance is routed as a raw ASGI app, not a request handler
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await fake._app(scope, receive, send)

    endpoint = Endpoint()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", endpoint, methods=["POST"]),
            Route("/v1/messages", endpoint, methods=["POST"]),
        ]
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)  # connections queue until uvicorn accepts: no need to wait for startup
    fake.port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="critical",
        lifespan="off",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield fake
    finally:
        server.should_exit = True
        await task
        sock.close()


# --- OpenAI Chat Completions stream format ------------------------------------------------------


def _openai_chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-fake123",
        "object": "chat.completion.chunk",
        "created": 1_760_000_000,
        "model": "gpt-fake",
        "system_fingerprint": "fp_fake",
        "choices": choices,
    }
    if usage is not None:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk)}\n\n"


def _choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def openai_stream(
    text: str = "",
    tool_calls: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    reasoning: str = "",
    usage: tuple[int, int] = (100, 20),
) -> list[str]:
    """A complete streamed completion; tool arguments are split into several fragments."""
    events = [_openai_chunk([_choice({"role": "assistant", "content": "", "refusal": None})])]
    for word in reasoning.split(" ") if reasoning else ():
        events.append(_openai_chunk([_choice({"reasoning_content": word + " "})]))
    for word in text.split(" ") if text else ():
        events.append(_openai_chunk([_choice({"content": word + " "})]))
    for index, (call_id, name, arguments) in enumerate(tool_calls):
        start = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        events.append(_openai_chunk([_choice({"tool_calls": [start]})]))
        third = max(1, len(arguments) // 3)
        for piece in (arguments[:third], arguments[third : 2 * third], arguments[2 * third :]):
            fragment = {"index": index, "function": {"arguments": piece}}
            events.append(_openai_chunk([_choice({"tool_calls": [fragment]})]))
    events.append(_openai_chunk([_choice({}, "tool_calls" if tool_calls else "stop")]))
    prompt, completion = usage
    events.append(
        _openai_chunk(
            [],
            {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        )
    )
    events.append("data: [DONE]\n\n")
    return events


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


# --- Anthropic Messages stream format -----------------------------------------------------------


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def anthropic_stream(
    text: str = "",
    tool_calls: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    thinking: str = "",
    usage: tuple[int, int] = (100, 20),
) -> list[str]:
    message = {
        "id": "msg_fake01",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": 1},
    }
    events = [_sse("message_start", {"type": "message_start", "message": message})]
    events.append(_sse("ping", {"type": "ping"}))
    index = 0
    if thinking:
        block = {"type": "thinking", "thinking": "", "signature": ""}
        events.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        for word in thinking.split(" "):
            delta = {"type": "thinking_delta", "thinking": word + " "}
            events.append(
                _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        delta = {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}
        events.append(
            _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    if text:
        block = {"type": "text", "text": ""}
        events.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        for word in text.split(" "):
            delta = {"type": "text_delta", "text": word + " "}
            events.append(
                _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    for call_id, name, arguments in tool_calls:
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        events.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        third = max(1, len(arguments) // 3)
        for piece in (arguments[:third], arguments[third : 2 * third], arguments[2 * third :]):
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.append(
                _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1
    stop = "tool_use" if tool_calls else "end_turn"
    events.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            },
        )
    )
    events.append(_sse("message_stop", {"type": "message_stop"}))
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


def openai_text_pieces(pieces: list[str], usage: tuple[int, int] = (100, 20)) -> list[str]:
    """A streamed text completion sent in exactly these pieces (to cut tags mid-way)."""
    events = [_openai_chunk([_choice({"role": "assistant", "content": "", "refusal": None})])]
    events.extend(_openai_chunk([_choice({"content": piece})]) for piece in pieces)
    events.append(_openai_chunk([_choice({}, "stop")]))
    prompt, completion = usage
    events.append(
        _openai_chunk(
            [],
            {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        )
    )
    events.append("data: [DONE]\n\n")
    return events
