"""What the applier publishes for a decision, and the review metrics read from the book."""

from __future__ import annotations

import msgspec

from pipeline.review.desk import ItemFilter
from pipeline.review.item_log import ReviewOrigin
from pipeline.review.metrics import ReviewMetrics
from pipeline.review.publish import outgoing
from pipeline.review.state import Application, ReviewBook
from schemas.decisions import HEADER_DECISION_ID, HEADER_RERUN_BY
from schemas.topics import (
    HEADER_JOB_ID,
    HEADER_ORIGINAL_CONSUMER_GROUP,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TIMESTAMP,
    HEADER_REPLAY_COUNT,
    Job,
    Result,
)
from tests.unit.review.decision_builders import REVIEW_TOPIC, T0, api_error, decision, flagged, ref

ORIGIN = ReviewOrigin(timestamp_ms=T0 - 5, consumer_group="workers", replay_count=2)


def application(kind: str) -> Application:
    book = ReviewBook(REVIEW_TOPIC)
    review = flagged("job-9", metadata={"tenant": "acme"}) if kind == "approve" else api_error("job-9")
    book.add_review(review, ref(3, partition=1), T0, origin=ORIGIN)
    verdict = book.add_decision_record(
        decision("job-9", ref(3, partition=1), kind, "ana", reason="false positive", note="fine"),  # type: ignore[arg-type]
        "review-decisions/2/17",
    )
    assert verdict is not None and verdict.entry.accepted
    found = book.application("review-decisions/2/17")
    assert found is not None
    return found


def test_an_approve_publishes_the_completion_as_a_result_with_the_approval_and_the_sinks_headers() -> None:
    record = outgoing(application("approve"), output_topic="out", input_topic="in", group_id="fallback")
    assert (record.topic, record.key) == ("out", b"job-9")
    result = msgspec.json.decode(record.value, type=Result)
    assert result.content == "A poem about tea." and result.metadata == {"tenant": "acme"}
    assert result.approval is not None
    assert (result.approval.reviewer, result.approval.reason, result.approval.note) == ("ana", "false positive", "fine")
    assert result.approval.decision_id == "review-decisions/2/17"
    assert (result.approval.review.partition, result.approval.review.offset) == (1, 3)
    headers = dict(record.headers)
    assert headers[HEADER_JOB_ID] == b"job-9"
    assert headers[HEADER_ORIGINAL_PARTITION] == b"0"
    assert headers[HEADER_ORIGINAL_TIMESTAMP] == str(T0 - 5).encode()
    assert headers[HEADER_ORIGINAL_CONSUMER_GROUP] == b"workers"
    assert headers[HEADER_REPLAY_COUNT] == b"2"
    assert headers[HEADER_DECISION_ID] == b"review-decisions/2/17"


def test_a_rerun_sends_the_job_back_with_the_replay_count_raised_and_who_sent_it() -> None:
    record = outgoing(application("rerun"), output_topic="out", input_topic="in", group_id="fallback")
    assert (record.topic, record.key) == ("in", b"job-9")
    assert msgspec.json.decode(record.value, type=Job).id == "job-9"
    headers = dict(record.headers)
    assert headers[HEADER_REPLAY_COUNT] == b"3"
    assert headers[HEADER_RERUN_BY] == b"ana"
    assert headers[HEADER_DECISION_ID] == b"review-decisions/2/17"


def test_queue_metrics_are_read_from_the_book_when_scraped() -> None:
    book = ReviewBook(REVIEW_TOPIC)
    book.add_review(flagged("a"), ref(0), T0)
    book.add_review(flagged("b"), ref(1), T0 + 60_000)
    book.add_review(api_error("c"), ref(2), T0)
    book.add_decision_record(decision("b", ref(1), "reject"), "d/0/0")
    metrics = ReviewMetrics()
    metrics.watch(book, lambda: T0 + 120_000)
    metrics.decisions.labels("reject").inc()
    text = metrics.exposition().decode()
    assert 'pipeline_review_queue_items{reason="flagged",state="open"} 1.0' in text
    assert 'pipeline_review_queue_items{reason="flagged",state="decided"} 1.0' in text
    assert 'pipeline_review_queue_items{reason="invalid_job",state="open"} 0.0' in text
    assert 'pipeline_review_oldest_undecided_age_seconds{reason="flagged"} 120.0' in text
    assert 'pipeline_review_oldest_undecided_age_seconds{reason="api_error"} 120.0' in text
    assert 'pipeline_review_decisions_total{decision="reject"} 1.0' in text
    assert book.count(ItemFilter(), T0) == 2
