"""Tails the review topic and the review-decisions topic from their beginnings into a :class:`ReviewBook`.

One consumer without a group ``assign()``s every partition of both topics, starts at offset 0 (not
``seek_to_beginning``: see :func:`pipeline.kafka.seek_to_log_start`) and keeps its positions in memory: a
console rebuilds its state at every start. It is *ready* once every partition was read up to the high
watermark its first fetch reported (``end_offsets()`` is wrong on the embedded broker). Every change bumps a
version that :meth:`LogFollower.changes` hands out, and writers wait on conditions over the book with
:meth:`LogFollower.wait_until`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final

import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from pipeline.backoff import Backoff
from pipeline.kafka import KafkaSettings, make_admin, make_consumer, seek_to_log_start
from pipeline.review.item_log import ReviewOrigin
from pipeline.review.state import ReviewBook, position_of
from schemas.decisions import DecisionRecord, ReviewRef
from schemas.topics import HEADER_ORIGINAL_CONSUMER_GROUP, HEADER_ORIGINAL_TIMESTAMP, HEADER_REPLAY_COUNT, Review

log = logging.getLogger("pipeline.review")

FETCH_BACKOFF: Final = Backoff(base_s=0.2, cap_s=5.0)
_review_decoder: Final = msgspec.json.Decoder(Review)
_record_decoder: Final = msgspec.json.Decoder(DecisionRecord)


def epoch_ms() -> int:
    return int(time.time() * 1000)


def review_origin(headers: Iterable[tuple[str, bytes]] | None) -> ReviewOrigin:
    """The original job record's timestamp, the worker's group and the replay count, from a review record's
    headers (text values; anything unreadable is left out)."""
    timestamp: int | None = None
    group: str | None = None
    replays = 0
    for name, value in headers or ():
        with contextlib.suppress(ValueError, AttributeError):
            if name == HEADER_ORIGINAL_TIMESTAMP:
                timestamp = int(value.decode())
            elif name == HEADER_ORIGINAL_CONSUMER_GROUP:
                group = value.decode()
            elif name == HEADER_REPLAY_COUNT:
                replays = int(value.decode())
    return ReviewOrigin(timestamp, group, replays)


async def topic_partitions(kafka: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of ``topics``, from the cluster."""
    admin = make_admin(kafka)
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return sorted(TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"])


class LogFollower:
    """The book of one console, kept current by a background task; see the module docstring."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        review_topic: str,
        decisions_topic: str,
        clock: Callable[[], int] = epoch_ms,
        fetch_wait_ms: int = 100,
    ) -> None:
        self.book = ReviewBook(review_topic)
        self.review_topic = review_topic
        self.decisions_topic = decisions_topic
        self._kafka = kafka
        self._clock = clock
        self._fetch_wait_ms = fetch_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._folded: dict[TopicPartition, int] = {}
        self._changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._stopped = False
        self.version = 0

    @property
    def ready(self) -> bool:
        """Both topics were read up to where they ended when the follower started."""
        return self._ready.is_set()

    async def start(self) -> None:
        partitions = await topic_partitions(self._kafka, [self.review_topic, self.decisions_topic])
        consumer = make_consumer(self._kafka, None, fetch_max_wait_ms=self._fetch_wait_ms)
        self._consumer = consumer  # stop() closes it even if starting fails half-way
        await consumer.start()
        consumer.assign(partitions)
        seek_to_log_start(consumer, partitions)
        self._task = asyncio.create_task(self._follow(consumer, partitions), name="review-follower")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        self._notify()

    async def __aenter__(self) -> LogFollower:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    def folded_to(self, tp: TopicPartition) -> int:
        """The offset up to which ``tp`` was folded into the book."""
        return self._folded.get(tp, 0)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        await self.wait_until(lambda: self.ready, timeout_s)

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float | None = None) -> None:
        """Return once ``condition()`` holds, checked after every change; :class:`TimeoutError` after
        ``timeout_s``, :class:`RuntimeError` if the follower stops or fails first."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                if self._stopped or (self._task is not None and self._task.done()):
                    raise RuntimeError("the review log follower is not running")
                await self._changed.wait()

    def changes(self) -> AsyncIterator[int]:
        """Yields the version after each change since this call (changes that come together are yielded once);
        ends when the follower stops."""
        return self._changes_since(self.version)

    async def _changes_since(self, seen: int) -> AsyncIterator[int]:
        while not self._stopped:
            if self.version == seen:
                await self._changed.wait()
                continue
            seen = self.version
            yield seen

    def _notify(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _follow(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        try:
            await self._follow_forever(consumer, partitions)
        except Exception:
            log.exception("the review log follower failed")
            self._notify()  # waiters learn it at once (the task is done by the time they run)
            raise

    async def _follow_forever(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        ends: dict[TopicPartition, int] = {}
        failures = 0
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("fetching the review log failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(FETCH_BACKOFF.delay_s(failures))
                failures += 1
                continue
            failures = 0
            for tp, records in batches.items():
                self._fold(tp, records)
            changed = bool(batches) | self.book.claims_ended(self._clock())
            if not self.ready and await self._caught_up(consumer, partitions, ends):
                self._ready.set()
                changed = True
                log.info("review log read", extra={"count": len(partitions)})
            if changed:
                self._notify()

    def _fold(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            if tp.topic == self.review_topic:
                self._fold_review(record)
            else:
                self._fold_decision(record)
        self._folded[tp] = records[-1].offset + 1

    def _fold_review(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            review = _review_decoder.decode(record.value or b"")
        except msgspec.MsgspecError:
            log.warning("not a review record", extra={"partition": record.partition, "offset": record.offset})
            self.book.review_read_to(record.partition, record.offset + 1)
            return
        ref = ReviewRef(topic=record.topic, partition=record.partition, offset=record.offset)
        self.book.add_review(review, ref, record.timestamp, origin=review_origin(record.headers))

    def _fold_decision(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            decoded = _record_decoder.decode(record.value or b"")
        except msgspec.MsgspecError:
            log.warning("not a decisions record", extra={"partition": record.partition, "offset": record.offset})
            return
        self.book.add_decision_record(decoded, position_of(record.topic, record.partition, record.offset))

    async def _caught_up(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition], ends: dict[TopicPartition, int]
    ) -> bool:
        for tp in partitions:
            highwater: Any = consumer.highwater(tp)
            if highwater is None:
                return False
            end = ends.setdefault(tp, highwater)
            if await consumer.position(tp) < end:
                return False
        return True
