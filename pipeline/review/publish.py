"""What the applier publishes for an accepted decision (pure functions of the decision and its review record).

- **approve**: a :class:`~schemas.topics.Result` on the output topic, built from the review's completion like
  the worker builds one (first choice's content and finish reason, usage, moderation, metadata, attempts,
  latency, completion id, source), with its ``approval``; the headers the worker's sink writes (job id, the
  original record's coordinates, timestamp and consumer group, a replay count if any), keyed by job id.
- **rerun**: the review's job on the input topic, as ``pipeline replay`` sends it: keyed by job id, the
  replay count raised by one, and who sent it back (``pipeline_rerun-by``).

Both carry ``pipeline_decision-id``, by which a restarted applier finds a record it published before a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from pipeline.kafka import record_headers
from pipeline.review.state import Application
from schemas.chat import is_known_finish_reason
from schemas.decisions import HEADER_DECISION_ID, HEADER_RERUN_BY
from schemas.topics import HEADER_JOB_ID, HEADER_REPLAY_COUNT, Approval, Result, Source, reason_kind

_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True)
class Outgoing:
    """A record ready to publish (the partition is chosen by the applier)."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def job_id_of(application: Application) -> str:
    review = application.review
    if review.id:
        return review.id
    return review.job.id if review.job is not None else application.key


def approved_result(application: Application) -> Result:
    """The Result an approve publishes. The fold only accepts an approve whose review holds a completion whose
    first choice ended for a known reason (:func:`pipeline.review.items.decision_problem`)."""
    review, decision, ref = application.review, application.decision, application.ref
    completion = review.completion
    assert completion is not None and completion.choices, "an accepted approve has a completion"
    first = completion.choices[0]
    finish_reason = first.finish_reason
    assert is_known_finish_reason(finish_reason), "an accepted approve has a known finish reason"
    return Result(
        id=job_id_of(application),
        model=completion.model,
        content=first.message.content,
        finish_reason=finish_reason,
        usage=completion.usage,
        moderation=completion.moderation,
        metadata=review.metadata,
        attempts=review.attempts or 0,
        latency_ms=review.latency_ms or 0.0,
        completion_id=completion.id,
        source=review.source,
        approval=Approval(
            reviewer=decision.reviewer,
            at=decision.at,
            decision_id=application.decision_id,
            review=Source(topic=ref.topic, partition=ref.partition, offset=ref.offset),
            review_reason=reason_kind(review.reason),
            reason=decision.reason,
            note=decision.note,
        ),
    )


def outgoing(application: Application, *, output_topic: str, input_topic: str, group_id: str) -> Outgoing:
    """The record an accepted approve or rerun publishes; ``group_id`` names the workers' group when the review
    record does not."""
    decision_id = application.decision_id.encode()
    job_id = job_id_of(application)
    origin = application.origin
    if application.decision.decision == "rerun":
        job = application.review.job
        assert job is not None, "an accepted rerun has a job"
        headers = [
            (HEADER_JOB_ID, job.id.encode()),
            (HEADER_REPLAY_COUNT, str(origin.replay_count + 1).encode()),
            (HEADER_RERUN_BY, application.decision.reviewer.encode()),
            (HEADER_DECISION_ID, decision_id),
        ]
        return Outgoing(input_topic, job.id.encode(), _encoder.encode(job), headers)
    source = application.review.source
    headers = record_headers(
        job_id=job_id,
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        timestamp_ms=origin.timestamp_ms,
        group_id=origin.consumer_group or group_id,
        replay_count=str(origin.replay_count).encode() if origin.replay_count else None,
    )
    headers.append((HEADER_DECISION_ID, decision_id))
    return Outgoing(output_topic, job_id.encode(), _encoder.encode(approved_result(application)), headers)
