"""Carries out accepted approve and rerun decisions: each one's record is published once, crash or not.

The applier reads the decisions topic in the consumer group ``<group>.review-applier`` (several consoles: one
applier per partition) and asks a :class:`~pipeline.review.follower.LogFollower`'s book whether a decision was
accepted and what became of it. For an accepted approve or rerun not yet ``applied``:

1. write ``applying`` naming the target partition (chosen here, as the default partitioner would) and its
   high watermark read by a fetch: a lower bound of where the record will land;
2. publish (approve: a :class:`~schemas.topics.Result` with its ``approval`` to the output topic; rerun: the
   job to the input topic with the replay count raised), with the header ``pipeline_decision-id``;
3. write ``applied`` naming where it landed, then commit the decision's offset.

A crash anywhere leaves a state the next owner resolves from the log: no ``applying`` → start at 1; an
``applying`` without ``applied`` → look for the header in the target partition from ``from_offset`` to its
high watermark: found → write ``applied`` only, not found → publish (2, 3). The committed offset only saves
work: every decision before it is settled, and reading from offset 0 again changes nothing.

Two appliers never work on one partition at once as long as the group does its job: a revoked partition's
decision in hand is finished before the revocation returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from pipeline.kafka import KafkaSettings, committed_with_retries, make_admin, make_consumer, make_producer
from pipeline.review.follower import LogFollower, epoch_ms
from pipeline.review.metrics import ReviewMetrics
from pipeline.review.publish import Outgoing, outgoing
from pipeline.review.state import APPLIED_DECISIONS, Application, position_of
from schemas.decisions import HEADER_DECISION_ID, Applied, Applying, Decision, DecisionRecord

log = logging.getLogger("pipeline.review")

#: Where a crash can be injected in tests: after ``applying`` is written, after the record is published.
Stage = Literal["applying-written", "published"]
Hook = Callable[[Stage, Application], Awaitable[None]]
#: How long a coordinator that is loading or moving may take to answer for committed offsets.
COMMITTED_READ_WITHIN_S: Final = 30.0
_record_decoder: Final = msgspec.json.Decoder(DecisionRecord)
_encoder: Final = msgspec.json.Encoder()
_partitioner: Final = DefaultPartitioner()


def applier_group(group_id: str) -> str:
    """The applier's consumer group, beside the workers' ``group_id``."""
    return f"{group_id}.review-applier"


async def _no_hook(_stage: Stage, _application: Application) -> None:
    return None


@dataclass
class _Clients:
    consumer: AIOKafkaConsumer
    producer: AIOKafkaProducer
    #: Without a group: reads high watermarks and scans target partitions.
    reader: AIOKafkaConsumer


class Applier:
    """See the module docstring. ``run()`` applies until cancelled, or until something fails (a Kafka error, a
    hook that raises in tests): running it again resumes safely.

    ``follower`` is the book to ask (shared with a desk in the same process); ``group_id`` is the workers'
    group (the applier's is ``<group_id>.review-applier``, and a Result names ``group_id`` as its original
    consumer group when the review record does not); ``fold_wait_s`` bounds each wait for the book or for a
    partition that gives nothing; ``hook`` is awaited at each :data:`Stage` (tests inject crashes there).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        follower: LogFollower,
        *,
        output_topic: str,
        input_topic: str,
        group_id: str,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        fold_wait_s: float = 60.0,
        clock: Callable[[], int] = epoch_ms,
        metrics: ReviewMetrics | None = None,
        hook: Hook | None = None,
    ) -> None:
        self._kafka = kafka
        self._follower = follower
        self._output_topic = output_topic
        self._input_topic = input_topic
        self._group_id = group_id
        self._group = applier_group(group_id)
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._fold_wait_s = fold_wait_s
        self._clock = clock
        self._metrics = metrics
        self._hook = hook or _no_hook
        #: Held while a decision is handled; a revocation waits for it.
        self._lock = asyncio.Lock()
        self._clients: _Clients | None = None
        #: Per decisions partition, the end of what this applier wrote there (its applying and applied records).
        self._written: dict[TopicPartition, int] = {}

    async def run(self) -> None:
        consumer = make_consumer(
            self._kafka,
            self._group,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
        )
        clients = _Clients(consumer, make_producer(self._kafka), make_consumer(self._kafka, None, fetch_max_wait_ms=50))
        try:
            await clients.producer.start()
            await clients.reader.start()
            self._clients = clients
            await self._follower.wait_ready()
            consumer.subscribe([self._follower.decisions_topic], listener=_Rebalance(self))
            await consumer.start()
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    await self._handle_batch(tp, records)
        finally:
            self._clients = None
            # Every client, started or not: one stopped (or cancelled) half-way through start() holds connections
            # and tasks too, and stop() on a client never started is harmless.
            for client in (consumer, clients.reader, clients.producer):
                with contextlib.suppress(Exception):
                    await client.stop()

    async def _handle_batch(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        clients = self._clients
        assert clients is not None
        consumer = clients.consumer
        for record in records:
            decision = _actionable(record)
            if decision is not None:
                fetched_to = max(consumer.highwater(tp) or 0, record.offset + 1)
                if not await self._judged(tp, decision, fetched_to):
                    return  # revoked meanwhile: the next owner starts from the last commit
                async with self._lock:  # a revocation waits for the decision in hand
                    if tp not in consumer.assignment():
                        return
                    found = self._follower.book.application(position_of(tp.topic, tp.partition, record.offset))
                    if found is not None and found.applied is None:
                        await self.apply(found)
                        await self._commit(consumer, tp, record.offset + 1)
        if records and tp in consumer.assignment():
            await self._commit(consumer, tp, records[-1].offset + 1)

    async def _judged(self, tp: TopicPartition, decision: Decision, fetched_to: int) -> bool:
        """Wait until the book has judged ``decision`` and holds everything ``tp`` held when it was fetched (an
        ``applying`` or ``applied`` written before a crash); False if ``tp`` is revoked first. A decision that
        waits long (it names a review record far ahead of the review topic: a faulty writer) holds its
        partition, with a warning now and then, rather than being skipped and never applied."""
        clients = self._clients
        assert clients is not None
        book, follower, consumer = self._follower.book, self._follower, clients.consumer

        # Also what this applier wrote itself: a decision read again (after a rebalance) must find its applied.
        fold_to = max(fetched_to, self._written.get(tp, 0))

        def judged() -> bool:
            return book.verdict(decision.record_id) is not None and follower.folded_to(tp) >= fold_to

        while True:
            try:
                await follower.wait_until(lambda: judged() or tp not in consumer.assignment(), self._fold_wait_s)
                return tp in consumer.assignment()
            except TimeoutError:
                log.warning(
                    "a decision is still not judged; its partition waits",
                    extra={"job_id": decision.item, "topic": tp.topic, "partition": tp.partition},
                )

    @staticmethod
    async def _commit(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        try:
            await consumer.commit({tp: OffsetAndMetadata(offset, "")})
        except KafkaError as exc:  # the next commit covers it; a new owner re-reads, which is harmless
            log.warning("committing the applier's offset failed", extra={"error": type(exc).__name__})

    async def apply(self, application: Application) -> Applied:
        """Carry out one accepted decision from wherever an earlier attempt left it."""
        clients = self._clients
        assert clients is not None, "apply() runs inside run()"
        record = outgoing(
            application, output_topic=self._output_topic, input_topic=self._input_topic, group_id=self._group_id
        )
        if application.applying:
            for tp, from_offset in _targets(application.applying).items():
                found = await self._find(clients.reader, tp, from_offset, application.decision_id)
                if found is not None:
                    log.info("found a published decision", extra={"job_id": application.key, "offset": found})
                    return await self._applied(application, tp, found)
            target = TopicPartition(application.applying[0].topic, application.applying[0].partition)
        else:
            target = TopicPartition(record.topic, await self._partition_for(clients.producer, record))
            from_offset = await _highwater(clients.reader, target, self._fold_wait_s)
            await self._write(
                Applying(
                    record_id=_new_id(),
                    item=application.key,
                    decision_id=application.decision_id,
                    topic=target.topic,
                    partition=target.partition,
                    from_offset=from_offset,
                    at=self._clock(),
                )
            )
            await self._hook("applying-written", application)
        landed = await clients.producer.send_and_wait(
            target.topic, record.value, key=record.key, partition=target.partition, headers=record.headers
        )
        await self._hook("published", application)
        if self._metrics is not None:
            self._metrics.applied.labels(application.decision.decision).inc()
        log.info(
            "applied a review decision",
            extra={"job_id": application.key, "route": application.decision.decision, "offset": landed.offset},
        )
        return await self._applied(application, target, landed.offset)

    async def _applied(self, application: Application, tp: TopicPartition, offset: int) -> Applied:
        applied = Applied(
            record_id=_new_id(),
            item=application.key,
            decision_id=application.decision_id,
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            at=self._clock(),
        )
        await self._write(applied)
        return applied

    async def _write(self, record: Applying | Applied) -> None:
        clients = self._clients
        assert clients is not None
        topic = self._follower.decisions_topic
        written = await clients.producer.send_and_wait(topic, _encoder.encode(record), key=record.item.encode())
        tp = TopicPartition(topic, written.partition)
        self._written[tp] = max(self._written.get(tp, 0), written.offset + 1)

    @staticmethod
    async def _partition_for(producer: AIOKafkaProducer, record: Outgoing) -> int:
        """The partition the default partitioner would choose for the record's key (named in ``applying``)."""
        partitions = sorted(await producer.partitions_for(record.topic))
        chosen: int = _partitioner(record.key, partitions, partitions)
        return chosen

    async def _find(
        self, reader: AIOKafkaConsumer, tp: TopicPartition, from_offset: int, decision_id: str
    ) -> int | None:
        """The offset of the record carrying ``decision_id`` in ``tp`` from ``from_offset`` to its end, if any
        (:class:`TimeoutError` when the partition gives nothing for ``fold_wait_s``)."""
        wanted = decision_id.encode()
        reader.assign([tp])
        reader.seek(tp, from_offset)
        end: int | None = None
        idle_since = time.monotonic()
        while end is None or await reader.position(tp) < end:
            if time.monotonic() - idle_since > self._fold_wait_s:
                raise TimeoutError(f"scanning {tp.topic}-{tp.partition} for a published decision made no progress")
            batches = await reader.getmany(tp, timeout_ms=200)
            for found in batches.get(tp, []):
                idle_since = time.monotonic()
                if any(name == HEADER_DECISION_ID and value == wanted for name, value in found.headers or ()):
                    return int(found.offset)
            if end is None:
                end = reader.highwater(tp)
        return None

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Start each partition at the group's commit; at offset 0 where there is none (or it cannot be read:
        reading again is harmless, the log says what was applied)."""
        clients = self._clients
        if clients is None or not assigned:
            return
        admin = make_admin(self._kafka)
        try:
            await admin.start()
            committed = await committed_with_retries(admin, self._group, assigned, within_s=COMMITTED_READ_WITHIN_S)
        except KafkaError as exc:
            log.warning("reading the applier's committed offsets failed", extra={"error": type(exc).__name__})
            committed = {}
        finally:
            await admin.close()
        for tp in assigned:
            clients.consumer.seek(tp, committed[tp].offset if tp in committed else 0)

    async def _on_revoked(self) -> None:
        async with self._lock:  # the decision in hand is finished (applied and committed) first
            return


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, applier: Applier) -> None:
        self._applier = applier

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._applier._on_revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._applier._on_assigned(assigned)


def _actionable(record: ConsumerRecord[bytes, bytes]) -> Decision | None:
    """The record as an approve or rerun decision (the only ones with something to carry out), or None."""
    try:
        decoded = _record_decoder.decode(record.value or b"")
    except msgspec.MsgspecError:
        return None
    return decoded if isinstance(decoded, Decision) and decoded.decision in APPLIED_DECISIONS else None


def _targets(applying: tuple[Applying, ...]) -> dict[TopicPartition, int]:
    """Each partition an ``applying`` named, with the lowest offset from which to look."""
    targets: dict[TopicPartition, int] = {}
    for record in applying:
        tp = TopicPartition(record.topic, record.partition)
        targets[tp] = min(targets.get(tp, record.from_offset), record.from_offset)
    return targets


async def _highwater(reader: AIOKafkaConsumer, tp: TopicPartition, within_s: float) -> int:
    """``tp``'s high watermark from a fetch (``end_offsets()`` is wrong on the embedded broker, but its answer
    is never beyond the end, so the fetch starts there and reads little)."""
    reader.assign([tp])
    estimate = (await reader.end_offsets([tp]))[tp]
    reader.seek(tp, estimate)
    async with asyncio.timeout(within_s):
        while (highwater := reader.highwater(tp)) is None:
            await reader.getmany(tp, timeout_ms=200)
    return int(highwater)


def _new_id() -> str:
    return uuid.uuid4().hex
