"""Token estimates before a request is sent, and what the provider charged once ``usage`` is known."""

from __future__ import annotations

from pipeline.client.tokens import (
    DEFAULT_COMPLETION_TOKENS,
    IMAGE_TOKENS_HIGH,
    IMAGE_TOKENS_LOW,
    OPAQUE_PART_TOKENS,
    CompletionLengths,
    TokenEstimate,
    estimate_tokens,
)
from schemas.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    FunctionCall,
    FunctionDefinition,
    FunctionTool,
    FunctionToolCall,
    ImageUrl,
    ImageUrlPart,
    InputAudio,
    InputAudioPart,
    TextPart,
    Usage,
    UserMessage,
)


def _request(*messages: UserMessage | AssistantMessage, **params: object) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="m", messages=list(messages), **params)  # type: ignore[arg-type]


def test_string_content_counts_four_characters_per_token_plus_framing() -> None:
    estimate = estimate_tokens(_request(UserMessage(content="x" * 40)), expected_completion_tokens=10)
    assert estimate == TokenEstimate(prompt=3 + 4 + 10, completion=10, completion_is_budget=False)


def test_list_content_parts_are_all_counted() -> None:
    message = UserMessage(
        content=[
            TextPart(text="y" * 8),
            ImageUrlPart(image_url=ImageUrl(url="https://x/i.png", detail="low")),
            ImageUrlPart(image_url=ImageUrl(url="https://x/j.png")),
            InputAudioPart(input_audio=InputAudio(data="AAAA", format="wav")),
        ]
    )
    estimate = estimate_tokens(_request(message), expected_completion_tokens=0)
    assert estimate.prompt == 3 + 4 + 2 + IMAGE_TOKENS_LOW + IMAGE_TOKENS_HIGH + OPAQUE_PART_TOKENS


def test_max_completion_tokens_times_n_is_the_completion_budget() -> None:
    request = _request(UserMessage(content="hi"), max_completion_tokens=100, n=3)
    estimate = estimate_tokens(request, expected_completion_tokens=7)
    assert (estimate.completion, estimate.completion_is_budget) == (300, True)


def test_legacy_max_tokens_is_a_budget_too() -> None:
    estimate = estimate_tokens(_request(UserMessage(content="hi"), max_tokens=50), expected_completion_tokens=7)
    assert (estimate.completion, estimate.completion_is_budget) == (50, True)


def test_tool_definitions_and_assistant_tool_calls_count() -> None:
    call = FunctionToolCall(id="c1", function=FunctionCall(name="lookup", arguments='{"q": "' + "z" * 40 + '"}'))
    tool = FunctionTool(function=FunctionDefinition(name="lookup", parameters={"type": "object"}))
    bare = estimate_tokens(_request(UserMessage(content="hi")), expected_completion_tokens=0).prompt
    with_tools = estimate_tokens(
        _request(UserMessage(content="hi"), AssistantMessage(tool_calls=[call]), tools=[tool]),
        expected_completion_tokens=0,
    ).prompt
    assert with_tools - bare >= 4 + 2 + 12 + 10


def test_charged_tokens_keep_a_budget_and_replace_a_guess() -> None:
    usage = Usage(prompt_tokens=12, completion_tokens=9, total_tokens=21)
    assert TokenEstimate(10, 300, completion_is_budget=True).charged(usage) == 12 + 300
    assert TokenEstimate(10, 256, completion_is_budget=False).charged(usage) == 12 + 9


def test_completion_lengths_are_learnt_per_model() -> None:
    lengths = CompletionLengths()
    assert lengths.expected("m") == DEFAULT_COMPLETION_TOKENS
    for _ in range(200):
        lengths.observe("m", completion_tokens=40, choices=2)
    assert 20 <= lengths.expected("m") <= 22
    assert lengths.expected("other") == DEFAULT_COMPLETION_TOKENS
