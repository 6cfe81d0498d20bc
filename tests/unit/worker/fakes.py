"""In-memory stand-ins for the worker's Kafka clients and provider client, for deterministic worker tests.

Like Kafka's ``MockConsumer``: the test appends records, decides when the group rebalances (the listener is
called as aiokafka calls it: revoked, then assigned, with fetching held meanwhile), and can hold commits,
acknowledgements and provider calls until it lets them go. Tests wait for conditions, never for time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from pipeline.config import WorkerSettings
from pipeline.kafka import KafkaSettings
from pipeline.metrics import Metrics
from pipeline.outcomes import Completed, Outcome
from pipeline.worker import KafkaClients, Worker
from schemas.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    Moderation,
    ModerationResult,
    ModerationResults,
)
from schemas.topics import Job

INPUT = "prompts"


async def until(predicate: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    """Let the event loop run until ``predicate`` holds; the deadline only turns a hang into a failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.001)


class FakeConsumer:
    """The consumer contract of :mod:`pipeline.worker.ports`, over in-memory partition logs."""

    def __init__(self, partitions: list[TopicPartition]) -> None:
        self.initial = partitions
        self.logs: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        self.committed: dict[TopicPartition, OffsetAndMetadata] = {}
        self.commits: list[dict[TopicPartition, OffsetAndMetadata]] = []
        #: While clear, commits wait (set by default).
        self.commit_gate = asyncio.Event()
        self.commit_gate.set()
        self.commit_waiting = asyncio.Event()
        #: Raised by every commit while set.
        self.commit_error: Exception | None = None
        #: Apache Kafka keeps commit metadata; the embedded broker reads it back empty.
        self.keeps_metadata = True
        #: Raised by every fetch while set.
        self.fetch_error: Exception | None = None
        self.fetch_failures = 0
        self.fetch_calls = 0
        self.stopped = False
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._position: dict[TopicPartition, int] = {}
        self._listener: ConsumerRebalanceListener | None = None
        self._arrived = asyncio.Event()
        self._group = asyncio.Lock()  # held by a rebalance: fetching waits for it, as in aiokafka

    def append(self, tp: TopicPartition, value: bytes, key: bytes | None = None) -> None:
        log = self.logs[tp]
        log.append(ConsumerRecord(tp.topic, tp.partition, len(log), 1_700_000_000_000, 0, key, value, None, 0, 0, []))
        self._arrived.set()

    # -- the contract

    def subscribe(self, topics: list[str], *, listener: ConsumerRebalanceListener) -> None:
        self._listener = listener

    async def start(self) -> None:
        await self.rebalance(revoke=[], assign=self.initial)

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(
        self, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.fetch_calls += 1
        if self.fetch_error is not None:
            self.fetch_failures += 1
            raise self.fetch_error
        async with self._group:
            batches = self._take(max_records)
        if batches or timeout_ms == 0:
            return batches
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_ms / 1000):
                await self._arrived.wait()
        async with self._group:
            return self._take(max_records)

    def _take(self, max_records: int) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp in sorted(self._assigned - self._paused):
            position = self._position.get(tp, 0)
            records = self.logs[tp][position : position + max_records]
            if records:
                batches[tp] = records
                self._position[tp] = position + len(records)
                max_records -= len(records)
            if max_records <= 0:
                break
        return batches

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._position[partition] = offset

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self._position[tp] = len(self.logs[tp])

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.commit_waiting.set()
        await self.commit_gate.wait()
        if self.commit_error is not None:
            raise self.commit_error
        self.commits.append(dict(offsets))
        kept = offsets if self.keeps_metadata else {tp: OffsetAndMetadata(om.offset, "") for tp, om in offsets.items()}
        self.committed.update(kept)

    def highwater(self, partition: TopicPartition) -> int | None:
        return len(self.logs[partition])

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) for tp in partitions}

    # -- the group, as the test decides

    async def rebalance(self, revoke: list[TopicPartition], assign: list[TopicPartition]) -> None:
        """Revoke, then assign (positions at the committed offsets, nothing paused), calling the listener."""
        assert self._listener is not None
        async with self._group:
            await self._listener.on_partitions_revoked(revoke)
            self._assigned.difference_update(revoke)
            self._assigned.update(assign)
            self._paused.clear()
            for tp in assign:
                self._position[tp] = self.committed[tp].offset if tp in self.committed else 0
            await self._listener.on_partitions_assigned(assign)

    def committed_offset(self, tp: TopicPartition) -> int | None:
        return self.committed[tp].offset if tp in self.committed else None


class FakeProducer:
    """Acknowledges every record at once, or when ``ack_gate`` opens; can fail the next sends with an error."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
        self.ack_gate = asyncio.Event()
        self.ack_gate.set()
        self.failures_to_come = 0
        self.failure: Exception = KafkaConnectionError("broker away")
        #: Records larger than this are refused as the broker refuses them (MESSAGE_TOO_LARGE).
        self.max_value_bytes: int | None = None
        self.flushed = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[Any]:
        if self.failures_to_come:
            self.failures_to_come -= 1
            raise self.failure
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def acknowledge() -> None:
            await self.ack_gate.wait()
            if self.max_value_bytes is not None and len(value) > self.max_value_bytes:
                ack.set_exception(MessageSizeTooLargeError())
                return
            self.sent.append((topic, key, value, headers))
            ack.set_result(None)

        asyncio.get_running_loop().create_task(acknowledge())
        return ack

    async def flush(self) -> None:
        self.flushed += 1

    def job_ids(self, topic: str) -> list[str]:
        return [key.decode() for sent_topic, key, _, _ in self.sent if sent_topic == topic and key is not None]


class FakeAdmin:
    def __init__(self, consumer: FakeConsumer, topics: list[str]) -> None:
        self._consumer = consumer
        self.topics = topics
        #: Raised by the next committed-offset reads (one each), then they answer.
        self.committed_errors: list[Exception] = []
        self.committed_reads = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def committed(self, group_id: str, partitions: Any) -> dict[TopicPartition, OffsetAndMetadata]:
        self.committed_reads += 1
        if self.committed_errors:
            raise self.committed_errors.pop(0)
        return {tp: self._consumer.committed[tp] for tp in partitions if tp in self._consumer.committed}

    async def grants_producer_ids(self) -> bool:
        return False


def clean_completion() -> Completed:
    scores = {"violence": 0.01, "hate": 0.02}
    results = ModerationResults(
        model="omni-moderation-latest",
        results=[
            ModerationResult(
                categories={c: False for c in scores},
                category_applied_input_types={c: ["text"] for c in scores},
                category_scores=scores,
                flagged=False,
                model="omni-moderation-latest",
            )
        ],
    )
    completion = ChatCompletion(
        id="chatcmpl-1",
        object="chat.completion",
        created=1,
        model="gpt-4o-mini",
        choices=[Choice(index=0, finish_reason="stop", message=ChatCompletionMessage(role="assistant", content="ok"))],
        moderation=Moderation(input=results, output=results),
    )
    return Completed(completion=completion, attempts=1, latency_ms=1.0)


@dataclass
class HeldClient:
    """A provider whose calls wait until the test releases them (all at once, or by job id)."""

    calls: dict[str, asyncio.Future[Outcome]] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    release_all: bool = False
    provider_available: bool = True

    @property
    def takes_new_jobs(self) -> bool:
        return self.provider_available

    async def complete(self, job: Job) -> Outcome:
        self.started.append(job.id)
        if self.release_all:
            return clean_completion()
        call: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.calls[job.id] = call
        try:
            return await call
        except asyncio.CancelledError:
            self.cancelled.append(job.id)
            raise
        finally:
            self.calls.pop(job.id, None)

    def release(self, *job_ids: str) -> None:
        for job_id in job_ids or list(self.calls):
            if not self.calls[job_id].done():
                self.calls[job_id].set_result(clean_completion())

    def open(self) -> None:
        """Every call from now on returns at once, and the held ones return too."""
        self.release_all = True
        self.release()

    async def aclose(self) -> None:
        pass


@dataclass
class Rig:
    worker: Worker
    consumer: FakeConsumer
    producer: FakeProducer
    admin: FakeAdmin
    client: HeldClient
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None


def settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "input_topic": INPUT,
        "output_topic": "completions",
        "review_topic": "review",
        "group_id": "unit",
        "concurrency": 4,
        "commit_interval_ms": 10,
        "revoke_timeout_s": 30.0,
        "drain_timeout_s": 30.0,
        **overrides,
    }
    return WorkerSettings(**values)


@contextlib.asynccontextmanager
async def rig(partitions: int = 1, **overrides: Any) -> AsyncIterator[Rig]:
    """A worker on fakes (not started: ``await start(rig)``); stopped and awaited when the block ends."""
    consumer = FakeConsumer([TopicPartition(INPUT, p) for p in range(partitions)])
    producer = FakeProducer()
    admin = FakeAdmin(consumer, [INPUT, "completions", "review"])
    client = HeldClient()
    worker = Worker(
        settings(**overrides),
        KafkaSettings(),
        client,
        Metrics(),
        KafkaClients(consumer=consumer, producer=producer, admin=admin),
    )
    built = Rig(worker, consumer, producer, admin, client, asyncio.Event())
    try:
        yield built
    finally:
        built.stop.set()
        client.open()
        producer.ack_gate.set()
        consumer.commit_gate.set()
        if built.task is not None:
            await asyncio.wait_for(built.task, timeout=10)


async def start(rig: Rig) -> None:
    rig.task = asyncio.create_task(rig.worker.run(rig.stop))
    await until(lambda: rig.worker.ready, "the worker owns its partitions")
