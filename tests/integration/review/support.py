"""Topics, review records and running desks for the review console's tests against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka.structs import ConsumerRecord

from pipeline.config import WorkerSettings
from pipeline.kafka import KafkaSettings, ensure_topics, make_consumer, make_producer, seek_to_log_start
from pipeline.review.follower import topic_partitions
from pipeline.review.log import KafkaDesk
from schemas.decisions import ReviewRef
from schemas.topics import (
    HEADER_JOB_ID,
    HEADER_ORIGINAL_CONSUMER_GROUP,
    HEADER_ORIGINAL_TIMESTAMP,
    Review,
)

#: Fast joins on the embedded broker: it holds JoinGroup for session_timeout/2 (the applier's group).
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}


@dataclass(frozen=True)
class ReviewTopics:
    input: str
    output: str
    review: str
    decisions: str
    group: str

    @classmethod
    def named(cls, prefix: str) -> ReviewTopics:
        return cls(
            f"{prefix}-prompts", f"{prefix}-completions", f"{prefix}-review", f"{prefix}-decisions", f"{prefix}-group"
        )

    def worker(self) -> WorkerSettings:
        return WorkerSettings(
            input_topic=self.input,
            output_topic=self.output,
            review_topic=self.review,
            decisions_topic=self.decisions,
            group_id=self.group,
            **FAST_GROUP,
        )


async def create_topics(kafka: KafkaSettings, topics: ReviewTopics, partitions: int = 3) -> None:
    await ensure_topics(kafka, [topics.input, topics.output, topics.review, topics.decisions], partitions)


async def publish_reviews(
    kafka: KafkaSettings,
    topic: str,
    reviews: Sequence[Review],
    extra_headers: Sequence[tuple[str, bytes]] = (),
    *,
    timestamp_ms: int | None = None,
) -> list[ReviewRef]:
    """Publish review records as the worker's sink does (keyed by job id, with its headers); their refs.
    ``timestamp_ms`` stamps them (an item's age counts from its record's timestamp), else the time of sending."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        acks = []
        for review in reviews:
            headers = [
                (HEADER_ORIGINAL_TIMESTAMP, b"1700000000000"),
                (HEADER_ORIGINAL_CONSUMER_GROUP, b"workers"),
                *extra_headers,
            ]
            if review.id is not None:
                headers.insert(0, (HEADER_JOB_ID, review.id.encode()))
            key = review.id.encode() if review.id is not None else None
            value = msgspec.json.encode(review)
            acks.append(await producer.send(topic, value, key=key, headers=headers, timestamp_ms=timestamp_ms))
        sent = await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return [ReviewRef(topic=topic, partition=md.partition, offset=md.offset) for md in sent]


@contextlib.asynccontextmanager
async def running_desk(
    kafka: KafkaSettings, topics: ReviewTopics, *, clock: Callable[[], int] | None = None, **options: Any
) -> AsyncIterator[KafkaDesk]:
    """A started desk whose state is whole (both topics read)."""
    if clock is not None:
        options["clock"] = clock
    desk = KafkaDesk(kafka, review_topic=topics.review, decisions_topic=topics.decisions, **options)
    await desk.start()
    try:
        await desk.wait_ready(30)
        yield desk
    finally:
        await desk.stop()


async def read_topic(kafka: KafkaSettings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` now, from offset 0 to each partition's high watermark."""
    partitions = await topic_partitions(kafka, [topic])
    consumer = make_consumer(kafka, None, fetch_max_wait_ms=50)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(partitions)
        seek_to_log_start(consumer, partitions)
        ends: dict[Any, int] = {}
        async with asyncio.timeout(20):
            while len(ends) < len(partitions) or any([await consumer.position(tp) < end for tp, end in ends.items()]):
                for _tp, records in (await consumer.getmany(timeout_ms=100)).items():
                    found.extend(records)
                for tp in partitions:
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        ends.setdefault(tp, highwater)
    finally:
        await consumer.stop()
    return found


def header(record: ConsumerRecord[bytes, bytes], name: str) -> bytes | None:
    return next((value for key, value in record.headers or () if key == name), None)
