"""The Chat Completions answer: the inline ``moderation`` unions, the completion with its choices, the error body.

``moderation`` is strict: each side is a tagged union on ``type`` (``moderation_results`` or ``error``), and an
unknown tag, a missing field or a wrong type raises ``msgspec.ValidationError`` naming the path (e.g.
``$.moderation.output.type``), so a verdict we cannot read is never taken for clean. The fields that only
describe an answer are open (see :mod:`schemas.wire`): ``finish_reason``, ``service_tier`` and the message
role accept values this version does not know, and ``annotations`` keep each entry as the API sent it.
Unknown extra fields are ignored everywhere, because the API grows.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeGuard, get_args

import msgspec

from schemas.messages import FunctionCall, ToolCall
from schemas.request import ServiceTier
from schemas.wire import Metadata, Wire

# --------------------------------------------------------------------------------------------------
# Moderation (the tagged unions this project is built around): closed
# --------------------------------------------------------------------------------------------------

InputType = Literal["text", "image"]


class ModerationResult(Wire, frozen=True, tag_field="type", tag="moderation_result"):
    """One moderation result: flags, scores and the modalities each score reflects, per category."""

    categories: dict[str, bool]
    category_applied_input_types: dict[str, list[InputType]]
    category_scores: dict[str, float]
    flagged: bool
    model: str


class ModerationResults(Wire, frozen=True, tag_field="type", tag="moderation_results"):
    """Moderation ran: the results for one side (input or output)."""

    model: str
    results: list[ModerationResult]


class ModerationError(Wire, frozen=True, tag_field="type", tag="error"):
    """Moderation could not run for one side; the completion itself may still have been produced."""

    code: str
    message: str


ModerationOutcome = ModerationResults | ModerationError


class Moderation(Wire, frozen=True):
    """The response's ``moderation``: each side independently results or an error."""

    input: ModerationOutcome
    output: ModerationOutcome


# --------------------------------------------------------------------------------------------------
# Open enums of the answer
# --------------------------------------------------------------------------------------------------

KnownFinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
#: Why a choice ended: one of :data:`KnownFinishReason`, or a reason the API added since (kept as text).
FinishReason = KnownFinishReason | str
KNOWN_FINISH_REASONS: Final[frozenset[str]] = frozenset(get_args(KnownFinishReason))
#: The tier that served the request (may differ from the one asked for), or a tier the API added since.
ServedTier = ServiceTier | str
#: Who wrote a message or a delta; answers are the assistant's, but the field is not ours to close.
Role = Literal["developer", "system", "user", "assistant", "tool"] | str


def is_known_finish_reason(reason: str) -> TypeGuard[KnownFinishReason]:
    """Whether this version knows what ``reason`` means."""
    return reason in KNOWN_FINISH_REASONS


# --------------------------------------------------------------------------------------------------
# Completion, choices, usage
# --------------------------------------------------------------------------------------------------


class TopLogprob(Wire, frozen=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(Wire, frozen=True):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob]
    bytes: list[int] | None = None


class ChoiceLogprobs(Wire, frozen=True):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


#: One entry of a message's ``annotations``, kept whole as the JSON object the API sent: ``type`` names the
#: kind and the key of its payload. Kinds grow with the API (msgspec has no catch-all variant for a tagged
#: union, and none of them bears on moderation), so an entry of a kind this version has not seen passes
#: through intact instead of failing the answer.
Annotation = Annotated[
    dict[str, Any],
    msgspec.Meta(
        description="An annotation object as sent by the API, keyed by its `type`.",
        examples=[
            {
                "type": "url_citation",
                "url_citation": {"start_index": 0, "end_index": 12, "title": "A page", "url": "https://example.com/"},
            }
        ],
    ),
]


class AudioResponse(Wire, frozen=True):
    id: str
    data: str
    expires_at: int
    transcript: str


class ChatCompletionMessage(Wire, frozen=True):
    role: Literal["assistant"] | str
    content: str | None = None
    refusal: str | None = None
    annotations: list[Annotation] | None = None
    audio: AudioResponse | None = None
    function_call: FunctionCall | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(Wire, frozen=True):
    finish_reason: FinishReason
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None


class CompletionTokensDetails(Wire, frozen=True):
    accepted_prediction_tokens: int | None = None
    audio_tokens: int | None = None
    reasoning_tokens: int | None = None
    rejected_prediction_tokens: int | None = None
    text_tokens: int | None = None


class PromptTokensDetails(Wire, frozen=True):
    audio_tokens: int | None = None
    cache_write_tokens: int | None = None
    cached_tokens: int | None = None
    image_tokens: int | None = None
    text_tokens: int | None = None


class Usage(Wire, frozen=True):
    completion_tokens: int
    prompt_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatCompletion(Wire, frozen=True):
    """The body of a non-streaming ``POST /v1/chat/completions`` response."""

    id: str
    choices: list[Choice]
    created: int
    model: str
    object: Literal["chat.completion"]
    metadata: Metadata | None = None
    moderation: Moderation | None = None
    service_tier: ServedTier | None = None
    system_fingerprint: str | None = None
    usage: Usage | None = None


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class ApiErrorDetail(Wire, frozen=True):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorBody(Wire, frozen=True):
    """The API's error body, ``{"error": {message, type, param, code}}``; also a mid-stream SSE error event."""

    error: ApiErrorDetail
