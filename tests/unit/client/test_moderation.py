"""Separate moderation: what is sent to ``/moderations`` and how its answer takes the inline shape."""

from __future__ import annotations

from pipeline.client.failures import AttemptFailure
from pipeline.client.moderation import (
    RESULT_COUNT_MISMATCH,
    UNSUPPORTED_INPUT,
    ModerationCall,
    input_request,
    moderate_input,
    moderate_output,
    output_request,
    to_outcome,
)
from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    FunctionCall,
    FunctionToolCall,
    ImageUrl,
    ImageUrlPart,
    InputAudio,
    InputAudioPart,
    ModerationError,
    ModerationResult,
    ModerationResults,
    SystemMessage,
    TextPart,
    UserMessage,
)
from schemas.moderations import (
    ModerationCategoriesResult,
    ModerationCreateRequest,
    ModerationCreateResponse,
    ModerationImageInput,
    ModerationImageUrl,
    ModerationTextInput,
)

CLEAN = ModerationCategoriesResult(
    categories={"hate": False},
    category_applied_input_types={"hate": ["text"]},
    category_scores={"hate": 0.01},
    flagged=False,
)


def completion(*contents: str | None) -> ChatCompletion:
    return ChatCompletion(
        id="c",
        created=1,
        model="m",
        object="chat.completion",
        choices=[
            Choice(index=i, finish_reason="stop", message=ChatCompletionMessage(role="assistant", content=content))
            for i, content in enumerate(contents)
        ],
    )


def answering(results: int) -> tuple[ModerationCall, list[tuple[ModerationCreateRequest, str]]]:
    sent: list[tuple[ModerationCreateRequest, str]] = []

    async def call(request: ModerationCreateRequest, which: str) -> ModerationCreateResponse:
        sent.append((request, which))
        return ModerationCreateResponse(id="modr", model="omni-moderation-latest", results=[CLEAN] * results)

    return call, sent


def test_the_input_is_one_item_of_all_message_text() -> None:
    request = input_request(
        [
            SystemMessage(content="Be brief."),
            UserMessage(content=[TextPart(text="Hello"), TextPart(text="there")]),
            AssistantMessage(
                content="Sure.",
                tool_calls=[FunctionToolCall(id="t", function=FunctionCall(name="f", arguments='{"a": 1}'))],
            ),
        ],
        "omni-moderation-latest",
    )
    assert request == ModerationCreateRequest(
        input='Be brief.\n\nHello\n\nthere\n\nSure.\n\n{"a": 1}', model="omni-moderation-latest"
    )


def test_images_travel_as_parts_beside_the_text() -> None:
    message = UserMessage(content=[TextPart(text="What is this?"), ImageUrlPart(image_url=ImageUrl(url="https://i/x"))])
    assert input_request([message], "m").input == [
        ModerationTextInput(text="What is this?"),
        ModerationImageInput(image_url=ModerationImageUrl(url="https://i/x")),
    ]


def test_the_output_is_one_item_per_choice_in_order() -> None:
    request = output_request(completion("first", None, "third"), "m")
    assert request.input == ["first", "", "third"]


def test_an_answer_takes_the_inline_shape() -> None:
    answer = ModerationCreateResponse(id="modr", model="omni-moderation-latest", results=[CLEAN])
    assert to_outcome(answer) == ModerationResults(
        model="omni-moderation-latest",
        results=[
            ModerationResult(
                categories={"hate": False},
                category_applied_input_types={"hate": ["text"]},
                category_scores={"hate": 0.01},
                flagged=False,
                model="omni-moderation-latest",
            )
        ],
    )


def test_a_failed_call_is_a_moderation_error() -> None:
    failure = AttemptFailure(failure="timeout", message="read timeout", retriable=True)
    assert to_outcome(failure) == ModerationError(code="moderation_timeout", message="read timeout")


async def test_audio_input_cannot_be_moderated_separately_and_says_so() -> None:
    call, sent = answering(1)
    audio = UserMessage(content=[InputAudioPart(input_audio=InputAudio(data="AAAA", format="wav"))])
    outcome = await moderate_input(call, [audio], "m")
    assert isinstance(outcome, ModerationError) and outcome.code == UNSUPPORTED_INPUT
    assert sent == []


async def test_a_result_count_that_does_not_match_fails_closed() -> None:
    call, _ = answering(1)
    outcome = await moderate_output(call, completion("a", "b"), "m")
    assert isinstance(outcome, ModerationError) and outcome.code == RESULT_COUNT_MISMATCH


async def test_both_sides_name_themselves_to_the_caller() -> None:
    call, sent = answering(1)
    assert isinstance(await moderate_input(call, [UserMessage(content="hi")], "m"), ModerationResults)
    assert isinstance(await moderate_output(call, completion("hello"), "m"), ModerationResults)
    assert [which for _, which in sent] == ["input", "output"]
