"""How many tokens a request will count against a tokens/min limit, before it is sent.

:func:`estimate_tokens` counts the prompt from the request (characters, image tiles, flat charges for audio
and files, tool definitions and framing) and reserves the completion: the request's own budget when it sets
one, else what :class:`CompletionLengths` has learnt completions of that model run to. Once ``usage`` is
known, :meth:`TokenEstimate.charged` says what the provider really charged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import msgspec

from schemas.chat import (
    AssistantMessage,
    ChatCompletionRequest,
    CustomToolCall,
    FilePart,
    FunctionToolCall,
    ImageUrlPart,
    InputAudioPart,
    RefusalPart,
    TextPart,
    Tool,
    ToolCall,
    Usage,
)

#: Rough English average; the provider's own estimate is made from characters too.
CHARS_PER_TOKEN: Final = 4
TOKENS_PER_MESSAGE: Final = 4
TOKENS_PER_REPLY: Final = 3
#: The provider's usual figures for an image: one 512px tile at low detail, a 1024x1024 image at high.
IMAGE_TOKENS_LOW: Final = 85
IMAGE_TOKENS_HIGH: Final = 765
#: Audio and files have no cheap estimate from the request; a flat charge, corrected by ``usage`` after.
OPAQUE_PART_TOKENS: Final = 256
#: Completion tokens to reserve per choice before any ``usage`` has been seen for a model.
DEFAULT_COMPLETION_TOKENS: Final = 256


def _text_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def _part_tokens(part: TextPart | ImageUrlPart | InputAudioPart | FilePart | RefusalPart) -> int:
    match part:
        case TextPart(text=text):
            return _text_tokens(text)
        case RefusalPart(refusal=text):
            return _text_tokens(text)
        case ImageUrlPart(image_url=image):
            return IMAGE_TOKENS_LOW if image.detail == "low" else IMAGE_TOKENS_HIGH
        case _:
            return OPAQUE_PART_TOKENS


def _tool_tokens(tools: list[Tool]) -> int:
    """Names, descriptions and JSON schemas: counted by their encoded size."""
    return -(-len(msgspec.json.encode(tools)) // CHARS_PER_TOKEN)


def _tool_call_tokens(call: ToolCall) -> int:
    match call:
        case FunctionToolCall(function=function):
            return _text_tokens(function.name) + _text_tokens(function.arguments)
        case CustomToolCall(custom=custom):
            return _text_tokens(custom.name) + _text_tokens(custom.input)


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """What a request will count against tokens/min, split as the provider charges it."""

    prompt: int
    completion: int
    #: ``True`` when ``completion`` is the request's own budget (``max_completion_tokens`` times ``n``): the
    #: provider charges that budget, so ``usage`` does not change it.
    completion_is_budget: bool

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    def charged(self, usage: Usage) -> int:
        """What the provider charged once ``usage`` is known: its prompt count, plus the budget when the
        request set one (the limit counts the budget, not what was generated), else what was generated."""
        completion = self.completion if self.completion_is_budget else usage.completion_tokens
        return usage.prompt_tokens + completion


def estimate_tokens(request: ChatCompletionRequest, expected_completion_tokens: int) -> TokenEstimate:
    """Tokens a request will count against a tokens/min limit, before it is sent.

    Prompt: string content and every list content part (text, refusal, images by detail, audio and files
    at a flat rate), assistant tool-call arguments and tool definitions, plus per-message framing.
    Completion: ``max_completion_tokens`` (or ``max_tokens``) times ``n`` when set, else
    ``expected_completion_tokens`` (see :class:`CompletionLengths`) times ``n``.
    """
    prompt = TOKENS_PER_REPLY
    for message in request.messages:
        prompt += TOKENS_PER_MESSAGE
        content = message.content
        if isinstance(content, str):
            prompt += _text_tokens(content)
        elif content is not None:
            prompt += sum(_part_tokens(part) for part in content)
        if isinstance(message, AssistantMessage) and message.tool_calls:
            prompt += sum(_tool_call_tokens(call) for call in message.tool_calls)
    if request.tools:
        prompt += _tool_tokens(request.tools)
    budget = request.max_completion_tokens or request.max_tokens
    per_choice = budget or expected_completion_tokens
    return TokenEstimate(prompt, per_choice * (request.n or 1), completion_is_budget=budget is not None)


class CompletionLengths:
    """Learns how long completions run per model, for requests that set no ``max_completion_tokens``.

    The estimate is the mean plus twice the mean deviation (both EWMAs, as TCP estimates its retransmission
    timeout): high enough that most completions fit the reservation, so the provider is rarely asked for
    tokens our bucket does not have, without reserving a worst case that would leave the limit unused.
    """

    def __init__(self, initial: int = DEFAULT_COMPLETION_TOKENS, weight: float = 0.05) -> None:
        self._initial = initial
        self._weight = weight
        self._by_model: dict[str, tuple[float, float]] = {}

    def expected(self, model: str) -> int:
        learnt = self._by_model.get(model)
        if learnt is None:
            return self._initial
        mean, deviation = learnt
        return max(1, math.ceil(mean + 2 * deviation))

    def observe(self, model: str, completion_tokens: int, choices: int) -> None:
        sample = completion_tokens / max(1, choices)
        learnt = self._by_model.get(model)
        if learnt is None:
            self._by_model[model] = (sample, sample / 2)
            return
        mean, deviation = learnt
        deviation += self._weight * (abs(sample - mean) - deviation)
        mean += self._weight * (sample - mean)
        self._by_model[model] = (mean, deviation)
