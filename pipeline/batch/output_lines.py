"""The lines of a batch's output and errors files, in the Batch API's format, from our Result and Review records.

**Output line** (a clean job): ``{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"},
"error": null}``. ``body`` is the provider's ``chat.completion`` as the worker received it (moderation
included): the worker carries it in the Result of a batch's job (``Result.completion``). A Result without it
(one released by a reviewer's approval, or one whose copy was dropped to fit the record size limit) gets a
**rebuilt** body: ``id`` (the completion id), ``object``, ``created`` (the result record's time, not the
provider's), ``model``, one choice (index 0: the assistant's ``content`` and ``finish_reason``), ``usage`` and
``moderation``, all from the Result. What a rebuilt body cannot hold: choices beyond the first, tool calls,
refusals, annotations, audio, logprobs, ``system_fingerprint`` and ``service_tier``.

**Errors line** (a job routed to review): ``"error": {"code": <reason.kind>, "message"}``, and ``response``
the completion (status 200) when there was one, or the provider's status and error body when an
``api_error`` came with one, else null.

``id`` is ``batch_req_`` and a digest of the job id, and ``request_id`` the ``X-Client-Request-Id`` the
client sent for the job (the job id), so ``results`` writes the same bytes every time it runs.
"""

from __future__ import annotations

import hashlib
from typing import Final, assert_never

import msgspec

from pipeline.client.request import client_request_id
from schemas.batches import BatchError, BatchOutputLine, BatchResponse
from schemas.chat import ApiErrorDetail, ChatCompletion, ChatCompletionMessage, Choice, ErrorBody
from schemas.topics import (
    ApiFailure,
    BudgetExceeded,
    Cancelled,
    ContentFiltered,
    Flagged,
    FlaggedCategory,
    InvalidJob,
    ModerationFailed,
    ModerationMissing,
    Reason,
    Result,
    UnknownFinishReason,
    reason_kind,
)

_encoder: Final = msgspec.json.Encoder()


class _OutputView(msgspec.Struct):
    """A Result as far as an output line needs it when the whole completion came along."""

    id: str
    #: Empty when absent (msgspec cannot make a Raw optional).
    completion: msgspec.Raw = msgspec.Raw()


class _ReviewView(msgspec.Struct):
    id: str | None
    reason: Reason
    completion: msgspec.Raw = msgspec.Raw()


def _present(raw: msgspec.Raw) -> msgspec.Raw | None:
    return raw if raw and bytes(raw) != b"null" else None


_output_view: Final = msgspec.json.Decoder(_OutputView)
_result_decoder: Final = msgspec.json.Decoder(Result)
_review_view: Final = msgspec.json.Decoder(_ReviewView)


def request_line_id(job_id: str) -> str:
    return "batch_req_" + hashlib.blake2b(job_id.encode(), digest_size=12).hexdigest()


def rebuilt_completion(result: Result, created_s: int) -> ChatCompletion:
    """A ``chat.completion`` from a Result's fields (see the module docstring for what it cannot hold)."""
    message = ChatCompletionMessage(role="assistant", content=result.content)
    return ChatCompletion(
        id=result.completion_id,
        object="chat.completion",
        created=created_s,
        model=result.model,
        choices=[Choice(index=0, finish_reason=result.finish_reason, message=message)],
        usage=result.usage,
        moderation=result.moderation,
    )


def output_line(value: bytes, custom_id: str, timestamp_ms: int) -> bytes:
    """The output file's line for a Result record (``timestamp_ms``: the record's, for a rebuilt body)."""
    view = _output_view.decode(value)
    body = _present(view.completion)
    if body is None:
        rebuilt = rebuilt_completion(_result_decoder.decode(value), max(0, timestamp_ms) // 1000)
        body = msgspec.Raw(_encoder.encode(rebuilt))
    response = BatchResponse(status_code=200, request_id=client_request_id(view.id), body=body)
    line = BatchOutputLine(id=request_line_id(view.id), custom_id=custom_id, response=response, error=None)
    return _encoder.encode(line)


def _error_response(job_id: str, reason: Reason, completion: msgspec.Raw | None) -> BatchResponse | None:
    request_id = client_request_id(job_id)
    if completion is not None:
        return BatchResponse(status_code=200, request_id=request_id, body=completion)
    if isinstance(reason, ApiFailure) and reason.status is not None:
        detail = ApiErrorDetail(message=reason.message, type=reason.error_type, code=reason.code)
        body = msgspec.Raw(_encoder.encode(ErrorBody(error=detail)))
        return BatchResponse(status_code=reason.status, request_id=request_id, body=body)
    return None


def error_line(value: bytes, custom_id: str) -> bytes:
    """The errors file's line for a Review record."""
    view = _review_view.decode(value)
    job_id = view.id or custom_id
    error = BatchError(code=reason_kind(view.reason), message=reason_message(view.reason))
    response = _error_response(job_id, view.reason, _present(view.completion))
    line = BatchOutputLine(id=request_line_id(job_id), custom_id=custom_id, response=response, error=error)
    return _encoder.encode(line)


def _flagged_category(category: FlaggedCategory, *, with_side: bool) -> str:
    side = f"{category.side} " if with_side else ""
    return f"{side}{category.category} {category.score:.2f}"


def reason_message(reason: Reason) -> str:
    """A review reason in a sentence, for the errors file."""
    match reason:
        case Flagged(side=side, categories=categories):
            top = ", ".join(_flagged_category(c, with_side=side == "both") for c in categories[:5])
            return f"flagged by moderation ({side}): {top}"
        case ModerationFailed(side=side, code=code, message=message):
            return f"moderation failed ({side}): {code}: {message}"
        case ModerationMissing(detail=detail):
            return f"moderation missing: {detail}"
        case ContentFiltered(choices=choices):
            return f"choice {', '.join(map(str, choices))} finished with content_filter"
        case UnknownFinishReason(choices=choices):
            finishes = ", ".join(f"choice {c.index} with {c.finish_reason!r}" for c in choices)
            return f"finished for a reason this version does not know: {finishes}"
        case ApiFailure(failure=failure, message=message, attempts=attempts):
            return f"{failure} after {attempts} attempt(s): {message}"
        case InvalidJob(error=error):
            return f"not a valid job: {error}"
        case Cancelled(batch_id=batch_id):
            return f"batch {batch_id} was cancelled before this request was sent"
        case BudgetExceeded(tenant=tenant, spent_usd=spent, budget_usd=budget, period=period):
            return f"tenant {tenant!r} had spent ${spent:.2f} of its ${budget:.2f} {period} budget; not sent"
        case _:
            assert_never(reason)
