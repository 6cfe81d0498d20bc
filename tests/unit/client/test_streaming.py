"""SSE decoding and chunk assembly: one ChatCompletion out of a stream, or the failure that ended it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from pipeline.client.failures import AttemptFailure
from pipeline.client.streaming import ChunkAssembler, SseDecoder, SseEvent, read_stream, worse_moderation
from pipeline.outcomes import Completed
from pipeline.routing import Thresholds, review_reason
from schemas.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    Moderation,
    ModerationError,
    ModerationResult,
    ModerationResults,
)
from schemas.topics import Flagged, ModerationFailed, ModerationMissing

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


def verdict(scores: dict[str, float], *flagged: str) -> dict[str, object]:
    return {
        "type": "moderation_result",
        "model": "omni",
        "categories": {name: name in flagged for name in scores},
        "category_applied_input_types": {name: ["text"] for name in scores},
        "category_scores": scores,
        "flagged": bool(flagged),
    }


def moderation(*output: dict[str, object], error: bool = False) -> dict[str, object]:
    """Clean input; the output side an error, or results with these verdicts."""
    side = (
        {"type": "error", "code": "moderation_unavailable", "message": "later"}
        if error
        else {"type": "moderation_results", "model": "omni", "results": list(output)}
    )
    return {"input": {"type": "moderation_results", "model": "omni", "results": [CLEAN]}, "output": side}


CLEAN = verdict({"violence": 0.0001, "hate": 0.0002})
FLAGGED = verdict({"violence": 0.93, "hate": 0.0002}, "violence")


async def assembled_moderation(*moderations: dict[str, object]) -> Moderation:
    completion = await completed(*CONTENT, *(chunk(moderation=m) for m in moderations), chunk(moderation=None), DONE)
    assert completion.moderation is not None
    return completion.moderation


async def test_a_clean_moderation_chunk_after_a_flagged_one_does_not_clean_the_job() -> None:
    merged = await assembled_moderation(moderation(FLAGGED), moderation(CLEAN))
    assert isinstance(merged.output, ModerationResults)
    (result,) = merged.output.results
    assert result.flagged and result.categories["violence"] and result.category_scores["violence"] == 0.93
    assert isinstance(review_reason(completed_with(merged)), Flagged)


async def test_a_moderation_error_sticks_whichever_chunk_brings_it() -> None:
    for order in [(moderation(error=True), moderation(CLEAN)), (moderation(CLEAN), moderation(error=True))]:
        merged = await assembled_moderation(*order)
        assert isinstance(merged.output, ModerationError)
        assert isinstance(review_reason(completed_with(merged)), ModerationFailed)


async def test_an_empty_result_list_sticks_so_the_job_stays_missing_moderation() -> None:
    merged = await assembled_moderation(moderation(), moderation(CLEAN))
    assert isinstance(merged.output, ModerationResults) and merged.output.results == []


async def test_results_merge_choice_by_choice_and_a_choice_left_without_one_stays_without() -> None:
    merged = await assembled_moderation(moderation(CLEAN, FLAGGED), moderation(FLAGGED, CLEAN))
    assert isinstance(merged.output, ModerationResults)
    assert [result.flagged for result in merged.output.results] == [True, True]
    short = await assembled_moderation(moderation(CLEAN, CLEAN), moderation(CLEAN))
    assert isinstance(review_reason(completed_with(short, choices=2)), ModerationMissing)


SCORES = st.dictionaries(st.sampled_from(["violence", "hate", "sexual"]), st.floats(0, 1), min_size=1)
RESULTS = st.builds(
    lambda scores, flag: ModerationResult(
        categories={name: flag and score >= 0.5 for name, score in scores.items()},
        category_applied_input_types={name: ["text"] for name in scores},
        category_scores=scores,
        flagged=flag and max(scores.values()) >= 0.5,
        model="omni",
    ),
    SCORES,
    st.booleans(),
)
SIDES = st.one_of(
    st.builds(lambda results: ModerationResults(model="omni", results=results), st.lists(RESULTS, max_size=3)),
    st.just(ModerationError(code="moderation_unavailable", message="later")),
)
MODERATIONS = st.builds(Moderation, input=SIDES, output=SIDES)
THRESHOLDS = st.builds(
    Thresholds,
    any_category=st.none() | st.floats(0.01, 1),
    per_category=st.dictionaries(st.sampled_from(["violence", "hate", "sexual"]), st.floats(0.01, 1)),
)


@given(MODERATIONS, MODERATIONS, THRESHOLDS)
def test_two_moderation_chunks_route_at_least_as_strictly_as_either_alone(
    first: Moderation, second: Moderation, thresholds: Thresholds
) -> None:
    merged = worse_moderation(first, second)
    for alone in (first, second):
        if review_reason(completed_with(alone, choices=2), thresholds) is not None:
            assert review_reason(completed_with(merged, choices=2), thresholds) is not None


def completed_with(moderation: Moderation, choices: int = 1) -> Completed:
    message = ChatCompletionMessage(role="assistant", content="Hello")
    completion = ChatCompletion(
        id="chatcmpl-1",
        object="chat.completion",
        created=1,
        model="gpt-test",
        choices=[Choice(index=i, finish_reason="stop", message=message) for i in range(choices)],
        moderation=moderation,
    )
    return Completed(completion=completion, attempts=1, latency_ms=1.0)


async def test_finish_reasons_tiers_and_roles_the_api_adds_pass_through_a_stream() -> None:
    completion = await completed(
        chunk([delta(role="critic", content="Hi")], service_tier="priority_plus"),
        chunk([delta(finish="safety_stop")], service_tier="priority_plus"),
        DONE,
    )
    assert completion.service_tier == "priority_plus"
    assert completion.choices[0].finish_reason == "safety_stop"
    assert completion.choices[0].message.content == "Hi"


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
