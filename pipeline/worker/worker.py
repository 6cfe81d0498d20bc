"""The thin worker: wires intake, scheduler, processor, sink and offsets, and owns the lifecycle.

One task per started job. The intake hands fetched records to :meth:`Worker._submit`, which tracks them in
their partition's ledger (:mod:`~pipeline.worker.offsets`) and admits them to the
:mod:`~pipeline.worker.scheduler`; the jobs it starts run :meth:`Worker._run_job`: the processor's
decode → call → route, the scheduler told the call returned (its slot goes to the next job), the sink's
delivery, and the ledger told the job is done. Every value passes through here; no part calls another.

Rebalance: revoked partitions start nothing more and get ``revoke_timeout_s`` for their jobs in flight, then
what is done is committed and the rest is cancelled and left to the new owner. Shutdown: stop fetching, drain
up to ``drain_timeout_s``, flush, commit, leave the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Final

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.config import WorkerSettings
from pipeline.kafka import KafkaSettings
from pipeline.metrics import Metrics
from pipeline.routing import Thresholds
from pipeline.worker.intake import Intake
from pipeline.worker.offsets import Admission, Offsets, admit
from pipeline.worker.ports import KafkaClients, Record
from pipeline.worker.processor import CompletionClient, Processor
from pipeline.worker.scheduler import Limits, Scheduler, Ticket
from pipeline.worker.sink import Destinations, Sink
from schemas.topics import Source

log = logging.getLogger("pipeline.worker")

#: /healthz fails when the fetch loop has not turned for this long (a wedged loop, not a slow provider).
LIVENESS_STALL_S: Final = 60.0
#: How often lag is measured against the log end while partitions are paused (their fetches stop).
END_OFFSETS_EVERY_S: Final = 10.0
#: On a stop, how long the fetch loop may take to notice it before it is cancelled (held by a rebalance).
STOP_FETCH_GRACE_S: Final = 1.0


class TopicMissing(RuntimeError):
    """A topic the worker needs does not exist."""


async def _unless_stopped(
    work: Coroutine[object, object, None], stop: asyncio.Event, *, name: str, grace_s: float = 0.0
) -> bool:
    """Run ``work`` until it ends or ``stop`` is set (then give it ``grace_s`` more to end by itself, and
    cancel it); True when it ended by itself."""
    running = asyncio.create_task(work, name=name)
    stopping = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not running.done() and grace_s > 0:
            await asyncio.wait({running}, timeout=grace_s)
    finally:
        stopping.cancel()
        running.cancel()  # nothing to cancel once it has ended
    with contextlib.suppress(asyncio.CancelledError):
        await running
        return True
    return False


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._worker._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._worker._on_assigned(list(assigned))


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        kafka: KafkaSettings,
        client: CompletionClient,
        metrics: Metrics | None = None,
        clients: KafkaClients | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.metrics = metrics = metrics or Metrics()
        self.clients = clients or KafkaClients.connect(kafka, settings)
        self.scheduler: Scheduler[Record] = Scheduler(
            Limits.for_concurrency(settings.concurrency, settings.max_buffered_bytes)
        )
        self.offsets = Offsets(metrics)
        thresholds = Thresholds(any_category=settings.review_threshold, per_category=settings.review_thresholds)
        self._processor = Processor(
            client, thresholds, max_job_bytes=settings.max_job_bytes, log_prompts=settings.log_prompts
        )
        destinations = Destinations(
            settings.output_topic, settings.review_topic, settings.group_id, kafka.max_record_bytes
        )
        self._sink = Sink(self.clients.producer, destinations, metrics)
        self._intake = Intake(
            self.clients.consumer, self.scheduler, metrics, max_poll_interval_ms=settings.max_poll_interval_ms
        )
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._running = False
        self._end_offsets: dict[TopicPartition, int] = {}
        self._end_offsets_at = 0.0
        # Read when scraped rather than set on every job start and finish.
        metrics.jobs_in_flight.set_function(lambda: self.scheduler.held)
        metrics.bytes_in_flight.set_function(lambda: self.scheduler.held_bytes)

    # ------------------------------------------------------------------ state seen from outside

    @property
    def alive(self) -> bool:
        """Running, and the fetch loop turned recently (or it is draining, which stops fetching on purpose)."""
        stalled = time.monotonic() - self._intake.last_turn > LIVENESS_STALL_S
        return self._running and (self.scheduler.draining or not stalled)

    @property
    def ready(self) -> bool:
        return self._running and not self.scheduler.draining and bool(self.offsets.partitions)

    @property
    def in_flight(self) -> int:
        return self.scheduler.held

    @property
    def assignment(self) -> list[TopicPartition]:
        return self.offsets.partitions

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set, then drain and leave the group."""
        consumer, producer, admin = self.clients.consumer, self.clients.producer, self.clients.admin
        await admin.start()
        try:
            await self._check_topics()
            self.offsets.keeps_metadata = await self._probe_commit_metadata()
            await producer.start()
            try:
                consumer.subscribe([self.settings.input_topic], listener=_RebalanceListener(self))
                if not await _unless_stopped(consumer.start(), stop, name="consumer-start"):
                    # aiokafka's start waits for the first assignment, which a stuck rebalance may never bring
                    log.info("stopped before the first assignment")
                    await consumer.stop()
                    return
                self._running = True
                committer = asyncio.create_task(self._commit_loop(), name="commit-loop")
                try:
                    # getmany waits out a rebalance whatever its timeout, and a stop must not wait for the group:
                    # the loop is given up on (cancelled at an await, having submitted what it was handed).
                    fetching = self._intake.run(stop, self._submit)
                    await _unless_stopped(fetching, stop, name="fetch-loop", grace_s=STOP_FETCH_GRACE_S)
                    await self._drain()
                finally:
                    self._running = False
                    committer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await committer
                    await self._cancel(self._all_tasks())
                    await consumer.stop()
            finally:
                await producer.stop()
        finally:
            await admin.close()

    async def _check_topics(self) -> None:
        """Fail at start when a topic is missing, after waiting up to ``topic_wait_s`` for it to appear."""
        needed = (self.settings.input_topic, self.settings.output_topic, self.settings.review_topic)
        deadline = time.monotonic() + self.settings.topic_wait_s
        while True:
            topics = set(await self.clients.admin.list_topics())
            missing = [topic for topic in needed if topic not in topics]
            if not missing or time.monotonic() >= deadline:
                break
            log.info("waiting for topics", extra={"detail": ", ".join(missing)})
            await asyncio.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        if missing:
            raise TopicMissing(
                f"topic{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found on "
                f"{self.kafka.bootstrap_servers}; create them with `pipeline topics create`"
            )

    async def _probe_commit_metadata(self) -> bool:
        try:
            keeps = await self.clients.admin.keeps_commit_metadata(self.settings.input_topic, self.settings.group_id)
        except KafkaError as exc:
            log.warning("commit metadata probe failed; done-offset map off", extra={"error": type(exc).__name__})
            keeps = False
        if not keeps:
            log.info(
                "the broker does not keep commit metadata: the done-offset map is off, so a restart "
                "reprocesses jobs finished beyond the committed offset"
            )
        self.metrics.commit_metadata_supported.set(1 if keeps else 0)
        return keeps

    async def _drain(self) -> None:
        self.scheduler.drain()
        consumer = self.clients.consumer
        assignment = list(consumer.assignment())
        if assignment:
            consumer.pause(*assignment)
        pending = self._all_tasks()
        log.info("draining", extra={"count": len(pending)})
        if pending:
            await asyncio.wait(pending, timeout=self.settings.drain_timeout_s)
        await self.clients.producer.flush()
        await self.offsets.commit(consumer.commit)
        left = self._all_tasks()
        if left:
            log.warning("drain deadline passed; unfinished jobs will be reprocessed", extra={"count": len(left)})

    # ------------------------------------------------------------------ jobs

    def _submit(self, tp: TopicPartition, records: list[Record]) -> bool:
        """Track and admit a fetched batch; False when the partition has no ledger yet (fetch it again)."""
        ledger = self.offsets.ledger(tp)
        if ledger is None:
            return False
        by_key = self.settings.ordering == "key"
        for record in records:
            admission = admit(ledger, record.offset)
            if admission is Admission.SEEN:
                continue  # committed already, or delivered twice
            self.metrics.jobs_consumed.inc()
            if admission is Admission.DONE_BEFORE:
                self.metrics.jobs_skipped.inc()
                continue
            key = record.key if by_key else None
            _, started = self.scheduler.admit(tp, ledger.epoch, record.offset, key, len(record.value or b""), record)
            self._start(started)
        return True

    def _start(self, tickets: list[Ticket[Record]]) -> None:
        for ticket in tickets:
            task = asyncio.create_task(self._run_job(ticket))
            tasks = self._tasks.setdefault(ticket.tp, set())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _run_job(self, ticket: Ticket[Record]) -> None:
        record = ticket.payload
        delivered = False
        try:
            source = Source(topic=record.topic, partition=record.partition, offset=record.offset)
            routed = await self._processor.process(record.value or b"", source)
            self._start(self.scheduler.call_returned(ticket))
            self._intake.wake()
            await self._sink.deliver(routed, record)
            delivered = True
        except Exception:  # a bug in one job must not take the worker: the job is left uncommitted
            log.exception("job failed; left for the partition's next owner", extra={"offset": record.offset})
        finally:
            if delivered:
                self.offsets.complete(ticket.tp, ticket.epoch, ticket.offset)
                self._start(self.scheduler.delivered(ticket))
            else:
                self._start(self.scheduler.abandon(ticket))
            self._intake.wake()

    def _all_tasks(self) -> set[asyncio.Task[None]]:
        """The job tasks not yet ended (an ended one leaves its set a loop turn later, by its done callback)."""
        return {task for tasks in self._tasks.values() for task in tasks if not task.done()}

    async def _cancel(self, tasks: set[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ offsets and rebalance

    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self.offsets.commit(self.clients.consumer.commit)
            await self._update_lag()

    async def _update_lag(self) -> None:
        """Lag per owned partition against the log end: the fetch high watermark, and for paused partitions
        (not fetched) also the end offsets, asked every ``END_OFFSETS_EVERY_S`` (exact on Apache Kafka; a
        little low on the embedded broker)."""
        consumer = self.clients.consumer
        if self._intake.paused and time.monotonic() - self._end_offsets_at > END_OFFSETS_EVERY_S:
            self._end_offsets_at = time.monotonic()
            try:
                self._end_offsets = await consumer.end_offsets(self.offsets.partitions)
            except KafkaError:
                self._end_offsets = {}
        self.offsets.record_lag(lambda tp: max(consumer.highwater(tp) or 0, self._end_offsets.get(tp, 0)))

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        """A ledger per new partition, starting at its committed offset (with the done map), and the
        consumer positioned there: the ledger, not a reset the consumer did on its own, says where to start."""
        consumer = self.clients.consumer
        stored: dict[TopicPartition, OffsetAndMetadata] | None = None
        try:
            stored = await self.clients.admin.committed(self.settings.group_id, assigned)
        except Exception as exc:  # the partitions need their ledgers anyway: without one, fetches are rewound
            log.warning("could not read committed offsets; no done map this time", extra={"error": type(exc).__name__})
        if stored is not None:
            owned = consumer.assignment()
            for tp in assigned:
                if tp in owned:
                    # Offset 0, not the broker's "earliest": see kafka.seek_to_log_start.
                    consumer.seek(tp, stored[tp].offset if tp in stored else 0)
        for tp in assigned:
            self.offsets.assign(tp, stored.get(tp) if stored else None)
        self._intake.assignment_changed()
        self.metrics.partitions_assigned.set(len(self.offsets.partitions))
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}-{tp.partition}" for tp in assigned]})

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        revoked = [tp for tp in revoked if tp in self.offsets]
        if not revoked:
            return
        self.scheduler.close_partitions(revoked)
        pending: set[asyncio.Task[None]] = set().union(*(self._tasks.get(tp, set()) for tp in revoked))
        if pending:
            await asyncio.wait(pending, timeout=self.settings.revoke_timeout_s)
        await self.offsets.commit(self.clients.consumer.commit, self.offsets.release(revoked))
        self.offsets.forget(revoked)
        abandoned: set[asyncio.Task[None]] = set().union(*(self._tasks.pop(tp, set()) for tp in revoked))
        for tp in revoked:
            self.metrics.forget_partition(tp.topic, tp.partition)
        await self._cancel(abandoned)
        self._start(self.scheduler.forget_partitions(revoked))
        self._intake.wake()
        self.metrics.partitions_assigned.set(len(self.offsets.partitions))
        log.info(
            "partitions revoked",
            extra={"partitions": [f"{tp.topic}-{tp.partition}" for tp in revoked], "count": len(abandoned)},
        )
