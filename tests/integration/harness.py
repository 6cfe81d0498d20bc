"""Helpers for end-to-end tests: topics, publishing, running workers, reading what they produced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka.structs import ConsumerRecord, TopicPartition

from pipeline.client import ChatClient, ClientConfig
from pipeline.config import WorkerSettings
from pipeline.kafka import (
    KafkaSettings,
    committed_with_metadata,
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    seek_to_log_start,
)
from pipeline.metrics import Metrics, MetricsObserver
from pipeline.secret import Secret
from pipeline.worker import Worker
from schemas import UserMessage
from schemas.topics import Job, Result, Review, reason_kind
from tests.fixtures.env import child_env

#: Fast joins on the embedded broker: it holds JoinGroup for session_timeout/2.
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}
FAST_GROUP_ENV = {"PIPELINE_SESSION_TIMEOUT_MS": "6000", "PIPELINE_HEARTBEAT_INTERVAL_MS": "2000"}
API_KEY = "sk-test-simulator-key-0000000000000000"


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    review: str
    group: str

    @classmethod
    def named(cls, prefix: str) -> Topics:
        return cls(f"{prefix}-prompts", f"{prefix}-completions", f"{prefix}-review", f"{prefix}-group")

    def env(self) -> dict[str, str]:
        return {
            "PIPELINE_INPUT_TOPIC": self.input,
            "PIPELINE_OUTPUT_TOPIC": self.output,
            "PIPELINE_REVIEW_TOPIC": self.review,
            "PIPELINE_GROUP_ID": self.group,
        }


async def create_topics(kafka: KafkaSettings, topics: Topics, partitions: int = 3) -> None:
    await ensure_topics(kafka, [topics.input, topics.output, topics.review], partitions)


def job(job_id: str, text: str = "Write a haiku about tea.", **fields: Any) -> bytes:
    return msgspec.json.encode(Job(id=job_id, messages=[UserMessage(content=text)], **fields))


async def publish(
    kafka: KafkaSettings, topic: str, values: Sequence[bytes | None], partition: int | None = None
) -> list[Any]:
    """Publish records (keyed by position) and return their RecordMetadata."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        acks = [
            await producer.send(topic, value, key=str(i).encode(), partition=partition)
            for i, value in enumerate(values)
        ]
        return list(await asyncio.gather(*acks))
    finally:
        await producer.stop()


async def publish_racing(
    kafka: KafkaSettings, topic: str, by_partition: Sequence[Sequence[bytes]], producers: int = 3
) -> None:
    """Publish each partition's records from several producers at once, one partition after the other, so
    its first batches race: on the embedded broker that makes ListOffsets(earliest) answer the second
    batch's offset for about 2 partitions in 100 (racing all partitions at once hardly ever does)."""
    started = [make_producer(kafka) for _ in range(producers)]

    async def send(producer: Any, partition: int, values: Sequence[bytes]) -> None:
        await asyncio.gather(*[await producer.send(topic, value, partition=partition) for value in values])

    try:
        for producer in started:
            await producer.start()
            await producer.partitions_for(topic)  # metadata first, so the sends below start together
        for partition, values in enumerate(by_partition):
            await asyncio.gather(
                *(send(producer, partition, values[i::producers]) for i, producer in enumerate(started))
            )
    finally:
        for producer in started:
            await producer.stop()


@dataclass
class Collected:
    """Records read from the output and review topics."""

    outputs: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    reviews: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)

    @property
    def results(self) -> list[Result]:
        return [msgspec.json.decode(r.value or b"", type=Result) for r in self.outputs]

    @property
    def review_records(self) -> list[Review]:
        return [msgspec.json.decode(r.value or b"", type=Review) for r in self.reviews]

    def sources(self) -> list[tuple[int, int]]:
        sources = [(r.source.partition, r.source.offset) for r in self.results]
        return sources + [(r.source.partition, r.source.offset) for r in self.review_records]

    def reasons(self) -> dict[str | None, str]:
        """Job id → ``"output"`` or the review reason kind."""
        routes: dict[str | None, str] = {r.id: "output" for r in self.results}
        routes.update({r.id: reason_kind(r.reason) for r in self.review_records})
        return routes


async def collect(kafka: KafkaSettings, topics: Topics, count: int, timeout: float = 60.0) -> Collected:
    """Read output and review from the beginning until ``count`` distinct sources arrived (or timeout)."""
    collected = Collected()
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        admin = make_admin(kafka)
        await admin.start()
        try:
            described = await admin.describe_topics([topics.output, topics.review])
        finally:
            await admin.close()
        partitions = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
        consumer.assign(partitions)
        seek_to_log_start(consumer, partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(set(collected.sources())) < count:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                (collected.outputs if tp.topic == topics.output else collected.reviews).extend(records)
    finally:
        await consumer.stop()
    return collected


async def committed(kafka: KafkaSettings, group: str, topic: str, partitions: int) -> dict[int, int]:
    admin = make_admin(kafka)
    await admin.start()
    try:
        stored = await committed_with_metadata(admin, group, [TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await admin.close()
    return {tp.partition: om.offset for tp, om in stored.items()}


def worker_settings(topics: Topics, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "input_topic": topics.input,
        "output_topic": topics.output,
        "review_topic": topics.review,
        "group_id": topics.group,
        "commit_interval_ms": 100,
        "metrics_port": 0,
        "drain_timeout_s": 10.0,
        **FAST_GROUP,
    }
    values.update(overrides)
    return WorkerSettings(**values)


def client_config(base_url: str, **overrides: Any) -> ClientConfig:
    return ClientConfig(api_key=Secret(API_KEY), base_url=base_url, **overrides)


@dataclass
class RunningWorker:
    worker: Worker
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_worker(
    kafka: KafkaSettings, settings: WorkerSettings, config: ClientConfig
) -> AsyncIterator[RunningWorker]:
    """A worker in this process; stopped gracefully (drain, commit) when the block ends."""
    metrics = Metrics()
    client = ChatClient(config, observer=MetricsObserver(metrics))
    worker = Worker(settings, kafka, client, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield RunningWorker(worker, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
        await client.aclose()


async def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


def worker_env(kafka: KafkaSettings, topics: Topics, base_url: str, **extra: str) -> dict[str, str]:
    return {
        **child_env(),
        **FAST_GROUP_ENV,
        **topics.env(),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": base_url,
        "PIPELINE_METRICS_PORT": "0",
        "PIPELINE_COMMIT_INTERVAL_MS": "100",
        **extra,
    }


@contextlib.contextmanager
def worker_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``pipeline run`` in a child process (its JSON log to ``log_path``); killed if still running at exit."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "run"], env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            lines.append({"unparsed": raw})
    return lines
