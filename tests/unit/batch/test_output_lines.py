"""Output and errors lines: the Batch API's format, a body the official SDK reads as a ChatCompletion."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from openai.types.chat import ChatCompletion as SdkChatCompletion

from pipeline.batch.output_lines import error_line, output_line, reason_message, request_line_id
from pipeline.outcomes import Completed
from pipeline.routing import route
from schemas.batches import BatchOutputLine
from schemas.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    Moderation,
    ModerationError,
    ModerationResult,
    ModerationResults,
    Usage,
    UserMessage,
)
from schemas.topics import (
    ApiFailure,
    Cancelled,
    ChoiceFinish,
    ContentFiltered,
    Flagged,
    FlaggedCategory,
    InvalidJob,
    Job,
    ModerationFailed,
    ModerationMissing,
    Reason,
    Result,
    Review,
    Source,
    UnknownFinishReason,
)

SOURCE = Source(topic="prompts", partition=0, offset=7)
TAGS = {"batch_id": "b1", "custom_id": "req-1", "batch_line": "1", "tenant": "acme"}
JOB = Job(id="b1:req-1", messages=[UserMessage(content="Hi")], metadata=TAGS)


def moderation(flagged: bool = False) -> Moderation:
    result = ModerationResult(
        categories={"violence": flagged},
        category_applied_input_types={"violence": ["text"]},
        category_scores={"violence": 0.9 if flagged else 0.01},
        flagged=flagged,
        model="omni-moderation-latest",
    )
    one = ModerationResults(model="omni-moderation-latest", results=[result])
    per_choice = ModerationResults(model="omni-moderation-latest", results=[result, result])
    return Moderation(input=one, output=per_choice)


def completion(**overrides: Any) -> ChatCompletion:
    fields: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            Choice(index=0, finish_reason="stop", message=ChatCompletionMessage(role="assistant", content="Tea.")),
            Choice(index=1, finish_reason="length", message=ChatCompletionMessage(role="assistant", content="Te")),
        ],
        "usage": Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8),
        "moderation": moderation(),
        "system_fingerprint": "fp_1",
    }
    fields.update(overrides)
    return ChatCompletion(**fields)


def decoded(line: bytes) -> dict[str, Any]:
    shape = msgspec.json.decode(line, type=BatchOutputLine)  # the exported contract reads it
    assert shape.id == request_line_id("b1:req-1")
    value: dict[str, Any] = json.loads(line)
    return value


def test_a_clean_batch_job_carries_its_whole_completion_into_the_output_line() -> None:
    routed = route(JOB, SOURCE, Completed(completion=completion(), attempts=1, latency_ms=12.0))
    value = msgspec.json.encode(routed.result)  # type: ignore[union-attr]
    line = decoded(output_line(value, "req-1", timestamp_ms=1_764_000_100_000))
    assert line["custom_id"] == "req-1" and line["error"] is None
    response = line["response"]
    assert response["status_code"] == 200 and response["request_id"] == "b1:req-1"
    body = SdkChatCompletion.model_validate(response["body"])
    assert body.id == "chatcmpl-1" and len(body.choices) == 2 and body.system_fingerprint == "fp_1"
    assert response["body"]["moderation"]["input"]["type"] == "moderation_results", "moderation included"
    assert response["body"]["created"] == 1_764_000_000, "the provider's own body, not a rebuilt one"


def test_a_result_without_the_completion_gets_a_rebuilt_body_the_sdk_reads() -> None:
    result = Result(
        id="b1:req-1",
        model="gpt-4o-mini",
        content="Tea.",
        finish_reason="stop",
        usage=Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8),
        moderation=moderation(),
        metadata=TAGS,
        attempts=1,
        latency_ms=3.0,
        completion_id="chatcmpl-9",
        source=SOURCE,
    )
    line = decoded(output_line(msgspec.json.encode(result), "req-1", timestamp_ms=1_764_000_100_999))
    body = SdkChatCompletion.model_validate(line["response"]["body"])
    assert (body.id, body.created, body.model) == ("chatcmpl-9", 1_764_000_100, "gpt-4o-mini")
    assert body.choices[0].message.content == "Tea." and body.choices[0].finish_reason == "stop"
    assert body.usage is not None and body.usage.total_tokens == 8
    assert line["response"]["body"]["moderation"]["output"]["type"] == "moderation_results"


def test_a_result_of_a_job_outside_batches_does_not_carry_the_completion() -> None:
    plain = Job(id="j", messages=[UserMessage(content="Hi")])
    routed = route(plain, SOURCE, Completed(completion=completion(), attempts=1, latency_ms=1.0))
    assert routed.result.completion is None  # type: ignore[union-attr]


def test_a_flagged_job_is_an_error_line_with_its_completion_under_response() -> None:
    routed = route(JOB, SOURCE, Completed(completion=completion(moderation=moderation(True)), attempts=1, latency_ms=1))
    line = decoded(error_line(msgspec.json.encode(routed.review), "req-1"))  # type: ignore[union-attr]
    assert line["error"]["code"] == "flagged"
    assert line["error"]["message"].startswith("flagged by moderation (both): input violence 0.90")
    assert line["response"]["status_code"] == 200
    SdkChatCompletion.model_validate(line["response"]["body"])


def test_an_api_error_with_a_status_is_an_error_line_with_the_providers_status_and_error_body() -> None:
    reason = ApiFailure(failure="http_status", message="HTTP 400: too long", attempts=1, status=400, code="ctx")
    review = Review(id="b1:req-1", reason=reason, source=SOURCE, job=JOB, metadata=TAGS)
    line = decoded(error_line(msgspec.json.encode(review), "req-1"))
    assert line["error"] == {"code": "api_error", "message": "http_status after 1 attempt(s): HTTP 400: too long"}
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"] == {"error": {"message": "HTTP 400: too long", "code": "ctx"}}


def test_a_cancelled_job_is_an_error_line_without_a_response() -> None:
    review = Review(id="b1:req-1", reason=Cancelled(batch_id="b1", cancelled_at=1), source=SOURCE, job=JOB)
    line = decoded(error_line(msgspec.json.encode(review), "req-1"))
    assert line["response"] is None
    assert line["error"] == {"code": "cancelled", "message": "batch b1 was cancelled before this request was sent"}


REASONS: list[Reason] = [
    Flagged(side="input", categories=[FlaggedCategory(side="input", category="hate", score=0.5, source="threshold")]),
    ModerationFailed(side="output", code="moderation_unavailable", message="try later"),
    ModerationMissing(detail="moderation was requested but the response carried none"),
    ContentFiltered(choices=[0]),
    UnknownFinishReason(choices=[ChoiceFinish(index=0, finish_reason="safety_stop")]),
    ApiFailure(failure="timeout", message="no answer", attempts=5),
    InvalidJob(error="bad", source=SOURCE, raw="{}", raw_encoding="utf-8", raw_size=2),
    Cancelled(batch_id="b1", cancelled_at=1),
]


@pytest.mark.parametrize("reason", REASONS, ids=lambda r: type(r).__name__)
def test_every_reason_has_a_sentence(reason: Reason) -> None:
    message = reason_message(reason)
    assert message and "\n" not in message


def test_a_moderation_error_side_reads_in_its_sentence() -> None:
    failed = Moderation(input=moderation().input, output=ModerationError(code="x", message="y"))
    routed = route(JOB, SOURCE, Completed(completion=completion(moderation=failed), attempts=1, latency_ms=1))
    line = decoded(error_line(msgspec.json.encode(routed.review), "req-1"))  # type: ignore[union-attr]
    assert line["error"] == {"code": "moderation_error", "message": "moderation failed (output): x: y"}
