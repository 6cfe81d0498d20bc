"""The batches topic: one manifest per batch, keyed by batch id, the latest record of a key wins.

The topic is compacted (``cleanup.policy=compact``, one partition: a handful of records per batch) so a
batch's manifest stays as long as the topic does, whatever the retention of the job topics; ``pipeline
topics create`` makes it. Compaction is an optimisation, not something a reader relies on: the embedded
broker may not enforce it, so readers read every record and keep the last one per key. Everything
``status``, ``results`` and ``cancel`` need is here or in the topics it points at: nothing on local disk.
"""

from __future__ import annotations

import contextlib
from typing import Final

import msgspec
from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import TopicPartition

from pipeline.batch.reading import TopicReader, existing_topics, topic_partitions
from pipeline.kafka import KafkaSettings, make_admin, make_producer
from schemas.batches import BatchManifest

BATCHES_TOPIC_CONFIG: Final = {"cleanup.policy": "compact"}
BATCHES_TOPIC_PARTITIONS: Final = 1

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(BatchManifest)


class BatchesTopicMissing(LookupError):
    """The batches topic does not exist (``pipeline topics create`` makes it)."""


def encode_manifest(manifest: BatchManifest) -> tuple[bytes, bytes]:
    """The record (key, value) of a manifest."""
    return manifest.id.encode(), _encoder.encode(manifest)


def decode_manifest(value: bytes) -> BatchManifest:
    """A manifest record's value; raises ``msgspec.MsgspecError`` for anything else."""
    return _decoder.decode(value)


def new_batches_topic(name: str, replication_factor: int = 1) -> NewTopic:
    return NewTopic(name, BATCHES_TOPIC_PARTITIONS, replication_factor, topic_configs=dict(BATCHES_TOPIC_CONFIG))


async def create_batches_topic(kafka: KafkaSettings, name: str, replication_factor: int = 1) -> bool:
    """Create the compacted batches topic unless it exists; True when it was created."""
    admin = make_admin(kafka)
    await admin.start()
    try:
        if name in await admin.list_topics():
            return False
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([new_batches_topic(name, replication_factor)])
        return True
    finally:
        await admin.close()


async def read_manifests(kafka: KafkaSettings, topic: str) -> dict[str, BatchManifest]:
    """Every batch's latest manifest, by id (records that are not manifests are skipped)."""
    if topic not in await existing_topics(kafka):
        raise BatchesTopicMissing(topic)
    (count,) = (await topic_partitions(kafka, [topic])).values()
    manifests: dict[str, BatchManifest] = {}
    async with TopicReader(kafka) as reader:
        reader.assign({TopicPartition(topic, p): 0 for p in range(count)})
        for record in await reader.read_to_end():
            key = (record.key or b"").decode(errors="replace")
            if record.value is None:
                manifests.pop(key, None)
                continue
            with contextlib.suppress(msgspec.MsgspecError):
                manifest = decode_manifest(record.value)
                manifests[manifest.id] = manifest
    return manifests


async def read_manifest(kafka: KafkaSettings, topic: str, batch_id: str) -> BatchManifest | None:
    return (await read_manifests(kafka, topic)).get(batch_id)


async def write_manifest(kafka: KafkaSettings, topic: str, manifest: BatchManifest) -> None:
    """Write a manifest and wait for the broker's acknowledgement (acks=all)."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        key, value = encode_manifest(manifest)
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
