"""Streaming responses: server-sent events in, one :class:`ChatCompletion` out, so routing sees one shape.

:class:`SseDecoder` turns bytes, cut anywhere, into events (``\\n``, ``\\r\\n`` and ``\\r`` line ends,
multi-line ``data``, comments). :class:`ChunkAssembler` folds ``ChatCompletionChunk``\\s into a completion:
content, refusal, tool calls and logprobs concatenated per choice, ``finish_reason`` per choice, ``usage``
from the chunk that carries it, and ``moderation`` from whichever chunk carries it — often one with empty
``choices``, before or after the content.

The API sends one moderation chunk. Should a stream carry more, they are merged worst-of
(:func:`worse_moderation`), so a later chunk can never make the job cleaner than an earlier one said: on each
side an error sticks, and results are merged choice by choice with every flag kept and every score at its
highest; a choice either chunk left without a result stays without one (so an empty list stays missing).
Whatever thresholds routing applies, the merge routes at least as strictly as each chunk alone, in either
order. (Failing the stream instead would have it retried, paying again for an answer already generated, or
thrown away; the merge keeps the answer and sends it to review whenever either chunk would have.)

:func:`read_stream` drives both over a body and ends in a completion or a :class:`AttemptFailure`:

- ``data: [DONE]`` ends the stream; a body that ends without it is *truncated* (failure ``stream``,
  retriable: the same call usually succeeds again);
- an error event (``event: error`` or a ``data`` object with an ``error`` key) is failure ``stream``,
  retriable when the error is the server's (``server_error`` and the like, or untyped);
- a chunk that does not match the schema is failure ``decode`` (not retriable, like a bad 200 body);
- a choice without a ``finish_reason`` at ``[DONE]`` is failure ``stream`` (retriable).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Final

import msgspec

from pipeline.client.failures import AttemptFailure
from schemas.chat import (
    AudioResponse,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ErrorBody,
    FinishReason,
    FunctionCall,
    FunctionToolCall,
    Moderation,
    ModerationError,
    ModerationOutcome,
    ModerationResult,
    ModerationResults,
    ServedTier,
    TokenLogprob,
    ToolCall,
    Usage,
)

DONE: Final = b"[DONE]"
#: Error types a stream may end with that say nothing about the request itself, so a retry may help.
RETRIABLE_STREAM_ERROR_TYPES: Final = frozenset({"server_error", "api_error", "overloaded_error", "timeout"})

_chunk_decoder: Final = msgspec.json.Decoder(ChatCompletionChunk)
_error_decoder: Final = msgspec.json.Decoder(ErrorBody)


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: bytes
    event: str | None = None


class SseDecoder:
    """Incremental server-sent-events parser (the fields the API uses: ``event`` and ``data``)."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        lines = (self._pending + chunk).splitlines(keepends=True)
        # An unterminated last line, or one ending in a lone "\r" that may be the first half of "\r\n",
        # waits for the next chunk.
        if lines and not lines[-1].endswith(b"\n"):
            self._pending = lines.pop()
        else:
            self._pending = b""
        events: list[SseEvent] = []
        for line in lines:
            event = self._line(line.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: bytes) -> SseEvent | None:
        if not line:
            if not self._data:
                self._event = None
                return None
            event = SseEvent(b"\n".join(self._data), self._event)
            self._data, self._event = [], None
            return event
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        return None

    def finish(self) -> SseEvent | None:
        """At the end of the body: an event cut off before its blank line, if any (it may explain the cut)."""
        if self._pending:
            self._line(self._pending.rstrip(b"\r"))
            self._pending = b""
        return self._line(b"")


# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------


def _appended(parts: list[str] | None, piece: str) -> list[str]:
    """``parts`` with ``piece`` added, starting the list on the first piece (``None`` means "never sent")."""
    if parts is None:
        return [piece]
    parts.append(piece)
    return parts


def _extended(tokens: list[TokenLogprob] | None, more: list[TokenLogprob]) -> list[TokenLogprob]:
    if tokens is None:
        return list(more)
    tokens.extend(more)
    return tokens


@dataclass
class _ToolCallParts:
    id: str | None = None
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


@dataclass
class _ChoiceParts:
    content: list[str] | None = None
    refusal: list[str] | None = None
    tool_calls: dict[int, _ToolCallParts] = field(default_factory=dict)
    function_name: list[str] | None = None
    function_arguments: list[str] = field(default_factory=list)
    audio_id: str | None = None
    audio_expires_at: int | None = None
    audio_data: list[str] = field(default_factory=list)
    audio_transcript: list[str] = field(default_factory=list)
    logprobs_content: list[TokenLogprob] | None = None
    logprobs_refusal: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None

    def add(self, choice: ChunkChoice) -> None:
        delta = choice.delta
        if delta.content is not None:
            self.content = _appended(self.content, delta.content)
        if delta.refusal is not None:
            self.refusal = _appended(self.refusal, delta.refusal)
        for call in delta.tool_calls or ():
            parts = self.tool_calls.setdefault(call.index, _ToolCallParts())
            parts.id = call.id or parts.id
            if call.function is not None:
                parts.name.append(call.function.name or "")
                parts.arguments.append(call.function.arguments or "")
        if delta.function_call is not None:
            self.function_name = _appended(self.function_name, delta.function_call.name or "")
            self.function_arguments.append(delta.function_call.arguments or "")
        if delta.audio is not None:
            self.audio_id = delta.audio.id or self.audio_id
            self.audio_expires_at = delta.audio.expires_at or self.audio_expires_at
            self.audio_data.append(delta.audio.data or "")
            self.audio_transcript.append(delta.audio.transcript or "")
        if choice.logprobs is not None:
            if choice.logprobs.content is not None:
                self.logprobs_content = _extended(self.logprobs_content, choice.logprobs.content)
            if choice.logprobs.refusal is not None:
                self.logprobs_refusal = _extended(self.logprobs_refusal, choice.logprobs.refusal)
        if choice.finish_reason is not None:
            self.finish_reason = choice.finish_reason

    def message(self) -> ChatCompletionMessage:
        tool_calls: list[ToolCall] | None = None
        if self.tool_calls:
            tool_calls = [
                FunctionToolCall(
                    id=parts.id or "",
                    function=FunctionCall(name="".join(parts.name), arguments="".join(parts.arguments)),
                )
                for _, parts in sorted(self.tool_calls.items())
            ]
        audio = None
        if self.audio_id is not None and self.audio_expires_at is not None:
            audio = AudioResponse(
                id=self.audio_id,
                expires_at=self.audio_expires_at,
                data="".join(self.audio_data),
                transcript="".join(self.audio_transcript),
            )
        return ChatCompletionMessage(
            role="assistant",
            content=None if self.content is None else "".join(self.content),
            refusal=None if self.refusal is None else "".join(self.refusal),
            tool_calls=tool_calls,
            function_call=None
            if self.function_name is None
            else FunctionCall(name="".join(self.function_name), arguments="".join(self.function_arguments)),
            audio=audio,
        )

    def logprobs(self) -> ChoiceLogprobs | None:
        if self.logprobs_content is None and self.logprobs_refusal is None:
            return None
        return ChoiceLogprobs(content=self.logprobs_content, refusal=self.logprobs_refusal)


def _worse_result(first: ModerationResult, second: ModerationResult) -> ModerationResult:
    """Every category flagged in either, every score at the higher of the two (keys: first's, then new ones)."""
    flags, scores = {**first.categories, **second.categories}, {**first.category_scores, **second.category_scores}
    input_types = {**first.category_applied_input_types, **second.category_applied_input_types}
    return ModerationResult(
        categories={name: first.categories.get(name, False) or second.categories.get(name, False) for name in flags},
        category_applied_input_types={
            name: list(dict.fromkeys([*first.category_applied_input_types.get(name, []), *types]))
            for name, types in input_types.items()
        },
        category_scores={
            name: max(first.category_scores.get(name, 0.0), second.category_scores.get(name, 0.0)) for name in scores
        },
        flagged=first.flagged or second.flagged,
        model=first.model,
    )


def _worse_side(first: ModerationOutcome, second: ModerationOutcome) -> ModerationOutcome:
    """An error sticks (the first one seen); else results merged choice by choice, as many as *both* chunks
    have: a choice one chunk left without a verdict stays without one (an empty list stays empty)."""
    for side in (first, second):
        if isinstance(side, ModerationError):
            return side
    assert isinstance(first, ModerationResults) and isinstance(second, ModerationResults)
    return ModerationResults(
        model=first.model, results=[_worse_result(a, b) for a, b in zip(first.results, second.results, strict=False)]
    )


def worse_moderation(first: Moderation, second: Moderation) -> Moderation:
    """Two moderation chunks of one stream as one that is never cleaner than either (see the module doc)."""
    return Moderation(input=_worse_side(first.input, second.input), output=_worse_side(first.output, second.output))


class IncompleteStream(Exception):
    """The stream ended before every choice had a ``finish_reason`` (or before any chunk)."""


class ChunkAssembler:
    """Folds chunks into one :class:`ChatCompletion`."""

    def __init__(self) -> None:
        self._first: ChatCompletionChunk | None = None
        self._choices: dict[int, _ChoiceParts] = {}
        self._moderation: Moderation | None = None
        self._usage: Usage | None = None
        self._service_tier: ServedTier | None = None
        self._system_fingerprint: str | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        if self._first is None:
            self._first = chunk
        for choice in chunk.choices:
            self._choices.setdefault(choice.index, _ChoiceParts()).add(choice)
        if chunk.moderation is not None:
            earlier = self._moderation
            self._moderation = chunk.moderation if earlier is None else worse_moderation(earlier, chunk.moderation)
        self._usage = chunk.usage or self._usage
        self._service_tier = chunk.service_tier or self._service_tier
        self._system_fingerprint = chunk.system_fingerprint or self._system_fingerprint

    @property
    def usage(self) -> Usage | None:
        """The usage chunk's figures, once it came (the provider bills them even if the stream then breaks)."""
        return self._usage

    def completion(self) -> ChatCompletion:
        if self._first is None:
            raise IncompleteStream("the stream carried no chunk")
        choices = []
        for index, parts in sorted(self._choices.items()):
            if parts.finish_reason is None:
                raise IncompleteStream(f"choice {index} ended without a finish_reason")
            choices.append(
                Choice(
                    finish_reason=parts.finish_reason,
                    index=index,
                    message=parts.message(),
                    logprobs=parts.logprobs(),
                )
            )
        return ChatCompletion(
            id=self._first.id,
            choices=choices,
            created=self._first.created,
            model=self._first.model,
            object="chat.completion",
            moderation=self._moderation,
            service_tier=self._service_tier,
            system_fingerprint=self._system_fingerprint,
            usage=self._usage,
        )


# --------------------------------------------------------------------------------------------------
# Reading a stream
# --------------------------------------------------------------------------------------------------


def _error_event_failure(error: ErrorBody) -> AttemptFailure:
    detail = error.error
    return AttemptFailure(
        failure="stream",
        message=f"error event mid-stream: {detail.message}",
        retriable=detail.type is None or detail.type in RETRIABLE_STREAM_ERROR_TYPES,
        error_type=detail.type,
        code=None if detail.code is None else str(detail.code),
    )


def _apply(event: SseEvent, assembler: ChunkAssembler) -> AttemptFailure | None:
    """Add a chunk event to the assembly; an error event, or an unreadable one, is the failure it stands for."""
    problem = "unreadable error event mid-stream"
    if event.event != "error":
        try:
            assembler.add(_chunk_decoder.decode(event.data))
            return None
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            problem = f"bad stream chunk: {exc}"
    try:
        return _error_event_failure(_error_decoder.decode(event.data))
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        if event.event == "error":
            return AttemptFailure(failure="stream", message=problem, retriable=True)
        return AttemptFailure(failure="decode", message=problem, retriable=False)


async def read_stream(body: AsyncIterator[bytes]) -> ChatCompletion | AttemptFailure:
    """Consume an SSE body into a completion, or the failure that ended it (with the usage the stream had
    reported by then: a stream cut after its usage chunk was billed).

    Transport errors raised by ``body`` propagate: the caller knows the response had started.
    """
    assembler = ChunkAssembler()
    result = await _read_events(body, assembler)
    if isinstance(result, AttemptFailure) and assembler.usage is not None:
        return replace(result, usage=assembler.usage)
    return result


async def _read_events(body: AsyncIterator[bytes], assembler: ChunkAssembler) -> ChatCompletion | AttemptFailure:
    decoder = SseDecoder()
    async for piece in body:
        for event in decoder.feed(piece):
            if event.data == DONE:
                try:
                    return assembler.completion()
                except IncompleteStream as exc:
                    return AttemptFailure(failure="stream", message=str(exc), retriable=True)
            failure = _apply(event, assembler)
            if failure is not None:
                return failure
    last = decoder.finish()
    if last is not None and last.data != DONE:
        try:
            return _error_event_failure(_error_decoder.decode(last.data))
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            pass
    return AttemptFailure(failure="stream", message="stream ended without [DONE] (truncated)", retriable=True)
