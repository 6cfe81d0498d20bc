"""The embedded broker: `pipeline broker` serves Kafka clients, groups consume and commit."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.broker import answers_metadata, free_port
from pipeline.kafka import KafkaSettings, ensure_topics, make_consumer, seek_to_log_start
from tests.fixtures.broker import Broker, require_transactions
from tests.fixtures.env import child_env
from tests.integration.harness import publish_racing


async def produce_and_consume_in_a_group(bootstrap: str, topic: str, count: int) -> list[bytes]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, f"record-{i}".encode(), key=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    await consumer.start()
    seen: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(seen) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                seen.extend(r.value for r in records if r.value is not None)
                await consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "")})
        committed = [await consumer.committed(tp) for tp in consumer.assignment()]
        assert sum(c or 0 for c in committed) == count
    finally:
        await consumer.stop()
    return seen


async def test_the_fixture_broker_serves_group_consumers(kafka_broker: Broker, topic_prefix: str) -> None:
    seen = await produce_and_consume_in_a_group(kafka_broker.bootstrap_servers, f"{topic_prefix}-basic", 50)
    assert sorted(seen) == sorted(f"record-{i}".encode() for i in range(50))


def test_pipeline_broker_command_runs_a_broker_until_sigterm(topic_prefix: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"127.0.0.1:{port}" in banner
        assert answers_metadata("127.0.0.1", port)
        seen = asyncio.run(produce_and_consume_in_a_group(f"127.0.0.1:{port}", f"{topic_prefix}-cli", 10))
        assert len(seen) == 10
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    assert not answers_metadata("127.0.0.1", port, timeout=0.3)


def test_pipeline_broker_reports_a_port_in_use() -> None:
    port = free_port()
    command = [sys.executable, "-m", "pipeline.cli", "broker", "--port", str(port)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, env=child_env())
    try:
        assert first.stdout is not None
        first.stdout.readline()
        second = subprocess.run(command, capture_output=True, text=True, timeout=30, env=child_env())
        assert second.returncode == 1
        assert f"port {port} on 127.0.0.1 is in use" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=15)


async def test_transactions_where_the_broker_has_them(kafka_broker: Broker, topic_prefix: str) -> None:
    """The pipeline is at-least-once without transactions; this records what each broker offers."""
    require_transactions(kafka_broker)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, transactional_id=topic_prefix)
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(f"{topic_prefix}-tx", b"inside a transaction")
    finally:
        await producer.stop()


async def test_reading_from_the_log_start_sees_the_first_batches_however_they_were_written(
    kafka_broker: Broker, topic_prefix: str
) -> None:
    """Several producers writing a partition's first batches at once can make the embedded broker's
    ListOffsets(earliest) skip the first batch (see publish_racing); offset 0 never does."""
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topic, partitions = f"{topic_prefix}-racing", 100
    await ensure_topics(kafka, [topic], partitions)
    sent = [[f"{p}-{n}".encode() for n in range(6)] for p in range(partitions)]
    await publish_racing(kafka, topic, sent)
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        seek_to_log_start(consumer, tps)
        seen: set[bytes] = set()
        deadline = time.monotonic() + 30
        while len(seen) < partitions * 6 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.update(r.value or b"" for r in records)
    finally:
        await consumer.stop()
    assert seen == {value for values in sent for value in values}
