"""Moderation through ``POST /v1/moderations``, for providers without inline moderation.

Modes (``PIPELINE_MODERATION_MODE``):

- ``inline`` (default): the request carries ``moderation``; a response without it is left without it, and
  routing sends it to review as ``moderation_missing`` (fail closed).
- ``separate``: the request carries no ``moderation``; the client moderates the input (concurrently with
  the completion) and then the output through ``/moderations``.
- ``auto``: inline, and when a response lacks ``moderation``, both sides are moderated separately.

Results take the inline shape, so routing sees one type: the input is moderated as one item (all message
text, plus image parts when there are any) giving one result, the output as one item per choice giving one
result per choice, in choice order. A side whose ``/moderations`` call failed after retries becomes a
:class:`ModerationError` (code ``moderation_<failure>``), which routes to review, never to output.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from pipeline.client.failures import AttemptFailure
from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionMessage,
    FilePart,
    FunctionToolCall,
    ImageUrlPart,
    InputAudioPart,
    Message,
    ModerationError,
    ModerationOutcome,
    ModerationResult,
    ModerationResults,
    RefusalPart,
    TextPart,
)
from schemas.moderations import (
    ModerationCreateRequest,
    ModerationCreateResponse,
    ModerationImageInput,
    ModerationImageUrl,
    ModerationInputPart,
    ModerationTextInput,
)

#: Calls ``/moderations`` with retries; the client supplies it (``which`` names the side, for request ids).
ModerationCall = Callable[[ModerationCreateRequest, str], Awaitable[ModerationCreateResponse | AttemptFailure]]

UNSUPPORTED_INPUT: Final = "unsupported_input"
RESULT_COUNT_MISMATCH: Final = "moderation_result_count"


class UnmoderatableInput(Exception):
    """The input holds parts ``/moderations`` cannot score (audio, files); moderating the rest would pass them."""


def _message_texts(message: Message) -> tuple[list[str], list[str]]:
    """Texts and image URLs of one message; raises :class:`UnmoderatableInput` for audio and file parts."""
    texts: list[str] = []
    images: list[str] = []
    content = message.content
    if isinstance(content, str):
        texts.append(content)
    elif content is not None:
        for part in content:
            match part:
                case TextPart(text=text) | RefusalPart(refusal=text):
                    texts.append(text)
                case ImageUrlPart(image_url=image):
                    images.append(image.url)
                case InputAudioPart() | FilePart():
                    raise UnmoderatableInput(f"{type(part).__name__} parts cannot be moderated separately")
    if isinstance(message, AssistantMessage):
        if message.refusal:
            texts.append(message.refusal)
        for call in message.tool_calls or ():
            if isinstance(call, FunctionToolCall):
                texts.append(call.function.arguments)
            else:
                texts.append(call.custom.input)
    return texts, images


def input_request(messages: list[Message], model: str) -> ModerationCreateRequest:
    """One item for the whole input: the texts joined, and the images alongside when there are any."""
    texts: list[str] = []
    images: list[str] = []
    for message in messages:
        message_texts, message_images = _message_texts(message)
        texts.extend(message_texts)
        images.extend(message_images)
    joined = "\n\n".join(texts)
    if not images:
        return ModerationCreateRequest(input=joined, model=model)
    parts: list[ModerationInputPart] = [ModerationTextInput(text=joined)]
    parts.extend(ModerationImageInput(image_url=ModerationImageUrl(url=url)) for url in images)
    return ModerationCreateRequest(input=parts, model=model)


def _generated_text(message: ChatCompletionMessage) -> str:
    texts = [text for text in (message.content, message.refusal) if text]
    if message.audio is not None:
        texts.append(message.audio.transcript)
    for call in message.tool_calls or ():
        texts.append(call.function.arguments if isinstance(call, FunctionToolCall) else call.custom.input)
    if message.function_call is not None:
        texts.append(message.function_call.arguments)
    return "\n\n".join(texts)


def output_request(completion: ChatCompletion, model: str) -> ModerationCreateRequest:
    """One item per choice, in choice order (a choice with nothing generated is moderated as "")."""
    ordered = sorted(completion.choices, key=lambda choice: choice.index)
    return ModerationCreateRequest(input=[_generated_text(choice.message) for choice in ordered], model=model)


def to_outcome(answer: ModerationCreateResponse | AttemptFailure) -> ModerationOutcome:
    """The inline shape of a ``/moderations`` answer, or the error a failed call stands for."""
    if isinstance(answer, AttemptFailure):
        return ModerationError(code=f"moderation_{answer.reason}", message=answer.message)
    return ModerationResults(
        model=answer.model,
        results=[
            ModerationResult(
                categories=result.categories,
                category_applied_input_types=result.category_applied_input_types,
                category_scores=result.category_scores,
                flagged=result.flagged,
                model=answer.model,
            )
            for result in answer.results
        ],
    )


def _checked(outcome: ModerationOutcome, expected: int) -> ModerationOutcome:
    """Fail closed when the endpoint scored a different number of items than it was sent."""
    if isinstance(outcome, ModerationResults) and len(outcome.results) != expected:
        return ModerationError(
            code=RESULT_COUNT_MISMATCH,
            message=f"sent {expected} item(s) to /moderations, got {len(outcome.results)} result(s)",
        )
    return outcome


async def moderate_input(call: ModerationCall, messages: list[Message], model: str) -> ModerationOutcome:
    try:
        request = input_request(messages, model)
    except UnmoderatableInput as exc:
        return ModerationError(code=UNSUPPORTED_INPUT, message=str(exc))
    return _checked(to_outcome(await call(request, "input")), 1)


async def moderate_output(call: ModerationCall, completion: ChatCompletion, model: str) -> ModerationOutcome:
    request = output_request(completion, model)
    return _checked(to_outcome(await call(request, "output")), len(completion.choices))
