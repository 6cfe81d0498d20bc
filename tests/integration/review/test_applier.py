"""The applier against a real broker: approve publishes one Result, rerun re-sends the job, and a crash at any
point between "decided" and "applied" neither loses nor doubles what is published."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
import pytest

from pipeline.kafka import KafkaSettings
from pipeline.review.applier import Applier, Stage
from pipeline.review.desk import Reviewer
from pipeline.review.follower import LogFollower
from pipeline.review.log import KafkaDesk
from pipeline.review.service import ReviewService
from pipeline.review.state import Application
from schemas.decisions import HEADER_DECISION_ID, HEADER_RERUN_BY, Applied, Applying
from schemas.topics import (
    HEADER_JOB_ID,
    HEADER_ORIGINAL_CONSUMER_GROUP,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_TIMESTAMP,
    HEADER_ORIGINAL_TOPIC,
    HEADER_REPLAY_COUNT,
    Job,
    Result,
)
from tests.fixtures.broker import Broker
from tests.integration.review.support import (
    FAST_GROUP,
    ReviewTopics,
    create_topics,
    header,
    publish_reviews,
    read_topic,
    running_desk,
)
from tests.unit.review.decision_builders import api_error, flagged

ANA = Reviewer("ana")


def applied(desk: KafkaDesk, key: str) -> bool:
    item = desk.item(key)
    return item is not None and item.applied is not None


class Crash(Exception):
    """Stands for the process dying at a chosen point."""


@contextlib.asynccontextmanager
async def following(kafka: KafkaSettings, topics: ReviewTopics) -> AsyncIterator[LogFollower]:
    follower = LogFollower(kafka, review_topic=topics.review, decisions_topic=topics.decisions)
    async with follower:
        await follower.wait_ready(30)
        yield follower


def applier(
    kafka: KafkaSettings, topics: ReviewTopics, follower: LogFollower, crash_at: Stage | None = None
) -> Applier:
    async def hook(stage: Stage, _application: Application) -> None:
        if stage == crash_at:
            raise Crash(stage)

    return Applier(
        kafka,
        follower,
        output_topic=topics.output,
        input_topic=topics.input,
        group_id=topics.group,
        hook=hook,
        **FAST_GROUP,
    )


async def test_approve_publishes_exactly_one_result_carrying_the_approval(
    kafka_broker: Broker, topic_prefix: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    review = flagged("job-1", metadata={"tenant": "acme"}, source_offset=41)
    (where,) = await publish_reviews(kafka, topics.review, [review])
    async with ReviewService(kafka, topics.worker()) as service:
        desk = service.desk
        outcome = await desk.decide("job-1", "approve", ANA, reason="false positive", note="satire")
        assert outcome.accepted
        await desk.follower.wait_until(
            lambda: (item := desk.item("job-1")) is not None and item.applied is not None, 30
        )
        item = desk.item("job-1")
        assert item is not None and item.applied is not None
        metrics = service.metrics.exposition().decode()
        assert 'pipeline_review_decisions_total{decision="approve"} 1.0' in metrics
        assert 'pipeline_review_applied_total{decision="approve"} 1.0' in metrics
        assert 'pipeline_review_queue_items{reason="flagged",state="decided"} 1.0' in metrics
    (published,) = await read_topic(kafka, topics.output)
    assert (published.partition, published.offset) == (item.applied.partition, item.applied.offset)
    assert outcome.record is not None
    decision_id = item.applied.decision_id
    result = msgspec.json.decode(published.value or b"", type=Result)
    assert result.id == "job-1" and result.content == "A poem about tea." and result.finish_reason == "stop"
    assert result.metadata == {"tenant": "acme"} and result.source == review.source
    assert review.completion is not None and result.completion_id == review.completion.id
    approval = result.approval
    assert approval is not None
    assert (approval.reviewer, approval.reason, approval.note, approval.review_reason) == (
        "ana",
        "false positive",
        "satire",
        "flagged",
    )
    assert approval.decision_id == decision_id and approval.review.offset == where.offset
    assert published.key == b"job-1"
    assert header(published, HEADER_DECISION_ID) == decision_id.encode()
    assert header(published, HEADER_JOB_ID) == b"job-1"
    assert header(published, HEADER_ORIGINAL_TOPIC) == b"prompts"
    assert header(published, HEADER_ORIGINAL_OFFSET) == b"41"
    assert header(published, HEADER_ORIGINAL_TIMESTAMP) == b"1700000000000"
    assert header(published, HEADER_ORIGINAL_CONSUMER_GROUP) == b"workers"


async def test_rerun_sends_the_job_back_with_its_replay_count_raised(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    review = api_error("job-2")
    await publish_reviews(kafka, topics.review, [review], extra_headers=[(HEADER_REPLAY_COUNT, b"1")])
    async with ReviewService(kafka, topics.worker()) as service:
        desk = service.desk
        assert (await desk.decide("job-2", "rerun", ANA)).accepted
        await desk.follower.wait_until(
            lambda: (item := desk.item("job-2")) is not None and item.applied is not None, 30
        )
    (sent,) = await read_topic(kafka, topics.input)
    assert msgspec.json.decode(sent.value or b"", type=Job) == review.job
    assert sent.key == b"job-2"
    assert header(sent, HEADER_REPLAY_COUNT) == b"2"
    assert header(sent, HEADER_RERUN_BY) == b"ana"
    assert header(sent, HEADER_JOB_ID) == b"job-2"


@pytest.mark.parametrize("crash_at", ["applying-written", "published"])
async def test_a_crash_between_decided_and_applied_publishes_exactly_once(
    kafka_broker: Broker, topic_prefix: str, crash_at: Stage
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    await publish_reviews(kafka, topics.review, [flagged("job-3")])
    async with running_desk(kafka, topics) as desk:
        decided = await desk.decide("job-3", "approve", ANA)
        assert decided.accepted
    async with following(kafka, topics) as follower:
        with pytest.raises(Crash):
            await asyncio.wait_for(applier(kafka, topics, follower, crash_at=crash_at).run(), 60)
    async with following(kafka, topics) as follower:  # a new process: the state comes from the log alone
        (left,) = follower.book.unapplied()
        assert len(left.applying) == 1
        task = asyncio.create_task(applier(kafka, topics, follower).run())
        try:
            await follower.wait_until(lambda: not follower.book.unapplied(), 60)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    published = await read_topic(kafka, topics.output)
    assert [header(r, HEADER_DECISION_ID) for r in published] == [left.decision_id.encode()]
    records = [msgspec.json.decode(r.value or b"") for r in await read_topic(kafka, topics.decisions)]
    kinds = [r["type"] for r in records]
    assert kinds == ["decision", "applying", "applied"]
    applied = msgspec.convert(records[-1], Applied)
    assert (applied.partition, applied.offset) == (published[0].partition, published[0].offset)
    assert msgspec.convert(records[1], Applying).from_offset <= applied.offset


async def test_a_decision_made_while_no_applier_runs_is_applied_when_one_starts(
    kafka_broker: Broker, topic_prefix: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    await publish_reviews(kafka, topics.review, [flagged("job-4"), api_error("job-5")])
    async with running_desk(kafka, topics) as desk:
        assert (await desk.decide("job-4", "approve", ANA)).accepted
        assert (await desk.decide("job-5", "rerun", ANA)).accepted
        assert len(desk.follower.book.unapplied()) == 2
    async with ReviewService(kafka, topics.worker()) as service:
        book = service.desk.follower.book
        await service.desk.follower.wait_until(lambda: not book.unapplied(), 60)
    assert len(await read_topic(kafka, topics.output)) == 1
    assert len(await read_topic(kafka, topics.input)) == 1
