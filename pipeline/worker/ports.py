"""The worker's three Kafka clients as small contracts, and the aiokafka clients that fulfil them.

The worker and its parts are written against these protocols, so the unit tests can drive them with an
in-memory consumer (deterministic rebalance callbacks, no broker), while :meth:`KafkaClients.connect` gives
the real ones: an ``AIOKafkaConsumer`` (no auto-commit, earliest), an ``AIOKafkaProducer`` (acks=all) and
the admin calls the worker makes (topics, committed offsets with their metadata, the metadata probe).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

from aiokafka import ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from pipeline.config import WorkerSettings
from pipeline.kafka import (
    KafkaSettings,
    broker_keeps_commit_metadata,
    committed_with_metadata,
    make_admin,
    make_consumer,
    make_producer,
)

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
    ) -> dict[TopicPartition, OffsetAndMetadata]: ...
    async def keeps_commit_metadata(self, topic: str, group_id: str) -> bool: ...


class AiokafkaAdmin:
    """:class:`GroupAdmin` over aiokafka's admin client."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
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

    async def keeps_commit_metadata(self, topic: str, group_id: str) -> bool:
        return await broker_keeps_commit_metadata(self._kafka, topic, group_id)


@dataclass(frozen=True, slots=True)
class KafkaClients:
    consumer: Consumer
    producer: Producer
    admin: GroupAdmin

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
        )
        producer = make_producer(kafka, max_batch_size=PRODUCER_BATCH_BYTES)
        return cls(consumer=consumer, producer=producer, admin=AiokafkaAdmin(kafka))
