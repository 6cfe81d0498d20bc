"""Answers as bytes: JSON bodies and the server-sent events of a stream, all from :mod:`schemas` Structs.

Stream order (``after_content``, the default), each line ``data: <chunk JSON>``:

1. one role chunk per choice (``delta: {"role": "assistant", "content": ""}``);
2. content chunks, one token each, choices interleaved token by token;
3. one finish chunk per choice (empty ``delta``, ``finish_reason``);
4. the moderation chunk (``choices: []``, ``moderation: {input, output}``) when moderation was requested;
5. any later moderation chunks (the ``moderation_again_*`` faults: a stream the API should not send);
6. the usage chunk (``choices: []``, ``usage``) when ``stream_options.include_usage`` is true;
7. ``data: [DONE]``.

With ``before_content`` (server option, or the ``moderation_before_content`` fault) the moderation chunk
comes first instead, before the role chunks (later ones stay at 5). Both sides travel together because the
schema's ``Moderation`` requires both. Every chunk carries the answer's ``service_tier`` when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from pipeline.simulator.completion import Answer
from schemas.chat import ChatCompletion, ChatCompletionChunk, ChoiceDelta, ChunkChoice

#: The tag the ``moderation_unknown_type`` fault puts on the output side: a type this API version lacks.
UNKNOWN_MODERATION_TYPE: Final = "moderation_verdict"
DONE: Final = b"data: [DONE]\n\n"
ENCODER: Final = msgspec.json.Encoder()


def _with_unknown_output_type(value: ChatCompletion | ChatCompletionChunk) -> bytes:
    body: dict[str, Any] = msgspec.to_builtins(value)
    if "moderation" in body:
        body["moderation"]["output"]["type"] = UNKNOWN_MODERATION_TYPE
    return ENCODER.encode(body)


def encode_body(completion: ChatCompletion, *, unknown_moderation_type: bool = False) -> bytes:
    return _with_unknown_output_type(completion) if unknown_moderation_type else ENCODER.encode(completion)


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event; ``content`` marks the events the per-token delay applies between."""

    data: bytes
    content: bool = False


def stream_events(
    answer: Answer,
    *,
    moderation_first: bool,
    include_usage: bool,
    unknown_moderation_type: bool = False,
) -> list[Event]:
    """Every event of the stream, ``[DONE]`` included."""
    completion = answer.completion

    def event(choices: list[ChunkChoice], content: bool = False, **extra: Any) -> Event:
        chunk = ChatCompletionChunk(
            id=completion.id,
            choices=choices,
            created=completion.created,
            model=completion.model,
            object="chat.completion.chunk",
            service_tier=completion.service_tier,
            system_fingerprint=completion.system_fingerprint,
            **extra,
        )
        mutate = unknown_moderation_type and chunk.moderation is not None
        return Event(sse(_with_unknown_output_type(chunk) if mutate else ENCODER.encode(chunk)), content)

    moderation = [] if completion.moderation is None else [event([], moderation=completion.moderation)]
    events = list(moderation) if moderation_first else []
    role = ChoiceDelta(role="assistant", content="")
    events.extend(event([ChunkChoice(delta=role, index=choice.index)]) for choice in completion.choices)
    longest = max((len(g.tokens) for g in answer.streamed if g is not None), default=0)
    for position in range(longest):
        for index, generated in enumerate(answer.streamed):
            if generated is not None and position < len(generated.tokens):
                delta = ChoiceDelta(content=generated.tokens[position])
                events.append(event([ChunkChoice(delta=delta, index=index)], content=True))
    for choice in completion.choices:
        finish = ChunkChoice(delta=ChoiceDelta(), index=choice.index, finish_reason=choice.finish_reason)
        events.append(event([finish]))
    if not moderation_first:
        events.extend(moderation)
    events.extend(event([], moderation=later) for later in answer.later_moderation)
    if include_usage and completion.usage is not None:
        events.append(event([], usage=completion.usage))
    events.append(Event(DONE))
    return events
