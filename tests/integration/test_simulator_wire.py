"""Every body the simulator sends decodes with ``schemas/``; determinism; moderation and the block policy."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from pipeline.simulator import Simulator
from pipeline.simulator.classifier import MARKERS
from schemas.chat import ChatCompletion, ChatCompletionChunk, ErrorBody, ModerationError, ModerationResults
from schemas.models import ModelList
from schemas.moderations import OMNI_CATEGORIES, ModerationCreateResponse

AUTH = {"Authorization": "Bearer sk-test"}
MODERATION = {"model": "omni-moderation-latest"}


def chat_body(content: Any = "Tell me about rivers.", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


async def post(sim: Simulator, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        return await client.post("/chat/completions", json=body, headers={**AUTH, **(headers or {})})


def sse_chunks(text: str) -> list[ChatCompletionChunk]:
    datas = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [msgspec.json.decode(data, type=ChatCompletionChunk) for data in datas[:-1]]


async def test_a_moderated_completion_decodes_with_the_schemas(simulator: Simulator) -> None:
    response = await post(simulator, chat_body(moderation=MODERATION))
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    completion = msgspec.json.decode(response.content, type=ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content
    assert completion.moderation is not None
    for side in (completion.moderation.input, completion.moderation.output):
        assert isinstance(side, ModerationResults)
        assert side.model == "omni-moderation-latest"
        assert len(side.results) == 1
        assert set(side.results[0].category_scores) == set(OMNI_CATEGORIES)
        assert not side.results[0].flagged
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


async def test_without_the_moderation_parameter_there_is_no_moderation(simulator: Simulator) -> None:
    completion = msgspec.json.decode((await post(simulator, chat_body())).content, type=ChatCompletion)
    assert completion.moderation is None


async def test_flagged_input_and_output_are_scored_per_side(simulator: Simulator) -> None:
    body = chat_body(f"I will {MARKERS['violence']} you [[sim: flag_output=hate]]", moderation=MODERATION, n=2)
    completion = msgspec.json.decode((await post(simulator, body)).content, type=ChatCompletion)
    assert completion.moderation is not None
    moderation_input, moderation_output = completion.moderation.input, completion.moderation.output
    assert isinstance(moderation_input, ModerationResults) and isinstance(moderation_output, ModerationResults)
    assert moderation_input.results[0].categories["violence"]
    assert not moderation_input.results[0].categories["hate"]
    assert len(moderation_output.results) == 2
    assert all(result.categories["hate"] for result in moderation_output.results)
    assert all(choice.finish_reason == "stop" for choice in completion.choices)  # score mode withholds nothing


async def test_image_parts_are_moderated_as_images(simulator: Simulator) -> None:
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://img.example/gore.jpg"}},
    ]
    completion = msgspec.json.decode(
        (await post(simulator, chat_body(content, moderation=MODERATION))).content, type=ChatCompletion
    )
    assert completion.moderation is not None
    side = completion.moderation.input
    assert isinstance(side, ModerationResults)
    assert side.results[0].categories["violence/graphic"]
    assert side.results[0].category_applied_input_types["violence/graphic"] == ["text", "image"]
    assert side.results[0].category_applied_input_types["hate"] == ["text"]


async def test_block_policy_on_flagged_input_generates_nothing(simulator: Simulator) -> None:
    moderation = {**MODERATION, "policy": {"input": {"mode": "block"}}}
    completion = msgspec.json.decode(
        (await post(simulator, chat_body("you idiot", moderation=moderation, n=2))).content, type=ChatCompletion
    )
    assert [choice.finish_reason for choice in completion.choices] == ["content_filter", "content_filter"]
    assert all(choice.message.content is None for choice in completion.choices)
    assert completion.usage is not None and completion.usage.completion_tokens == 0
    assert completion.moderation is not None
    output = completion.moderation.output
    assert isinstance(output, ModerationResults) and not any(r.flagged for r in output.results)


async def test_block_policy_on_flagged_output_withholds_that_content(simulator: Simulator) -> None:
    moderation = {**MODERATION, "policy": {"output": {"mode": "block"}}}
    completion = msgspec.json.decode(
        (await post(simulator, chat_body("hello [[sim: flag_output]]", moderation=moderation))).content,
        type=ChatCompletion,
    )
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content is None
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.moderation is not None
    output = completion.moderation.output
    assert isinstance(output, ModerationResults) and output.results[0].categories["violence"]


async def test_block_policy_lets_clean_content_through(simulator: Simulator) -> None:
    moderation = {**MODERATION, "policy": {"input": {"mode": "block"}, "output": {"mode": "block"}}}
    completion = msgspec.json.decode(
        (await post(simulator, chat_body(moderation=moderation))).content, type=ChatCompletion
    )
    assert completion.choices[0].finish_reason == "stop" and completion.choices[0].message.content


async def test_same_request_and_seed_give_the_same_body(simulator: Simulator) -> None:
    body = chat_body(moderation=MODERATION, seed=42, n=3, max_completion_tokens=12)

    def comparable(raw: bytes) -> ChatCompletion:
        completion = msgspec.json.decode(raw, type=ChatCompletion)
        return msgspec.structs.replace(completion, id="", created=0)

    first, second = (await post(simulator, body)).content, (await post(simulator, body)).content
    assert comparable(first) == comparable(second)
    other_seed = comparable((await post(simulator, {**body, "seed": 43})).content)
    assert other_seed.choices[0].message.content != comparable(first).choices[0].message.content


async def test_max_tokens_n_and_stop_are_honoured(simulator: Simulator) -> None:
    limited = msgspec.json.decode(
        (await post(simulator, chat_body(n=3, max_completion_tokens=2))).content, type=ChatCompletion
    )
    assert [choice.index for choice in limited.choices] == [0, 1, 2]
    assert all(choice.finish_reason == "length" for choice in limited.choices)
    assert limited.usage is not None and limited.usage.completion_tokens == 6
    full = msgspec.json.decode((await post(simulator, chat_body())).content, type=ChatCompletion)
    assert full.choices[0].message.content is not None
    third_word = full.choices[0].message.content.split(" ")[2]
    stopped = msgspec.json.decode((await post(simulator, chat_body(stop=[third_word]))).content, type=ChatCompletion)
    assert stopped.choices[0].message.content == " ".join(full.choices[0].message.content.split(" ")[:2])


@pytest.mark.parametrize("order", ["after_content", "before_content"])
async def test_streaming_chunks_decode_and_reassemble_the_completion(make_simulator: Any, order: str) -> None:
    sim = await make_simulator(stream_moderation=order)
    body = chat_body(moderation=MODERATION, n=2, seed=9)
    whole = msgspec.json.decode((await post(sim, body)).content, type=ChatCompletion)
    response = await post(sim, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(response.text)
    texts = ["", ""]
    finish: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert texts == [choice.message.content for choice in whole.choices]
    assert finish == {0: "stop", 1: "stop"}
    moderation_chunks = [i for i, chunk in enumerate(chunks) if chunk.moderation is not None]
    assert len(moderation_chunks) == 1
    position = moderation_chunks[0]
    assert chunks[position].choices == []
    assert chunks[position].moderation == whole.moderation
    last_content = max(i for i, chunk in enumerate(chunks) if any(c.delta.content for c in chunk.choices))
    if order == "after_content":
        assert position > last_content
    else:
        assert position == 0
    assert chunks[-1].usage == whole.usage and chunks[-1].choices == []


async def test_stream_without_include_usage_has_no_usage_chunk(simulator: Simulator) -> None:
    chunks = sse_chunks((await post(simulator, chat_body(stream=True))).text)
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.moderation is None for chunk in chunks)


async def test_streamed_block_sends_no_content_for_the_blocked_choice(simulator: Simulator) -> None:
    moderation = {**MODERATION, "policy": {"output": {"mode": "block"}}}
    chunks = sse_chunks(
        (await post(simulator, chat_body("[[sim: flag_output]]", moderation=moderation, stream=True))).text
    )
    assert not any(choice.delta.content for chunk in chunks for choice in chunk.choices)
    assert any(choice.finish_reason == "content_filter" for chunk in chunks for choice in chunk.choices)


async def test_moderations_endpoint_decodes(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        several = await client.post("/moderations", json={"input": ["hello", "you moron"]})
        parts = await client.post(
            "/moderations",
            json={
                "model": "omni-moderation-latest",
                "input": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://x.example/nude.png"}},
                ],
            },
        )
    first = msgspec.json.decode(several.content, type=ModerationCreateResponse)
    assert [result.flagged for result in first.results] == [False, True]
    second = msgspec.json.decode(parts.content, type=ModerationCreateResponse)
    assert len(second.results) == 1 and second.results[0].categories["sexual"]
    assert second.results[0].category_applied_input_types["sexual"] == ["text", "image"]


async def test_models_lists_the_configured_ids(make_simulator: Any) -> None:
    sim = await make_simulator(models=("gpt-test-1", "gpt-test-2"))
    async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH) as client:
        models = msgspec.json.decode((await client.get("/models")).content, type=ModelList)
    assert [model.id for model in models.data] == ["gpt-test-1", "gpt-test-2"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, None), ({"Authorization": "Bearer"}, None), ({"Authorization": "Basic abc"}, None)],
)
async def test_requests_without_a_bearer_token_get_401(
    simulator: Simulator, headers: dict[str, str], code: str | None
) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url) as client:
        response = await client.post("/chat/completions", json=chat_body(), headers=headers)
    assert response.status_code == 401
    error = msgspec.json.decode(response.content, type=ErrorBody).error
    assert error.type == "invalid_request_error" and error.code == code


async def test_a_configured_key_rejects_others_without_echoing_them(make_simulator: Any) -> None:
    sim = await make_simulator(api_key="sk-right")
    async with httpx.AsyncClient(base_url=sim.base_url) as client:
        wrong = await client.post("/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sk-wrong"})
        right = await client.post("/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sk-right"})
    assert wrong.status_code == 401
    assert msgspec.json.decode(wrong.content, type=ErrorBody).error.code == "invalid_api_key"
    assert b"sk-wrong" not in wrong.content
    assert right.status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "parse the JSON"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "Invalid request body"),
        (b'{"model": "m"}', "messages"),
    ],
)
async def test_bad_bodies_get_400_with_the_error_body(simulator: Simulator, body: bytes, fragment: str) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        response = await client.post("/chat/completions", content=body)
    assert response.status_code == 400
    error = msgspec.json.decode(response.content, type=ErrorBody).error
    assert fragment in error.message and error.type == "invalid_request_error"


async def test_unknown_paths_get_404(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        response = await client.post("/completions", json={})
    assert response.status_code == 404
    assert msgspec.json.decode(response.content, type=ErrorBody).error.message == "Invalid URL (POST /v1/completions)"


async def test_a_prompt_beyond_the_context_window_gets_context_length_exceeded(make_simulator: Any) -> None:
    sim = await make_simulator(context_window=100)
    response = await post(sim, chat_body("word " * 200))
    assert response.status_code == 400
    error = msgspec.json.decode(response.content, type=ErrorBody).error
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
    assert (await post(sim, chat_body("short", max_completion_tokens=95))).status_code == 400


async def test_moderation_error_sides_decode_as_errors(simulator: Simulator) -> None:
    response = await post(simulator, chat_body(moderation=MODERATION), {"x-sim-fault": "moderation_error_output"})
    completion = msgspec.json.decode(response.content, type=ChatCompletion)
    assert completion.moderation is not None
    assert isinstance(completion.moderation.input, ModerationResults)
    assert isinstance(completion.moderation.output, ModerationError)
    assert completion.moderation.output.code == "moderation_unavailable"
