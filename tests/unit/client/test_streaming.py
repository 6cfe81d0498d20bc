"""SSE decoding and chunk assembly: one ChatCompletion out of a stream, or the failure that ended it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from pipeline.client.failures import AttemptFailure
from pipeline.client.streaming import ChunkAssembler, SseDecoder, SseEvent, read_stream
from schemas.chat import ChatCompletion, ModerationError, ModerationResults

MODERATION_CLEAN = {
    "input": {"type": "moderation_results", "model": "omni", "results": []},
    "output": {"type": "moderation_results", "model": "omni", "results": []},
}
MODERATION_ERROR_OUTPUT = {
    "input": {"type": "moderation_results", "model": "omni", "results": []},
    "output": {"type": "error", "code": "moderation_unavailable", "message": "later"},
}
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def chunk(choices: list[dict[str, object]] | None = None, **extra: object) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test",
        "choices": choices or [],
        **extra,
    }
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def delta(index: int = 0, finish: str | None = None, **fields: object) -> dict[str, object]:
    return {"index": index, "delta": fields, "finish_reason": finish}


CONTENT = [
    chunk([delta(role="assistant", content="")]),
    chunk([delta(content="Hel")]),
    chunk([delta(content="lo")]),
    chunk([delta(finish="stop")]),
]
DONE = b"data: [DONE]\n\n"


async def body_of(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def read(*pieces: bytes) -> ChatCompletion | AttemptFailure:
    return await read_stream(body_of(pieces))


async def completed(*pieces: bytes) -> ChatCompletion:
    result = await read(*pieces)
    assert isinstance(result, ChatCompletion), result
    return result


# --------------------------------------------------------------------------------------------------
# SSE
# --------------------------------------------------------------------------------------------------


def test_events_with_names_multiline_data_and_comments() -> None:
    decoder = SseDecoder()
    events = decoder.feed(b': keep-alive\n\nevent: error\ndata: {"a":\ndata: 1}\n\ndata: x\n\n')
    assert events == [SseEvent(b'{"a":\n1}', "error"), SseEvent(b"x")]


def test_crlf_and_cr_line_ends() -> None:
    assert SseDecoder().feed(b"data: a\r\n\r\ndata: b\r\rdata:c\n\n") == [
        SseEvent(b"a"),
        SseEvent(b"b"),
        SseEvent(b"c"),
    ]


def test_a_crlf_split_across_pieces_is_one_line_end() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r\n") == [SseEvent(b"a")]


STREAM = b"".join([*CONTENT, chunk(moderation=MODERATION_CLEAN), b": ping\r\n\r\n", chunk(usage=USAGE), DONE])


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_events_do_not_depend_on_where_the_body_is_cut(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[start:end] for start, end in zip([0, *points], [*points, len(STREAM)], strict=True)]
    decoder = SseDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    assert events == SseDecoder().feed(STREAM)
    assert len(events) == 7


# --------------------------------------------------------------------------------------------------
# Assembly and moderation capture
# --------------------------------------------------------------------------------------------------


async def test_content_finish_reason_and_usage_are_assembled() -> None:
    completion = await completed(*CONTENT, chunk(usage=USAGE), DONE)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 8


async def test_moderation_chunk_after_the_content_is_captured() -> None:
    completion = await completed(*CONTENT, chunk(moderation=MODERATION_CLEAN), DONE)
    assert completion.moderation is not None
    assert isinstance(completion.moderation.output, ModerationResults)


async def test_moderation_chunk_before_the_content_is_captured() -> None:
    completion = await completed(chunk(moderation=MODERATION_CLEAN), *CONTENT, DONE)
    assert completion.moderation is not None
    assert completion.choices[0].message.content == "Hello"


async def test_moderation_on_a_chunk_with_choices_is_captured() -> None:
    completion = await completed(*CONTENT[:-1], chunk([delta(finish="stop")], moderation=MODERATION_CLEAN), DONE)
    assert completion.moderation is not None


async def test_a_later_moderation_replaces_an_earlier_one_and_a_null_one_does_not() -> None:
    completion = await completed(
        chunk(moderation=MODERATION_CLEAN),
        *CONTENT,
        chunk(moderation=MODERATION_ERROR_OUTPUT),
        chunk(moderation=None),
        DONE,
    )
    assert completion.moderation is not None
    assert isinstance(completion.moderation.output, ModerationError)


async def test_a_stream_without_moderation_assembles_without_it() -> None:
    assert (await completed(*CONTENT, DONE)).moderation is None


async def test_choices_tool_calls_and_refusals_are_assembled_per_index() -> None:
    completion = await completed(
        chunk([delta(0, role="assistant"), delta(1, role="assistant")]),
        chunk([delta(0, tool_calls=[{"index": 0, "id": "call_1", "function": {"name": "look", "arguments": '{"q"'}}])]),
        chunk([delta(1, refusal="I can't")]),
        chunk([delta(0, tool_calls=[{"index": 0, "function": {"arguments": ': "x"}'}}])]),
        chunk([delta(0, finish="tool_calls"), delta(1, finish="stop")]),
        DONE,
    )
    first, second = completion.choices
    assert first.finish_reason == "tool_calls"
    assert first.message.tool_calls is not None
    assert msgspec.to_builtins(first.message.tool_calls) == [
        {"type": "function", "id": "call_1", "function": {"name": "look", "arguments": '{"q": "x"}'}}
    ]
    assert (second.message.refusal, second.message.content) == ("I can't", None)


# --------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------


async def test_a_stream_cut_before_done_is_a_retriable_stream_failure() -> None:
    failure = await read(*CONTENT[:2])
    assert isinstance(failure, AttemptFailure)
    assert (failure.failure, failure.retriable) == ("stream", True)
    assert "truncated" in failure.message


async def test_a_stream_cut_mid_event_is_truncated_too() -> None:
    failure = await read(*CONTENT, DONE[:8])
    assert isinstance(failure, AttemptFailure) and failure.failure == "stream"


async def test_a_mid_stream_server_error_event_is_a_retriable_failure() -> None:
    error = b'data: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
    failure = await read(*CONTENT[:2], error)
    assert isinstance(failure, AttemptFailure)
    assert (failure.failure, failure.retriable, failure.error_type) == ("stream", True, "server_error")


async def test_a_mid_stream_request_error_is_not_retried() -> None:
    error = b'event: error\ndata: {"error": {"message": "bad", "type": "invalid_request_error", "code": "x"}}\n\n'
    failure = await read(*CONTENT[:2], error)
    assert isinstance(failure, AttemptFailure)
    assert (failure.failure, failure.retriable, failure.code) == ("stream", False, "x")


async def test_an_unreadable_error_event_is_a_stream_failure() -> None:
    failure = await read(*CONTENT[:2], b"event: error\ndata: upstream exploded\n\n")
    assert isinstance(failure, AttemptFailure) and failure.failure == "stream"


async def test_an_error_event_left_without_its_blank_line_still_explains_the_cut() -> None:
    failure = await read(*CONTENT[:2], b'data: {"error": {"message": "overloaded", "type": "server_error"}}')
    assert isinstance(failure, AttemptFailure)
    assert failure.error_type == "server_error"


async def test_a_chunk_that_is_not_a_chunk_is_a_decode_failure() -> None:
    failure = await read(*CONTENT[:2], b'data: {"id": "x", "choices": "nope"}\n\n', DONE)
    assert isinstance(failure, AttemptFailure)
    assert (failure.failure, failure.retriable) == ("decode", False)


async def test_an_unknown_moderation_type_in_a_chunk_is_a_decode_failure() -> None:
    unknown = {**MODERATION_CLEAN, "output": {"type": "moderation_verdict", "model": "omni"}}
    failure = await read(*CONTENT, chunk(moderation=unknown), DONE)
    assert isinstance(failure, AttemptFailure) and failure.failure == "decode"
    assert "moderation" in failure.message


async def test_done_before_a_finish_reason_is_a_stream_failure() -> None:
    failure = await read(*CONTENT[:3], DONE)
    assert isinstance(failure, AttemptFailure) and failure.failure == "stream"
    assert "finish_reason" in failure.message


async def test_done_with_no_chunk_at_all_is_a_stream_failure() -> None:
    failure = await read(DONE)
    assert isinstance(failure, AttemptFailure) and failure.failure == "stream"


def test_the_assembler_keeps_the_first_chunks_identity() -> None:
    assembler = ChunkAssembler()
    for event in SseDecoder().feed(b"".join(CONTENT)):
        assembler.add(msgspec.json.decode(event.data, type=__import__("schemas").ChatCompletionChunk))
    completion = assembler.completion()
    assert (completion.id, completion.model, completion.created) == ("chatcmpl-1", "gpt-test", 1)
