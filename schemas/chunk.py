"""One event of a streamed answer: ``ChatCompletionChunk``, with deltas per choice.

Like the whole answer (:mod:`schemas.response`), ``moderation`` is strict and the descriptive enums are
open (``finish_reason``, ``service_tier``, the delta's ``role``). A delta's tool call ``type`` stays closed:
only a function call streams as deltas, and its arguments are output that moderation must see.
"""

from __future__ import annotations

from typing import Literal

from schemas.response import ChoiceLogprobs, FinishReason, Moderation, Role, ServedTier, Usage
from schemas.wire import Wire


class DeltaFunctionCall(Wire, frozen=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Wire, frozen=True):
    index: int
    id: str | None = None
    function: DeltaFunctionCall | None = None
    type: Literal["function"] | None = None


class DeltaAudio(Wire, frozen=True):
    id: str | None = None
    data: str | None = None
    expires_at: int | None = None
    transcript: str | None = None


class ChoiceDelta(Wire, frozen=True):
    role: Role | None = None
    content: str | None = None
    refusal: str | None = None
    audio: DeltaAudio | None = None
    function_call: DeltaFunctionCall | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(Wire, frozen=True):
    delta: ChoiceDelta
    index: int
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Wire, frozen=True):
    """One server-sent event of a streaming response; ``choices`` may be empty (usage or moderation chunk)."""

    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"]
    moderation: Moderation | None = None
    obfuscation: str | None = None
    service_tier: ServedTier | None = None
    system_fingerprint: str | None = None
    usage: Usage | None = None
