"""Spend shared across the workers of a group through a Kafka topic (``PIPELINE_SPEND_TOPIC``,
``tenant-spend`` by default), so a tenant's budget holds for the group, not per process.

Each worker publishes its spend increments (:class:`SpendRecord`: tenant, USD, worker id) keyed by tenant,
at least every :data:`~pipeline.tenancy.budgets.PUBLISH_INTERVAL_S`, and follows the topic with a consumer of
its own (no group: every partition assigned) from the start of the current UTC period (the day, or the month
when monthly budgets are set: found with ``offsets_for_times``, else offset 0), adding the other workers'
records to its :class:`~pipeline.tenancy.budgets.SpendBook` by their record timestamp. Eventually consistent:
another worker's spend is seen within a publish interval plus one fetch wait (:data:`FOLLOW_WAIT_MS`).

Retention: ``pipeline topics create`` creates the topic with :data:`SPEND_RETENTION_MS` (35 days: a month's
records plus margin; nothing older is ever read). A missing topic is looked for again every
:data:`MISSING_TOPIC_RETRY_S` and never created here (the embedded broker would create it on a fetch with the
broker's defaults); meanwhile increments stay queued and budgets count this worker's own spend only.

At start, a job whose tenant has a budget waits (at most :data:`FIRST_READ_WAIT_S`) for the first read to
the end of the topic, so a restarted worker does not spend what the group already spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final, Protocol

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from pipeline.backoff import Backoff
from pipeline.kafka import KafkaSettings, make_producer
from pipeline.tenancy.budgets import PUBLISH_INTERVAL_S, Period, SpendBook, period_start_ms
from pipeline.topic_tail import TopicTail, follow_forever

log = logging.getLogger("pipeline.tenancy")

#: How long one fetch of the spend topic waits for a record: part of how late others' spend is seen.
FOLLOW_WAIT_MS: Final = 200
#: How long a job with a budget waits at start for the follower's first read to the end of the topic.
FIRST_READ_WAIT_S: Final = 10.0
MISSING_TOPIC_RETRY_S: Final = 5.0
SPEND_RETENTION_MS: Final = 35 * 86_400_000
RETRY_BACKOFF: Final = Backoff(base_s=0.5, cap_s=10.0)


class SpendRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One worker's spend for one tenant since its previous record (the value; the key is the tenant)."""

    tenant: str
    usd: float
    worker: str


_record_encoder: Final = msgspec.json.Encoder()
_record_decoder: Final = msgspec.json.Decoder(SpendRecord)

#: A record read back: its value and its timestamp (epoch ms).
ReadRecord = tuple[bytes | None, int]


class SpendFeed(Protocol):
    """The spend topic: read from the start of the current period, and publish to it."""

    async def read(self, timeout_ms: int) -> tuple[list[ReadRecord], bool]:
        """The records of one fetch, and whether the reader has reached the end (a missing topic has)."""
        ...

    async def publish(self, records: list[SpendRecord], at_ms: int) -> None:
        """Publish every record, acknowledged (raises when not)."""
        ...

    async def close(self) -> None: ...


class SpendSync:
    """Keeps a :class:`SpendBook` in step with the spend topic: publishes, follows; see the module docstring."""

    def __init__(self, book: SpendBook, feed: SpendFeed, *, publish_interval_s: float = PUBLISH_INTERVAL_S) -> None:
        self._book = book
        self._feed = feed
        self._interval_s = publish_interval_s
        #: Set once the follower has read the topic to its end.
        self.caught_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._waited_in_vain = False

    async def wait_caught_up(self) -> None:
        """Wait (once, at most :data:`FIRST_READ_WAIT_S`) for the first read to the end of the topic."""
        if self.caught_up.is_set() or self._waited_in_vain:
            return
        try:
            await asyncio.wait_for(self.caught_up.wait(), FIRST_READ_WAIT_S)
        except TimeoutError:
            self._waited_in_vain = True
            log.warning("the spend topic was not read in time; budgets count this worker's spend only until it is")

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._follow(), name="spend-follow"),
            asyncio.create_task(self._publish_every_interval(), name="spend-publish"),
        ]

    async def stop(self) -> None:
        """Stop following, publish what is left (once, best effort), close."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            await self.publish_now()
        except Exception as exc:
            log.warning("the last spend increments were not published", extra={"error": type(exc).__name__})
        await self._feed.close()

    async def publish_now(self) -> None:
        increments = self._book.take_unpublished()
        if not increments:
            return
        try:
            await self._feed.publish(
                [SpendRecord(tenant=i.tenant, usd=i.usd, worker=self._book.worker_id) for i in increments],
                int(time.time() * 1000),
            )
        except BaseException:
            self._book.give_back(increments)
            raise

    def apply(self, records: list[ReadRecord]) -> None:
        for value, timestamp_ms in records:
            if value is None:
                continue
            try:
                record = _record_decoder.decode(value)
            except msgspec.MsgspecError:
                log.warning("an unreadable record on the spend topic; ignored", extra={"count": len(value)})
                continue
            self._book.apply(record.tenant, record.usd, timestamp_ms, record.worker)

    async def _publish_every_interval(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._interval_s if failures == 0 else RETRY_BACKOFF.delay_s(failures - 1))
            try:
                await self.publish_now()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("publishing spend failed; retrying", extra={"error": type(exc).__name__})

    async def _follow(self) -> None:
        await follow_forever(
            lambda: self._feed.read(FOLLOW_WAIT_MS),
            self.apply,
            self.caught_up,
            what="the spend topic",
            backoff=RETRY_BACKOFF,
            logger=log,
        )


class AiokafkaSpendFeed:
    """:class:`SpendFeed` over a consumer without a group (every partition, from the start of ``period``) and a
    producer of its own (``acks=all``)."""

    def __init__(self, kafka: KafkaSettings, topic: str, period: Period) -> None:
        self._kafka = kafka
        self._topic = topic
        self._period: Period = period
        self._tail = TopicTail(kafka, topic, missing_retry_s=MISSING_TOPIC_RETRY_S, position=self._from_period_start)
        #: Made when first needed (an aiokafka client made and never stopped warns when collected, and a
        #: worker that fails before publishing would leave it so).
        self._producer: AIOKafkaProducer | None = None

    async def _from_period_start(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        since = period_start_ms(int(time.time() * 1000), self._period)
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, since))
        for tp in partitions:
            at = found.get(tp)
            # an earlier batch's base offset at worst (the embedded broker): older records are read and ignored
            consumer.seek(tp, 0 if at is None else at.offset)

    async def read(self, timeout_ms: int) -> tuple[list[ReadRecord], bool]:
        records, at_end = await self._tail.read(timeout_ms)
        return [(r.value, r.timestamp) for r in records], at_end

    async def publish(self, records: list[SpendRecord], at_ms: int) -> None:
        if self._producer is None:
            producer = make_producer(self._kafka)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        sent = [
            await self._producer.send(self._topic, _record_encoder.encode(r), key=r.tenant.encode(), timestamp_ms=at_ms)
            for r in records
        ]
        await asyncio.gather(*sent)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        await self._tail.close()
        if producer is not None:
            await producer.stop()
