"""Reading topics for batches: where each partition ends now, and a reader from given offsets to the end.

Ends come from a fetch's high watermark: ``end_offsets()`` is wrong on the embedded broker (it answers the
last batch's base offset), and ``seek_to_beginning`` can skip a partition's first batch there, so a reader
seeks to explicit offsets (0 for "the start"). No consumer group: nothing is committed, every command
reads what it needs from the offsets a batch's manifest recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeAlias

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from pipeline.kafka import KafkaSettings, make_admin, make_consumer
from schemas.batches import TopicOffsets

#: Records one fetch returns at most.
FETCH_RECORDS: Final = 10_000
#: How long the broker holds a fetch that finds nothing new (its default, 500 ms, would be the time every
#: read of a quiet partition takes to learn its end).
FETCH_WAIT_MS: Final = 20
#: How long :func:`log_ends` tries for a high watermark of every partition.
END_WAIT_S: Final = 30.0

#: A fetched record (aiokafka is untyped: ``ConsumerRecord[bytes, bytes]`` to the reader).
Record: TypeAlias = ConsumerRecord


async def topic_partitions(kafka: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    """How many partitions each topic has (call only for topics that exist: a describe may create one)."""
    admin = make_admin(kafka)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return {d["topic"]: len(d["partitions"]) for d in described}


async def existing_topics(kafka: KafkaSettings) -> set[str]:
    admin = make_admin(kafka)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def log_ends(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], within_s: float = END_WAIT_S
) -> dict[TopicPartition, int]:
    """Each partition's end (its high watermark) now, read by fetching near it.

    Every fetch drains what came back: aiokafka sends a broker no new fetch while records of one of its
    partitions wait to be consumed, so taking one record at a time could starve the other partitions.
    """
    if not partitions:
        return {}
    consumer.assign(partitions)
    estimates = await consumer.end_offsets(partitions)  # at or below the end: only a place to fetch from
    for tp in partitions:
        consumer.seek(tp, max(0, estimates[tp] - 1))
    ends: dict[TopicPartition, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        await consumer.getmany(*partitions, timeout_ms=100)
        for tp in partitions:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = highwater
        if len(ends) == len(partitions):
            return ends
    missing = ", ".join(f"{tp.topic}-{tp.partition}" for tp in partitions if tp not in ends)
    raise TimeoutError(f"no high watermark for {missing} within {within_s:g} s")


async def topic_ends(kafka: KafkaSettings, topics: Iterable[str]) -> dict[str, TopicOffsets]:
    """Where each topic ends now, partition by partition."""
    counts = await topic_partitions(kafka, topics)
    partitions = [TopicPartition(topic, p) for topic, count in counts.items() for p in range(count)]
    consumer = make_consumer(kafka, None, fetch_max_wait_ms=FETCH_WAIT_MS)
    await consumer.start()
    try:
        ends = await log_ends(consumer, partitions)
    finally:
        await consumer.stop()
    return {
        topic: TopicOffsets(topic=topic, offsets=[ends[TopicPartition(topic, p)] for p in range(count)])
        for topic, count in counts.items()
    }


class TopicReader:
    """Reads partitions from given offsets: :meth:`fetch` for the next records, :meth:`caught_up` once every
    partition has been read to the high watermark its latest fetch reported."""

    def __init__(self, kafka: KafkaSettings, **consumer_options: Any) -> None:
        self._consumer = make_consumer(kafka, None, **{"fetch_max_wait_ms": FETCH_WAIT_MS, **consumer_options})
        self._partitions: list[TopicPartition] = []

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    def assign(self, starts: Mapping[TopicPartition, int]) -> None:
        """Read each partition from its offset (a partition past a trimmed log start resets to that start)."""
        self._partitions = list(starts)
        self._consumer.assign(self._partitions)
        for tp, offset in starts.items():
            self._consumer.seek(tp, offset)

    async def fetch(self, timeout_ms: int = 200) -> list[Record]:
        batches = await self._consumer.getmany(*self._partitions, timeout_ms=timeout_ms, max_records=FETCH_RECORDS)
        return [record for tp in self._partitions for record in batches.get(tp, ())]

    async def caught_up(self) -> bool:
        for tp in self._partitions:
            highwater = self._consumer.highwater(tp)
            if highwater is None or await self._consumer.position(tp) < highwater:
                return False
        return True

    async def read_to_end(self, idle_timeout_s: float = 10.0) -> list[Record]:
        """Everything from the current positions to the end as it is now (for small topics)."""
        records: list[Record] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + idle_timeout_s
        while True:
            fetched = await self.fetch(timeout_ms=2 * FETCH_WAIT_MS)
            records.extend(fetched)
            if await self.caught_up():
                return records
            if fetched:
                deadline = loop.time() + idle_timeout_s
            elif loop.time() > deadline:
                raise TimeoutError("no answer from the broker while reading to the end")


def starts_from(offsets: Iterable[TopicOffsets], counts: Mapping[str, int]) -> dict[TopicPartition, int]:
    """Where to read each partition of the recorded topics (a partition added since starts at 0)."""
    starts: dict[TopicPartition, int] = {}
    for recorded in offsets:
        for partition in range(counts.get(recorded.topic, len(recorded.offsets))):
            recorded_at = recorded.offsets[partition] if partition < len(recorded.offsets) else 0
            starts[TopicPartition(recorded.topic, partition)] = recorded_at
    return starts
