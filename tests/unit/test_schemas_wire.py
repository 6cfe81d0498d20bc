"""The Chat Completions wire schemas against the seed's example and against the official SDK as an oracle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pydantic
import pytest
from openai._models import construct_type
from openai.types.chat import ChatCompletion as SdkChatCompletion
from openai.types.chat import ChatCompletionChunk as SdkChatCompletionChunk

import schemas
from schemas import ChatCompletion, ChatCompletionChunk, ModerationError, ModerationResults

DATA = Path(__file__).parent.parent / "data"
ACCEPT = sorted((DATA / "corpus" / "accept").glob("*.json"))
REJECT = sorted((DATA / "corpus" / "reject").glob("*.json"))
#: Answers with values the API may add tomorrow: a service tier, a finish reason, an annotation kind, a role.
TOMORROW = sorted((DATA / "corpus" / "tomorrow").glob("*.json"))


def ours_and_sdk(path: Path) -> tuple[type[Any], type[pydantic.BaseModel]]:
    if path.name.startswith("chunk"):
        return ChatCompletionChunk, SdkChatCompletionChunk
    return ChatCompletion, SdkChatCompletion


def without_nulls_and_extras(value: Any) -> Any:
    """Drop ``None`` (omitted on encode) and the corpus's deliberate unknown ``future_*`` fields."""
    if isinstance(value, dict):
        return {
            k: without_nulls_and_extras(v) for k, v in value.items() if v is not None and not k.startswith("future_")
        }
    if isinstance(value, list):
        return [without_nulls_and_extras(v) for v in value]
    return value


def test_the_seed_example_decodes_with_both_sides_flagged_results() -> None:
    raw = (DATA / "seed_chat_completion.json").read_bytes()
    completion = msgspec.json.decode(raw, type=ChatCompletion)
    assert completion.moderation is not None
    for side in (completion.moderation.input, completion.moderation.output):
        assert isinstance(side, ModerationResults)
        (result,) = side.results
        assert result.flagged is True
        assert result.categories == {"foo": True}
        assert result.category_scores == {"foo": 0.0}
        assert result.category_applied_input_types == {"foo": ["text"]}
    assert completion.choices[0].message.tool_calls is not None
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None


@pytest.mark.parametrize("path", [DATA / "seed_chat_completion.json", *ACCEPT, *TOMORROW], ids=lambda p: p.stem)
def test_decode_encode_decode_round_trips(path: Path) -> None:
    ours, _ = ours_and_sdk(path)
    first = msgspec.json.decode(path.read_bytes(), type=ours)
    again = msgspec.json.decode(msgspec.json.encode(first), type=ours)
    assert again == first


@pytest.mark.parametrize("path", ACCEPT, ids=lambda p: p.stem)
def test_what_the_sdk_accepts_we_accept_with_the_same_values(path: Path) -> None:
    ours, sdk = ours_and_sdk(path)
    raw = path.read_bytes()
    sdk_value = sdk.model_validate_json(raw).model_dump(mode="json", by_alias=True)
    our_value = msgspec.to_builtins(msgspec.json.decode(raw, type=ours))
    assert without_nulls_and_extras(our_value) == without_nulls_and_extras(sdk_value)


@pytest.mark.parametrize("path", TOMORROW, ids=lambda p: p.stem)
def test_values_the_api_adds_decode_as_the_sdk_client_builds_them(path: Path) -> None:
    ours, sdk = ours_and_sdk(path)
    raw = path.read_bytes()
    with pytest.raises(pydantic.ValidationError):
        sdk.model_validate_json(raw)  # the SDK's types name only today's values...
    # ...but its client builds answers without validating them (``construct_type``, unless strict validation
    # is asked for), so tomorrow's values reach the caller as they came. So do ours.
    built = construct_type(type_=sdk, value=json.loads(raw)).model_dump(mode="json", by_alias=True)
    our_value = msgspec.to_builtins(msgspec.json.decode(raw, type=ours))
    assert without_nulls_and_extras(our_value) == without_nulls_and_extras(built)


def test_an_annotation_of_a_kind_we_do_not_know_is_kept_whole() -> None:
    raw = (DATA / "corpus" / "tomorrow" / "completion_unknown_annotation_type.json").read_bytes()
    message = msgspec.json.decode(raw, type=ChatCompletion).choices[0].message
    assert message.annotations is not None
    assert message.annotations[1] == {
        "type": "file_citation",
        "file_citation": {"file_id": "file-abc", "index": 4, "quote": "runs to the sea"},
    }
    assert (
        json.loads(msgspec.json.encode(message))["annotations"]
        == json.loads(raw)["choices"][0]["message"]["annotations"]
    )


@pytest.mark.parametrize("path", REJECT, ids=lambda p: p.stem)
def test_what_the_sdk_rejects_in_moderation_we_reject_naming_the_path(path: Path) -> None:
    ours, sdk = ours_and_sdk(path)
    raw = path.read_bytes()
    with pytest.raises(pydantic.ValidationError):
        sdk.model_validate_json(raw)
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.moderation"):
        msgspec.json.decode(raw, type=ours)


def test_unknown_tag_error_names_the_exact_path() -> None:
    raw = (DATA / "corpus" / "reject" / "unknown_tag_output.json").read_bytes()
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(raw, type=ChatCompletion)
    assert str(caught.value) == "Invalid value 'warning' - at `$.moderation.output.type`"


def side(kind: str) -> dict[str, Any]:
    if kind == "error":
        return {"type": "error", "code": "c", "message": "m"}
    return {"type": "moderation_results", "model": "omni-moderation-latest", "results": []}


@pytest.mark.parametrize("input_kind", ["error", "results"])
@pytest.mark.parametrize("output_kind", ["error", "results"])
def test_each_side_is_told_apart_by_type_independently(input_kind: str, output_kind: str) -> None:
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [],
        "moderation": {"input": side(input_kind), "output": side(output_kind)},
    }
    moderation = msgspec.json.decode(json.dumps(body), type=ChatCompletion).moderation
    assert moderation is not None
    expected = {"error": ModerationError, "results": ModerationResults}
    assert type(moderation.input) is expected[input_kind]
    assert type(moderation.output) is expected[output_kind]


def test_a_chunk_with_empty_choices_carries_moderation() -> None:
    raw = (DATA / "corpus" / "accept" / "chunk_moderation_empty_choices.json").read_bytes()
    chunk = msgspec.json.decode(raw, type=ChatCompletionChunk)
    assert chunk.choices == []
    assert chunk.moderation is not None
    assert isinstance(chunk.moderation.output, ModerationResults)
    assert chunk.moderation.output.results[0].flagged is True


def test_request_encodes_moderation_and_omits_none_fields() -> None:
    request = schemas.ChatCompletionRequest(
        model="gpt-4o-mini",
        messages=[
            schemas.SystemMessage(content="Be brief."),
            schemas.UserMessage(
                content=[
                    schemas.TextPart(text="What is in this image?"),
                    schemas.ImageUrlPart(image_url=schemas.ImageUrl(url="https://example.com/a.png")),
                ]
            ),
        ],
        moderation=schemas.ModerationParams(
            model="omni-moderation-latest",
            policy=schemas.ModerationPolicy(input=schemas.ModerationPolicySide(mode="block")),
        ),
        temperature=0.2,
    )
    assert json.loads(msgspec.json.encode(request)) == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
        ],
        "moderation": {"model": "omni-moderation-latest", "policy": {"input": {"mode": "block"}}},
        "temperature": 0.2,
    }


def test_the_sdk_accepts_our_request_body_as_its_params_shape() -> None:
    """Every message role and content part we encode is one the SDK's request types name."""
    from openai.types.chat import completion_create_params

    request = schemas.ChatCompletionRequest(
        model="m",
        messages=[
            schemas.DeveloperMessage(content="rules"),
            schemas.UserMessage(content="hi"),
            schemas.AssistantMessage(content="hello"),
            schemas.ToolMessage(content="42", tool_call_id="call_1"),
        ],
        moderation=schemas.ModerationParams(model="omni-moderation-latest"),
        stream=True,
        stream_options=schemas.StreamOptions(include_usage=True),
    )
    body = json.loads(msgspec.json.encode(request))
    known = set(completion_create_params.CompletionCreateParamsStreaming.__annotations__) | set(
        completion_create_params.CompletionCreateParamsBase.__annotations__
    )
    assert set(body) <= known
    assert [m["role"] for m in body["messages"]] == ["developer", "user", "assistant", "tool"]


def test_api_error_body_decodes() -> None:
    raw = (
        b'{"error": {"message": "Rate limit reached", "type": "requests",'
        b' "param": null, "code": "rate_limit_exceeded"}}'
    )
    body = msgspec.json.decode(raw, type=schemas.ErrorBody)
    assert body.error.code == "rate_limit_exceeded"
    assert body.error.type == "requests"
    assert body.error.param is None
