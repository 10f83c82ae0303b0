"""The fake LLM server of gateway.testing, through the real openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from gateway.testing import (
    ANTHROPIC_CONTEXT_ERROR,
    OPENAI_CONTEXT_ERROR,
    Reply,
    Stream,
    anthropic_stream,
    fake_llm_server,
    openai_chunk,
    openai_stream,
    openai_text_pieces,
)

CALL = ("call_1", "calculator__calculate", json.dumps({"expression": "17*23+4"}))


def openai_sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="test-key", max_retries=0)


def anthropic_sdk(url: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key="test-key", max_retries=0)


async def test_openai_sdk_reads_the_scripted_stream_and_the_request_is_recorded() -> None:
    async with fake_llm_server() as llm, openai_sdk(llm.openai_url) as sdk:
        llm.add(Stream(openai_stream(text="Hello there", tool_calls=[CALL], usage=(7, 3))))
        stream = await sdk.chat.completions.create(
            model="gpt-fake",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, arguments, usage = "", "", None
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    for call in choice.delta.tool_calls or ():
                        arguments += (call.function and call.function.arguments) or ""
                usage = chunk.usage or usage
    assert text == "Hello there "
    assert json.loads(arguments) == {"expression": "17*23+4"}
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 3)
    assert llm.requests[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert llm.headers[0]["authorization"] == "Bearer test-key"
    assert (llm.streams_started, llm.streams_open) == (1, 0)


async def test_anthropic_sdk_reads_the_scripted_stream() -> None:
    async with fake_llm_server() as llm, anthropic_sdk(llm.anthropic_url) as sdk:
        llm.add(Stream(anthropic_stream(text="Hi you", thinking="hmm", tool_calls=[CALL])))
        async with sdk.messages.stream(
            model="claude-fake", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            message = await stream.get_final_message()
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    text, call = message.content[1], message.content[2]
    assert text.type == "text" and text.text == "Hi you "
    assert call.type == "tool_use" and call.input == {"expression": "17*23+4"}
    assert message.stop_reason == "tool_use"


async def test_error_replies_and_an_empty_queue_are_http_errors() -> None:
    async with (
        fake_llm_server() as llm,
        openai_sdk(llm.openai_url) as oai,
        anthropic_sdk(llm.anthropic_url) as claude,
    ):
        llm.add(OPENAI_CONTEXT_ERROR, ANTHROPIC_CONTEXT_ERROR)
        with pytest.raises(openai.BadRequestError) as error:
            await oai.chat.completions.create(model="m", messages=[], stream=True)
        assert error.value.code == "context_length_exceeded"
        with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
            await claude.messages.create(model="m", max_tokens=1, messages=[])
        with pytest.raises(openai.InternalServerError):
            await oai.chat.completions.create(model="m", messages=[], stream=True)
    assert len(llm.requests) == 3


async def test_text_pieces_arrive_as_cut() -> None:
    async with fake_llm_server() as llm, openai_sdk(llm.openai_url) as sdk:
        llm.add(Stream(openai_text_pieces(["<thi", "nk>a", "</think>b"])))
        stream = await sdk.chat.completions.create(model="m", messages=[], stream=True)
        async with stream:
            pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert pieces == ["", "<thi", "nk>a", "</think>b", None]


async def test_respond_answers_each_request_from_its_body() -> None:
    def respond(request: dict[str, Any]) -> Reply:
        return Stream(openai_stream(text=f"you said {request['messages'][-1]['content']}"))

    async with fake_llm_server(respond) as llm, openai_sdk(llm.openai_url) as sdk:
        for word in ("one", "two"):
            stream = await sdk.chat.completions.create(
                model="m", messages=[{"role": "user", "content": word}], stream=True
            )
            async with stream:
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
            assert text == f"you said {word} "


async def test_an_endless_stream_stops_when_the_client_leaves() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[str]:
        try:
            yield openai_chunk({"role": "assistant", "content": ""})
            while True:
                yield openai_chunk({"content": "word "})
                await asyncio.sleep(0)
        finally:
            closed.set()

    async with fake_llm_server() as llm, openai_sdk(llm.openai_url) as sdk:
        llm.add(Stream(endless()))
        stream = await sdk.chat.completions.create(model="m", messages=[], stream=True)
        async with stream:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
        await asyncio.wait_for(llm.disconnected.wait(), 10)
        await asyncio.wait_for(closed.wait(), 10)  # the generator was closed with the response
        assert (llm.streams_started, llm.streams_open) == (1, 0)


async def test_hang_holds_the_stream_and_disconnect_after_cuts_it() -> None:
    async with fake_llm_server() as llm, openai_sdk(llm.openai_url) as sdk:
        llm.add(
            Stream(openai_stream(text="a b c"), hang=True),
            Stream(openai_stream(text="a b c d e"), disconnect_after=3),
        )
        received: list[Any] = []
        stream = await sdk.chat.completions.create(model="m", messages=[], stream=True)
        async with stream:
            reading = asyncio.create_task(_collect(stream, received))
            await asyncio.wait_for(llm.streaming.wait(), 10)
            assert not reading.done() and not llm.disconnected.is_set()
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
        await asyncio.wait_for(llm.disconnected.wait(), 10)
        assert llm.streams_open == 0
        stream = await sdk.chat.completions.create(model="m", messages=[], stream=True)
        async with stream:
            with pytest.raises(openai.APIError):
                await _collect(stream, received)


async def _collect(stream: Any, into: list[Any]) -> None:
    async for chunk in stream:
        into.append(chunk)
