"""The reasoning tool asks a stronger model through our providers: the real OpenAI SDK in the
tool's subprocess against the fake OpenAI server on loopback."""

from __future__ import annotations

from tests.agent.fakes import ErrorReply, Stream, fake_llm_server, openai_stream

from .support import call, tool_client


async def test_reasoning_sends_the_question_to_the_configured_model() -> None:
    async with fake_llm_server() as llm:
        llm.add(Stream(openai_stream(text="The answer is 7.", reasoning="thinking hard")))
        env = {
            "OSPARK_REASONING_PROVIDER": "openai",
            "OSPARK_REASONING_MODEL": "strong-model",
            "OSPARK_REASONING_BASE_URL": llm.openai_url,
            "OSPARK_REASONING_API_KEY": "reasoning-key",
        }
        async with tool_client("reasoning", env) as client:
            answer = await call(client, "reasoning", question="What is 3+4?")
            llm.add(ErrorReply(401, {"error": {"message": "bad key", "type": "auth"}}))
            refused = await call(client, "reasoning", question="Again?")
    assert answer == ("The answer is 7.", False)  # the model's hidden reasoning is not returned
    request = llm.requests[0]
    assert request["model"] == "strong-model" and request["stream"] is True
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert request["messages"][1]["content"] == "What is 3+4?"
    assert "tools" not in request
    assert llm.headers[0]["authorization"] == "Bearer reasoning-key"
    text, is_error = refused
    assert is_error and "the reasoning model (strong-model) failed" in text
    assert "reasoning-key" not in text


async def test_a_missing_model_or_key_is_a_clear_error() -> None:
    async with tool_client("reasoning", {"OPENAI_API_KEY": ""}) as client:
        no_model = await call(client, "reasoning", question="x")
    async with tool_client("reasoning", {"OSPARK_REASONING_MODEL": "o3"}) as client:
        no_key = await call(client, "reasoning", question="x")
        empty = await call(client, "reasoning", question="  ")
    assert no_model[1] and "OSPARK_REASONING_MODEL is not set" in no_model[0]
    assert no_key[1] and "set OSPARK_REASONING_API_KEY or OPENAI_API_KEY" in no_key[0]
    assert empty[1] and "the question is empty" in empty[0]
