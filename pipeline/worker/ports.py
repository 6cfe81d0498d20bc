"""The worker's three Kafka clients as small contracts, and the aiokafka clients that fulfil them.

The worker and its parts are written against these protocols, so the unit tests can drive them with an
in-memory consumer (deterministic rebalance callbacks, no broker), while :meth:`KafkaClients.connect` gives
the real ones: an ``AIOKafkaConsumer`` (no auto-commit; the worker positions every partition itself), an
``AIOKafkaProducer`` (acks=all, idempotent where the brokers allow it: ``KAFKA_IDEMPOTENCE``) and the admin
calls the worker makes (topics, committed offsets with their metadata, whether producer ids are granted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

from aiokafka import ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from pipeline.config import WorkerSettings
from pipeline.kafka import (
    KafkaSettings,
    committed_with_metadata,
    grants_producer_ids,
    make_admin,
    make_consumer,
    make_producer,
)
from pipeline.worker.cancellations import AiokafkaBatchesFeed, BatchesFeed

log = logging.getLogger("pipeline.worker")

#: Bytes a partition's producer batch may hold. aiokafka's default (16 KiB) holds five results (about 3 KB
#: each with both moderation sides), so under load ``send`` kept waiting for batches to drain; far below
#: the brokers' 1 MB default message (batch) size.
PRODUCER_BATCH_BYTES: Final = 256 * 1024

#: A fetched job record (aiokafka is untyped: ``ConsumerRecord[bytes, bytes]`` to the reader).
Record: TypeAlias = ConsumerRecord


class Consumer(Protocol):
    """The part of ``AIOKafkaConsumer`` the worker uses."""

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Record]]: ...
    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    def paused(self) -> set[TopicPartition]: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def seek_to_end(self, *partitions: TopicPartition) -> None: ...
    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]: ...


class Producer(Protocol):
    """The part of ``AIOKafkaProducer`` the worker uses."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]: ...
    async def flush(self) -> None: ...


class GroupAdmin(Protocol):
    """The admin calls the worker makes."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def list_topics(self) -> list[str]: ...
    async def committed(
        self, group_id: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's commits (a partition never committed is left out); any error raises."""
        ...

    async def grants_producer_ids(self) -> bool: ...


class AiokafkaAdmin:
    """:class:`GroupAdmin` over aiokafka's admin client."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._admin = make_admin(kafka)

    async def start(self) -> None:
        await self._admin.start()

    async def close(self) -> None:
        await self._admin.close()

    async def list_topics(self) -> list[str]:
        return list(await self._admin.list_topics())

    async def committed(
        self, group_id: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        return await committed_with_metadata(self._admin, group_id, partitions)

    async def grants_producer_ids(self) -> bool:
        return await grants_producer_ids(self._admin)


class AiokafkaProducer:
    """:class:`Producer` over ``AIOKafkaProducer``, made at :meth:`start`: idempotent when ``KAFKA_IDEMPOTENCE``
    says ``on``, or ``auto`` and the brokers grant producer ids (retries can then neither duplicate nor
    reorder a partition's records)."""

    def __init__(self, kafka: KafkaSettings, admin: GroupAdmin) -> None:
        self._kafka = kafka
        self._admin = admin
        self._producer: Any = None
        self.idempotent = False

    async def choose_idempotence(self) -> bool:
        setting = self._kafka.idempotence
        return setting == "on" or (setting == "auto" and await self._admin.grants_producer_ids())

    async def start(self) -> None:
        """Make and start the producer (an idempotent one asks the brokers for its producer id here: one that
        refuses, with ``KAFKA_IDEMPOTENCE=on``, fails the start)."""
        self.idempotent = await self.choose_idempotence()
        detail = f"idempotent={self.idempotent} (KAFKA_IDEMPOTENCE={self._kafka.idempotence})"
        log.info("producer starting", extra={"detail": detail})
        self._producer = make_producer(
            self._kafka, max_batch_size=PRODUCER_BATCH_BYTES, enable_idempotence=self.idempotent
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._producer.send(topic, value, key=key, headers=headers)
        return future

    async def flush(self) -> None:
        await self._producer.flush()


@dataclass(frozen=True, slots=True)
class KafkaClients:
    consumer: Consumer
    producer: Producer
    admin: GroupAdmin
    #: The batches topic, followed for cancelled batches (None: no batch is ever cancelled by this worker).
    batches: BatchesFeed | None = None

    @classmethod
    def connect(cls, kafka: KafkaSettings, settings: WorkerSettings) -> KafkaClients:
        """The aiokafka clients for a worker with ``settings`` (not started: the worker starts them)."""
        consumer = make_consumer(
            kafka,
            settings.group_id,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            max_partition_fetch_bytes=max(settings.max_job_bytes, 1_048_576),
            fetch_max_bytes=max(settings.max_job_bytes * 4, 52_428_800),
            # The revoke callback may hold a rebalance for up to PIPELINE_REVOKE_TIMEOUT_S; aiokafka's default
            # (the session timeout) would let the group drop this member meanwhile.
            rebalance_timeout_ms=settings.max_poll_interval_ms,
            group_instance_id=settings.group_instance_id,
        )
        admin = AiokafkaAdmin(kafka)
        batches = AiokafkaBatchesFeed(kafka, settings.batches_topic)
        return cls(consumer=consumer, producer=AiokafkaProducer(kafka, admin), admin=admin, batches=batches)
