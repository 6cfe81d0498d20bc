"""The topic contracts: what other services produce to and consume from the pipeline's topics.

- **Job** (input topic, default ``prompts``): one prompt job per record, JSON; the Kafka key is optional.
- **Result** (output topic, default ``completions``): a clean, moderated completion, keyed by job id.
- **Review** (review topic, default ``review``): everything that is not clean, with a typed ``reason``
  (a tagged union on ``kind``), keyed by job id when known.

Every record the pipeline produces carries the headers named ``HEADER_*`` below, after the pattern of
Spring Kafka's dead-letter headers (``kafka_dlt-original-topic`` …) with our own ``pipeline_`` prefix.
Values are UTF-8 text (partition and offset in decimal), so any consumer can read them without a codec.
"""

from __future__ import annotations

import base64
from typing import Annotated, Final, Literal

import msgspec

from schemas.chat import (
    ChatCompletion,
    KnownFinishReason,
    Message,
    Metadata,
    Moderation,
    SamplingParams,
    Usage,
    Wire,
)

HEADER_JOB_ID: Final = "pipeline_job-id"
HEADER_ORIGINAL_TOPIC: Final = "pipeline_original-topic"
HEADER_ORIGINAL_PARTITION: Final = "pipeline_original-partition"
HEADER_ORIGINAL_OFFSET: Final = "pipeline_original-offset"
HEADER_ORIGINAL_TIMESTAMP: Final = "pipeline_original-timestamp"
HEADER_ORIGINAL_CONSUMER_GROUP: Final = "pipeline_original-consumer-group"
HEADER_REASON_KIND: Final = "pipeline_reason-kind"
HEADER_REPLAY_COUNT: Final = "pipeline_replay-count"

#: Largest job record the decoder accepts by default; larger ones are ``invalid_job`` without parsing.
DEFAULT_MAX_JOB_BYTES: Final = 1_048_576
#: How much of an invalid payload a review record carries (the whole record stays in the input topic).
MAX_RAW_IN_REVIEW: Final = 65_536

JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class JobParams(SamplingParams, frozen=True, forbid_unknown_fields=True):
    """Request parameters a job passes through. Unknown names are rejected so a typo is not silently ignored."""


class Job(Wire, frozen=True):
    """A prompt job: the messages to complete and how, plus metadata carried to the result."""

    id: JobId
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    model: str | None = None
    params: JobParams | None = None
    moderation_model: str | None = None
    metadata: Metadata | None = None


class Source(Wire, frozen=True):
    """Where a record came from: enough to find the original in the input topic."""

    topic: str
    partition: int
    offset: int


class Result(Wire, frozen=True):
    """A completion that passed moderation on both sides (and whose every choice ended for a known reason)."""

    id: str
    model: str
    content: str | None
    finish_reason: KnownFinishReason
    usage: Usage | None
    moderation: Moderation | None
    metadata: Metadata | None
    attempts: int
    latency_ms: float
    completion_id: str
    source: Source
    #: Set when a reviewer released this completion from review (``approve`` in the review console).
    approval: Approval | None = None
    #: The provider's whole answer, carried only for jobs of a batch (``metadata["batch_id"]``, see
    #: :mod:`schemas.batches`) so that ``pipeline batch results`` writes it as the Batch API does; dropped
    #: (and rebuilt from the fields above) when it would not fit the record size limit.
    completion: ChatCompletion | None = None
    #: USD the provider billed for this job, over every attempt (paid retries too); null when the model has no
    #: price in the pipeline's table (``PIPELINE_PRICES_FILE``) or no attempt reported usage.
    cost_usd: float | None = None


class Approval(Wire, frozen=True):
    """Who released a reviewed completion to the output topic, when (epoch ms) and why."""

    reviewer: str
    at: int
    #: ``topic/partition/offset`` of the decision record on the review-decisions topic.
    decision_id: str
    #: Where the review record was, and why it was there.
    review: Source
    review_reason: str
    reason: str | None = None
    note: str | None = None


# --------------------------------------------------------------------------------------------------
# Review reasons: a tagged union on ``kind``
# --------------------------------------------------------------------------------------------------

Side = Literal["input", "output"]
Sides = Literal["input", "output", "both"]


class FlaggedCategory(Wire, frozen=True):
    side: Side
    category: str
    score: float
    #: ``provider`` when the moderation result flagged it, ``threshold`` when our stricter threshold did.
    source: Literal["provider", "threshold"]


class Flagged(Wire, frozen=True, tag_field="kind", tag="flagged"):
    side: Sides
    categories: list[FlaggedCategory]


class ModerationFailed(Wire, frozen=True, tag_field="kind", tag="moderation_error"):
    """Moderation returned an ``error`` on a side; with ``both``, code and message are the input side's."""

    side: Sides
    code: str
    message: str


class ModerationMissing(Wire, frozen=True, tag_field="kind", tag="moderation_missing"):
    detail: str


class ContentFiltered(Wire, frozen=True, tag_field="kind", tag="content_filter"):
    choices: list[int]


class ChoiceFinish(Wire, frozen=True):
    index: int
    finish_reason: str


class UnknownFinishReason(Wire, frozen=True, tag_field="kind", tag="unknown_finish_reason"):
    """A choice ended for a reason this version does not know (the API added one): whether the answer is
    complete, cut or filtered cannot be told, so a person looks. The completion is in the review record."""

    choices: list[ChoiceFinish]


ApiFailureKind = Literal["http_status", "transport", "timeout", "decode", "stream", "deadline", "oversize", "internal"]


class ApiFailure(Wire, frozen=True, tag_field="kind", tag="api_error"):
    """The provider call failed after retries (or without them, for errors that must not be retried)."""

    failure: ApiFailureKind
    message: str
    attempts: int
    status: int | None = None
    error_type: str | None = None
    code: str | None = None


class Cancelled(Wire, frozen=True, tag_field="kind", tag="cancelled"):
    """The job's batch was cancelled (``pipeline batch cancel``) before the job was called: nothing was sent to
    the provider. Only jobs published before the cancellation are cancelled, so a replayed job runs."""

    batch_id: str
    #: When the batch was cancelled (epoch ms).
    cancelled_at: int


class BudgetExceeded(Wire, frozen=True, tag_field="kind", tag="budget_exceeded"):
    """The job's tenant had spent its budget for the ``period`` (a UTC day or month) when the job came up:
    nothing was sent to the provider. ``pipeline replay --reason budget_exceeded`` sends it again (once the
    period has rolled over or the budget was raised)."""

    tenant: str
    #: USD spent by the tenant in the period, across all workers, as this worker knew it.
    spent_usd: float
    budget_usd: float
    period: Literal["day", "month"]


class InvalidJob(Wire, frozen=True, tag_field="kind", tag="invalid_job"):
    """The record is not a valid job; nothing was sent to the provider."""

    error: str
    source: Source
    raw: str
    raw_encoding: Literal["utf-8", "base64"]
    raw_size: int
    raw_truncated: bool = False
    path: str | None = None


Reason = (
    Flagged
    | ModerationFailed
    | ModerationMissing
    | ContentFiltered
    | UnknownFinishReason
    | ApiFailure
    | InvalidJob
    | Cancelled
    | BudgetExceeded
)
ReasonKind = Literal[
    "flagged",
    "moderation_error",
    "moderation_missing",
    "content_filter",
    "unknown_finish_reason",
    "api_error",
    "invalid_job",
    "cancelled",
    "budget_exceeded",
]


def reason_kind(reason: Reason) -> ReasonKind:
    """The ``kind`` tag of a reason, as written on the wire and in the reason-kind header."""
    kind: ReasonKind = reason.__struct_config__.tag  # type: ignore[assignment]
    return kind


REASON_KINDS: Final[tuple[ReasonKind, ...]] = (
    "flagged",
    "moderation_error",
    "moderation_missing",
    "content_filter",
    "unknown_finish_reason",
    "api_error",
    "invalid_job",
    "cancelled",
    "budget_exceeded",
)


class Review(Wire, frozen=True):
    """A job that must be looked at by a person (or replayed), with why and everything known about it."""

    id: str | None
    reason: Reason
    source: Source
    job: Job | None = None
    completion: ChatCompletion | None = None
    metadata: Metadata | None = None
    attempts: int | None = None
    latency_ms: float | None = None
    #: USD the provider billed for this job (see ``Result.cost_usd``); null when unknown or nothing was paid.
    cost_usd: float | None = None


# --------------------------------------------------------------------------------------------------
# Decoding a job record: a value, never an exception
# --------------------------------------------------------------------------------------------------


class JobDecodeError(Wire, frozen=True):
    """Why a record is not a job, in words a producer can act on."""

    error: str
    path: str | None = None


_job_decoder: Final = msgspec.json.Decoder(Job)


def decode_job(raw: bytes, *, max_bytes: int = DEFAULT_MAX_JOB_BYTES) -> Job | JobDecodeError:
    """Decode one input record; every malformation becomes a :class:`JobDecodeError`."""
    if len(raw) > max_bytes:
        return JobDecodeError(error=f"job is {len(raw)} bytes, larger than the limit of {max_bytes}")
    try:
        return _job_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        path = message.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in message else None
        return JobDecodeError(error=message, path=path)
    except msgspec.DecodeError as exc:
        return JobDecodeError(error=f"not valid JSON: {exc}")
    except UnicodeDecodeError as exc:  # msgspec raises it for invalid UTF-8 inside a string
        return JobDecodeError(error=f"not valid UTF-8: byte {exc.start} of a string is {exc.reason}")
    except RecursionError:
        return JobDecodeError(error="not a valid job: nested too deeply")


def _printable_raw(kept: bytes, truncated: bool) -> tuple[str, Literal["utf-8", "base64"]]:
    """UTF-8 text when the bytes are UTF-8 (a character cut by truncation is dropped), else base64."""
    for cut in range(4 if truncated else 1):
        try:
            return kept[: len(kept) - cut].decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            continue
    return base64.b64encode(kept).decode("ascii"), "base64"


def invalid_job(raw: bytes, error: JobDecodeError, source: Source) -> InvalidJob:
    """The review reason for a record that failed :func:`decode_job`, carrying (a capped copy of) the raw bytes."""
    truncated = len(raw) > MAX_RAW_IN_REVIEW
    text, encoding = _printable_raw(raw[:MAX_RAW_IN_REVIEW], truncated)
    return InvalidJob(
        error=error.error,
        path=error.path,
        source=source,
        raw=text,
        raw_encoding=encoding,
        raw_size=len(raw),
        raw_truncated=truncated,
    )
