"""Kafka plumbing: connection settings (security passed through), client factories, topics, offsets, headers.

Settings chosen for the delivery promise and for the embedded broker's known behaviour: producers use
``acks="all"`` (acks=0 loses data on Tansu and is never right for results); the worker's producer is
idempotent where the brokers grant producer ids (:func:`grants_producer_ids`: Apache Kafka does, Tansu does
not), the command-line tools' are not; consumers never auto-commit and a new group starts from the
earliest offset (offset 0, see :func:`seek_to_log_start`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final, Literal

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.protocol.transaction import InitProducerIdRequest
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.backoff import Backoff
from pipeline.config import Option, parse_settings
from pipeline.kafka_errors import Verdict, verdict
from pipeline.secret import Secret
from schemas.topics import (
    HEADER_JOB_ID,
    HEADER_ORIGINAL_CONSUMER_GROUP,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TIMESTAMP,
    HEADER_ORIGINAL_TOPIC,
    HEADER_REASON_KIND,
    HEADER_REPLAY_COUNT,
)

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
Idempotence = Literal["auto", "on", "off"]

COMMITTED_READ_BACKOFF: Final = Backoff(base_s=0.2, cap_s=5.0)
#: The producer refuses records above this; the worker routes an oversize result to review instead.
DEFAULT_MAX_RECORD_BYTES: Final = 1_000_000


class KafkaSettings(msgspec.Struct, frozen=True, kw_only=True):
    bootstrap_servers: str = "localhost:9092"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "moderated-pipeline"
    compression: Compression = "none"
    max_record_bytes: Annotated[int, msgspec.Meta(ge=1024)] = DEFAULT_MAX_RECORD_BYTES
    idempotence: Idempotence = "auto"


KAFKA_OPTIONS: tuple[Option, ...] = (
    Option("KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", "Kafka brokers, host:port[,host:port]"),
    Option("KAFKA_SECURITY_PROTOCOL", "security_protocol", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    Option("KAFKA_SASL_MECHANISM", "sasl_mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    Option("KAFKA_SASL_USERNAME", "sasl_username", "SASL user name"),
    Option("KAFKA_SASL_PASSWORD", "sasl_password", "SASL password", secret=True),
    Option("KAFKA_SSL_CAFILE", "ssl_cafile", "CA bundle to verify the brokers (TLS)"),
    Option("KAFKA_SSL_CERTFILE", "ssl_certfile", "client certificate (mutual TLS)"),
    Option("KAFKA_SSL_KEYFILE", "ssl_keyfile", "client key (mutual TLS)"),
    Option("KAFKA_CLIENT_ID", "client_id", "client id the brokers see"),
    Option("KAFKA_COMPRESSION", "compression", "producer compression: none, gzip, snappy, lz4 or zstd"),
    Option("KAFKA_MAX_RECORD_BYTES", "max_record_bytes", "largest record the worker produces"),
    Option(
        "KAFKA_IDEMPOTENCE",
        "idempotence",
        "idempotent producer: auto (default: on where the brokers grant producer ids), on, or off",
    ),
)


def load_kafka_settings(values: Mapping[str, str]) -> KafkaSettings:
    return parse_settings(KafkaSettings, KAFKA_OPTIONS, values)


def connection_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments every aiokafka client takes: brokers, client id and security."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.ssl_cafile, certfile=settings.ssl_certfile, keyfile=settings.ssl_keyfile
        )
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism or "PLAIN"
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.reveal() if settings.sasl_password else None
    return kwargs


def make_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    kwargs: dict[str, Any] = {
        **connection_kwargs(settings),
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 2,
        "max_request_size": settings.max_record_bytes + 64 * 1024,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "request_timeout_ms": 30_000,
    }
    kwargs.update(overrides)
    return AIOKafkaProducer(**kwargs)


def make_consumer(settings: KafkaSettings, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    kwargs: dict[str, Any] = {
        **connection_kwargs(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    kwargs.update(overrides)
    return AIOKafkaConsumer(**kwargs)


def seek_to_log_start(consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
    """Position each partition at its first record; for consumers made by :func:`make_consumer`.

    Not ``seek_to_beginning``: the embedded broker's ListOffsets(earliest) can answer the second batch's
    offset when several producers wrote a partition's first batches at once, which skips the first batch.
    Offset 0 starts every log that was never trimmed; where retention trimmed it, the fetch is out of
    range and the consumer resets to the real log start (``auto_offset_reset="earliest"``).
    """
    for tp in partitions:
        consumer.seek(tp, 0)


def make_admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_kwargs(settings))


async def partitions_if_any(settings: KafkaSettings, topic: str) -> list[TopicPartition]:
    """A topic's partitions, or none when it does not exist. Listed before described: describing a missing
    topic creates it on the embedded broker (and on brokers with auto-creation on)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return []
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [
        TopicPartition(topic, p["partition"]) for p in sorted(described["partitions"], key=lambda p: p["partition"])
    ]


async def ensure_topics(
    settings: KafkaSettings, names: Iterable[str], partitions: int, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created (idempotent)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in dict.fromkeys(names) if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(name, partitions, replication_factor) for name in missing])
        return missing
    finally:
        await admin.close()


async def committed_with_metadata(
    admin: AIOKafkaAdminClient, group_id: str, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The group's committed offsets and metadata strings; a partition the group never committed is left out.

    Any error raises, so that an answer is never mistaken for "nothing committed": aiokafka's
    ``list_consumer_group_offsets`` checks only per-partition codes, and an OffsetFetch v2+ that fails for the
    whole group (coordinator loading, moved or not available, as during a broker's rolling restart) comes
    back as no partitions and a top-level code, which it returns as ``{}``. Read as "a new group", that
    restarts every partition at offset 0. So the request is sent here and both levels are checked, and a
    partition missing from the answer is an error too. (Partitions are listed: the embedded broker needs it.)
    """
    wanted = list(partitions)
    by_topic: dict[str, list[int]] = {}
    for tp in wanted:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    coordinator = await admin.find_coordinator(group_id)
    response = await admin._send_request(OffsetFetchRequest(group_id, list(by_topic.items())), coordinator)
    group_error = getattr(response, "error_code", 0)  # top-level since v2
    if group_error:
        raise for_code(group_error)(f"committed offsets of group {group_id}")
    found: dict[TopicPartition, OffsetAndMetadata] = {}
    answered: set[TopicPartition] = set()
    for topic, answers in response.topics:
        for partition, offset, metadata, error_code in answers:
            tp = TopicPartition(topic, partition)
            if error_code:
                raise for_code(error_code)(f"committed offset of {topic}-{partition} in group {group_id}")
            answered.add(tp)
            if offset >= 0:  # -1: the group has no commit for it
                found[tp] = OffsetAndMetadata(offset, metadata or "")
    if missing := [tp for tp in wanted if tp not in answered]:
        raise KafkaError(f"the coordinator left out {len(missing)} partition(s) of group {group_id}")
    return found


async def committed_with_retries(
    admin: AIOKafkaAdminClient, group_id: str, partitions: Iterable[TopicPartition], *, within_s: float
) -> dict[TopicPartition, OffsetAndMetadata]:
    """:func:`committed_with_metadata`, retrying what passes by itself (a coordinator loading or moving) for
    up to ``within_s``; then, or at once for any other error, the error raises."""
    wanted = list(partitions)
    deadline = time.monotonic() + within_s
    retries = 0
    while True:
        try:
            return await committed_with_metadata(admin, group_id, wanted)
        except KafkaError as exc:
            delay = COMMITTED_READ_BACKOFF.delay_s(retries)
            if verdict(exc) is not Verdict.RETRY or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        retries += 1


async def grants_producer_ids(admin: AIOKafkaAdminClient) -> bool:
    """Whether the brokers give out producer ids (InitProducerId without a transactional id), which the
    idempotent producer needs at start. Apache Kafka does (and may refuse it under ACLs without the
    IdempotentWrite permission); the embedded broker answers aiokafka with an error."""
    try:
        response = await admin._send_request(InitProducerIdRequest(None, 60_000))
    except KafkaError:
        return False
    return not response.error_code


def _text(value: str | int) -> bytes:
    return str(value).encode()


def record_headers(
    *,
    job_id: str | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    group_id: str,
    reason_kind: str | None = None,
    replay_count: bytes | None = None,
) -> list[tuple[str, bytes]]:
    """The headers every produced record carries (see ``schemas.topics``), as UTF-8 text."""
    headers = [
        (HEADER_ORIGINAL_TOPIC, _text(topic)),
        (HEADER_ORIGINAL_PARTITION, _text(partition)),
        (HEADER_ORIGINAL_OFFSET, _text(offset)),
        (HEADER_ORIGINAL_CONSUMER_GROUP, _text(group_id)),
    ]
    if timestamp_ms is not None and timestamp_ms >= 0:
        headers.append((HEADER_ORIGINAL_TIMESTAMP, _text(timestamp_ms)))
    if job_id is not None:
        headers.insert(0, (HEADER_JOB_ID, _text(job_id)))
    if reason_kind is not None:
        headers.append((HEADER_REASON_KIND, _text(reason_kind)))
    if replay_count is not None:
        headers.append((HEADER_REPLAY_COUNT, replay_count))
    return headers
