"""Following a small topic that every worker reads whole: the batches topic, the spend topic.

:class:`TopicTail` reads every partition of one topic without a consumer group (no rebalances, positions in
memory) and says after each fetch whether it has caught up with the log end. The topic is looked for, never
created (describing or fetching a missing topic creates it on the embedded broker, without the compaction or
retention it must have): while it is missing, reads return nothing and it is looked for again every
``missing_retry_s``. The consumer is made when the topic is found, so a worker that stops before that leaves
no client to close.

:func:`follow_forever` is the loop around a feed's ``read``: records to ``take``, ``caught_up`` set at the
log end, and a failed read logged and retried with backoff (a worker that cannot read such a topic works on).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from pipeline.backoff import Backoff
from pipeline.kafka import KafkaSettings, make_consumer, partitions_if_any

log = logging.getLogger("pipeline.worker")
T = TypeVar("T")
#: Where reading starts, once the partitions are assigned (the default: every partition from offset 0).
Positioner = Callable[[AIOKafkaConsumer, list[TopicPartition]], Awaitable[None]]


async def from_log_start(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
    for tp in partitions:
        consumer.seek(tp, 0)


class TopicTail:
    """Every partition of ``topic``, from where ``position`` puts them, one fetch per :meth:`read`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        *,
        missing_retry_s: float,
        position: Positioner = from_log_start,
        starting_wait_ms: int | None = None,
        **consumer_options: Any,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._missing_retry_s = missing_retry_s
        self._position = position
        #: Until the first read to the end, fetches wait this long at most (callers wait for that read).
        self._starting_wait_ms = starting_wait_ms
        self._consumer_options = consumer_options
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._next_look = 0.0
        self._reached_end = False

    async def read(self, timeout_ms: int) -> tuple[list[ConsumerRecord[bytes, bytes]], bool]:
        """One fetch: the records it brought and whether every partition is now at its end (the fetch high
        watermark: ``end_offsets()`` is wrong on the embedded broker). A missing topic reads as nothing, at
        its end. A failure to look the topic up raises (the caller retries)."""
        if not self._partitions:
            if time.monotonic() < self._next_look:
                await asyncio.sleep(timeout_ms / 1000)
                return [], True
            partitions = await partitions_if_any(self._kafka, self._topic)
            if not partitions:
                self._next_look = time.monotonic() + self._missing_retry_s
                return [], True
            consumer = await self._started_consumer()
            consumer.assign(partitions)
            await self._position(consumer, partitions)
            self._partitions = partitions
        consumer = self._consumer
        assert consumer is not None  # made with the partitions
        wait_ms = timeout_ms if self._reached_end or self._starting_wait_ms is None else self._starting_wait_ms
        batches = await consumer.getmany(*self._partitions, timeout_ms=wait_ms)
        records = [record for partition_records in batches.values() for record in partition_records]
        at_end = True
        for tp in self._partitions:
            highwater = consumer.highwater(tp)
            at_end = at_end and highwater is not None and await consumer.position(tp) >= highwater
        self._reached_end = self._reached_end or at_end
        return records, at_end

    async def _started_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = make_consumer(self._kafka, None, **self._consumer_options)
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        consumer, self._consumer, self._partitions = self._consumer, None, []
        if consumer is not None:
            await consumer.stop()


async def follow_forever(
    read: Callable[[], Awaitable[tuple[list[T], bool]]],
    take: Callable[[list[T]], None],
    caught_up: asyncio.Event,
    *,
    what: str,
    backoff: Backoff,
    logger: logging.Logger = log,
) -> None:
    """Read for ever: each read's records to ``take``, ``caught_up`` set once a read ends at the log end; a
    failed read is logged (naming ``what``) and retried after ``backoff``."""
    failures = 0
    while True:
        try:
            records, at_end = await read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning(f"reading {what} failed; retrying", extra={"error": type(exc).__name__})
            await asyncio.sleep(backoff.delay_s(failures))
            failures += 1
            continue
        failures = 0
        take(records)
        if at_end:
            caught_up.set()
