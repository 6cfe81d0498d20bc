"""The official ``openai`` SDK, an independent client, against the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from pipeline.simulator import Simulator

MODERATION: Any = {"model": "omni-moderation-latest"}
MESSAGES: Any = [{"role": "user", "content": "Tell me about harbors."}]


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=simulator.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


async def test_completion_with_moderation(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, moderation=MODERATION, n=2, seed=1
    )
    assert len(completion.choices) == 2
    assert completion.choices[0].message.content
    assert completion.moderation is not None
    assert completion.moderation.input.type == "moderation_results"
    assert completion.moderation.output.type == "moderation_results"
    assert len(completion.moderation.output.results) == 2
    assert completion.moderation.input.results[0].flagged is False
    assert completion.usage is not None and completion.usage.completion_tokens > 0


async def test_streaming_with_moderation_and_usage(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "[[sim: flag_output=illicit]] go"}],
        moderation=MODERATION,
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    moderation = None
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
        if chunk.moderation is not None:
            assert chunk.choices == []
            moderation = chunk.moderation
        if chunk.usage is not None:
            usage = chunk.usage
    assert text.startswith("Counterfeit")
    assert moderation is not None and moderation.output.type == "moderation_results"
    assert moderation.output.results[0].categories["illicit"] is True
    assert usage is not None and usage.completion_tokens == len(text.split(" "))


async def test_moderation_error_side_is_the_sdks_error_variant(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        moderation=MODERATION,
        extra_headers={"x-sim-fault": "moderation_error_input"},
    )
    assert completion.moderation is not None
    assert completion.moderation.input.type == "error"
    assert completion.moderation.input.code == "moderation_unavailable"


async def test_models_and_moderations(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    assert "omni-moderation-latest" in [model.id for model in models.data]
    moderation = await client.moderations.create(input=["fine", "csam"], model="omni-moderation-latest")
    assert [result.flagged for result in moderation.results] == [False, True]
    assert moderation.results[1].categories.sexual_minors is True


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ("429", openai.RateLimitError, "rate_limit_exceeded"),
        ("insufficient_quota", openai.RateLimitError, "insufficient_quota"),
        ("500", openai.InternalServerError, None),
        ("503", openai.InternalServerError, None),
        ("context_length_exceeded", openai.BadRequestError, "context_length_exceeded"),
    ],
)
async def test_faults_map_to_the_sdks_exceptions(
    client: AsyncOpenAI, fault: str, error: type[openai.APIStatusError], code: str | None
) -> None:
    with pytest.raises(error) as caught:
        await client.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"x-sim-fault": fault})
    assert caught.value.code == code
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")


async def test_wrong_key_is_an_authentication_error(make_simulator: Any) -> None:
    sim = await make_simulator(api_key="sk-right")
    async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-wrong", max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()


async def test_the_sdk_retries_through_transient_faults(simulator: Simulator) -> None:
    async with AsyncOpenAI(base_url=simulator.base_url, api_key="sk-test", max_retries=3) as sdk:
        completion = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[[sim: 429*2]] hi"}]
        )
    assert completion.choices[0].message.content
    assert simulator.stats().by_status == {429: 2, 200: 1}


async def test_a_mid_stream_error_event_raises_in_the_sdk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_headers={"x-sim-fault": "stream_error"}
    )
    received = []
    with pytest.raises(openai.APIError, match="server had an error"):
        async for chunk in stream:
            received.append(chunk)
    assert any(choice.delta.content for chunk in received for choice in chunk.choices)
