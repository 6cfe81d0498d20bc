"""Answers the real API may send and a friendly double never would, over real HTTP: values added tomorrow,
a stream with a second moderation chunk, fewer output moderation results than choices."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from openai import AsyncOpenAI

from pipeline.simulator import Simulator
from schemas.chat import ChatCompletion, ChatCompletionChunk, ModerationError, ModerationResults

AUTH = {"Authorization": "Bearer sk-test"}
MODERATION = {"model": "omni-moderation-latest"}
TOMORROW = "[[sim: service_tier=priority_plus, finish_reason=safety_stop, annotation=file_citation]]"


def chat_body(content: str = "Tell me about rivers.", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "moderation": MODERATION,
        **extra,
    }


async def post(sim: Simulator, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        response = await client.post("/chat/completions", json=body, headers={**AUTH, **(headers or {})})
    assert response.status_code == 200, response.text
    return response


async def completion(sim: Simulator, body: dict[str, Any], headers: dict[str, str] | None = None) -> ChatCompletion:
    return msgspec.json.decode((await post(sim, body, headers)).content, type=ChatCompletion)


async def chunks(sim: Simulator, body: dict[str, Any]) -> list[ChatCompletionChunk]:
    text = (await post(sim, {**body, "stream": True})).text
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [msgspec.json.decode(event, type=ChatCompletionChunk) for event in events[:-1]]


async def test_values_the_api_may_add_appear_in_a_json_answer(simulator: Simulator) -> None:
    answer = await completion(simulator, chat_body(f"Hello {TOMORROW}", n=2))
    assert answer.service_tier == "priority_plus"
    assert [choice.finish_reason for choice in answer.choices] == ["safety_stop", "safety_stop"]
    first = answer.choices[0].message
    assert first.content and first.annotations is not None
    ((kind, annotation),) = [(a["type"], a["file_citation"]) for a in first.annotations]
    assert kind == "file_citation" and annotation["end_index"] == len(first.content)
    assert answer.choices[1].message.annotations is None


async def test_values_the_api_may_add_appear_in_every_chunk_of_a_stream(simulator: Simulator) -> None:
    streamed = await chunks(simulator, chat_body(f"Hello {TOMORROW}"))
    assert {chunk.service_tier for chunk in streamed} == {"priority_plus"}
    finishes = [choice.finish_reason for chunk in streamed for choice in chunk.choices if choice.finish_reason]
    assert finishes == ["safety_stop"]


async def test_the_official_sdk_passes_tomorrows_values_through(simulator: Simulator) -> None:
    async with AsyncOpenAI(base_url=simulator.base_url, api_key="sk-test", max_retries=0) as sdk:
        answer = await sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"Hi {TOMORROW}"}]
        )
    assert (answer.service_tier, answer.choices[0].finish_reason) == ("priority_plus", "safety_stop")
    annotations = answer.choices[0].message.annotations
    assert annotations is not None and annotations[0].type == "file_citation"


async def test_a_known_finish_reason_can_be_asked_for_and_keeps_clean_moderation(simulator: Simulator) -> None:
    answer = await completion(simulator, chat_body("Hello [[sim: finish_reason=content_filter]]"))
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.moderation is not None and isinstance(answer.moderation.output, ModerationResults)
    assert not any(result.flagged for result in answer.moderation.output.results)


async def test_a_second_moderation_chunk_says_clean_after_a_flagged_one(simulator: Simulator) -> None:
    streamed = await chunks(simulator, chat_body("Write [[sim: flag_output, moderation_again_clean]]"))
    first, second = [chunk.moderation for chunk in streamed if chunk.moderation is not None]
    assert isinstance(first.output, ModerationResults) and first.output.results[0].flagged
    assert isinstance(second.output, ModerationResults) and not second.output.results[0].flagged
    assert isinstance(second.input, ModerationResults) and not second.input.results[0].flagged


async def test_a_second_moderation_chunk_says_error_after_a_clean_one(simulator: Simulator) -> None:
    streamed = await chunks(simulator, chat_body("Write [[sim: moderation_again_error]]", n=2))
    first, second = [chunk.moderation for chunk in streamed if chunk.moderation is not None]
    assert isinstance(first.output, ModerationResults) and len(first.output.results) == 2
    assert isinstance(second.output, ModerationError) and second.input == first.input


async def test_the_second_chunk_comes_after_the_content_even_when_the_first_comes_before(
    simulator: Simulator,
) -> None:
    streamed = await chunks(simulator, chat_body("Write [[sim: moderation_before_content, moderation_again_clean]]"))
    positions = [i for i, chunk in enumerate(streamed) if chunk.moderation is not None]
    last_content = max(i for i, chunk in enumerate(streamed) if any(c.delta.content for c in chunk.choices))
    assert positions[0] == 0 and positions[1] > last_content


async def test_a_json_answer_has_one_moderation_whatever_the_stream_faults(simulator: Simulator) -> None:
    answer = await completion(simulator, chat_body("Write [[sim: flag_output, moderation_again_clean]]"))
    assert answer.moderation is not None and isinstance(answer.moderation.output, ModerationResults)
    assert answer.moderation.output.results[0].flagged


@pytest.mark.parametrize("stream", [False, True])
async def test_fewer_output_results_than_choices(simulator: Simulator, stream: bool) -> None:
    body = chat_body("Write [[sim: moderation_results_short]]", n=3)
    if stream:
        moderation = next(chunk.moderation for chunk in await chunks(simulator, body) if chunk.moderation)
    else:
        answer = await completion(simulator, body)
        assert len(answer.choices) == 3
        moderation = answer.moderation
    assert moderation is not None and isinstance(moderation.output, ModerationResults)
    assert len(moderation.output.results) == 2
    assert isinstance(moderation.input, ModerationResults) and len(moderation.input.results) == 1


async def test_answer_shaping_directives_apply_from_the_header_too(simulator: Simulator) -> None:
    answer = await completion(simulator, chat_body(), {"x-sim-fault": "flag_output=hate, service_tier=flex"})
    assert answer.service_tier == "flex"
    assert answer.moderation is not None and isinstance(answer.moderation.output, ModerationResults)
    assert answer.moderation.output.results[0].categories["hate"]
