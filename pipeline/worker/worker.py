"""The thin worker: wires intake, scheduler, processor, sink and offsets, and owns the lifecycle.

The intake hands fetched records to :meth:`Worker._submit`, which tracks them in their partition's ledger
(:mod:`~pipeline.worker.offsets`) and admits them to the :mod:`~pipeline.worker.scheduler`; the jobs it starts
run in :mod:`~pipeline.worker.jobs`: the processor's decode → call → route, the scheduler told the call
returned (its slot goes to the next job), the sink's delivery, and the ledger told the job is done. A partition
whose commit falls more than :data:`~pipeline.ledger.MAX_SPAN_BEHIND_HEAD` records behind what was fetched (a
stuck job at its head) is not fetched until it catches up.

Rebalance: revoked partitions start nothing more and get ``revoke_timeout_s`` for their jobs in flight, then
what is done is committed and the rest is cancelled and left to the new owner; newly assigned ones start where
:mod:`~pipeline.worker.starts` says. Shutdown: stop fetching, drain up to ``drain_timeout_s``, flush, commit,
leave the group.

Failure: the fetch loop, the commit loop, the rebalance callbacks and every job are watched. A job whose
processing raises is routed to review (``api_error`` ``internal``) and its partition moves on. A Kafka error
that will not pass (:mod:`pipeline.kafka_errors`) or a loop or callback that dies stops the worker: it drains
what it can, commits, leaves, logs one line with the cause and :meth:`Worker.run` raises
:class:`WorkerFailed` (``pipeline run`` exits 1), rather than living on as a worker that does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Final

from aiokafka import ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

from pipeline.config import WorkerSettings
from pipeline.kafka import KafkaSettings
from pipeline.kafka_errors import FatalKafkaError
from pipeline.ledger import MAX_SPAN_BEHIND_HEAD
from pipeline.metrics import Metrics
from pipeline.routing import Thresholds
from pipeline.tenancy.lanes import input_lanes
from pipeline.tenancy.wiring import worker_spending
from pipeline.worker.cancellations import Cancellations
from pipeline.worker.intake import Intake
from pipeline.worker.jobs import Jobs
from pipeline.worker.offsets import Admission, Offsets, admit
from pipeline.worker.ports import KafkaClients, Record
from pipeline.worker.processor import CompletionClient, Processor
from pipeline.worker.scheduler import Limits, Scheduler, Ticket
from pipeline.worker.sink import Destinations, Sink
from pipeline.worker.starts import PartitionStarts

log = logging.getLogger("pipeline.worker")

#: /healthz fails when the fetch loop has not turned for this long (a wedged loop, not a slow provider).
LIVENESS_STALL_S: Final = 60.0
#: On a stop, how long the fetch loop may take to notice it before it is cancelled (held by a rebalance).
STOP_FETCH_GRACE_S: Final = 1.0


class TopicMissing(RuntimeError):
    """A topic the worker needs does not exist."""


class WorkerFailed(RuntimeError):
    """The worker met an error it cannot get past, and stopped; the message names it."""


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

    """aiokafka logs and swallows what a listener raises; here it stops the worker instead."""

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            await self._worker._on_revoked(list(revoked))
        except Exception as exc:
            self._worker._fail(exc, "revoking partitions")

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            await self._worker._on_assigned(list(assigned))
        except Exception as exc:
            self._worker._fail(exc, "assigning partitions")


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
            Limits.for_concurrency(settings.concurrency, settings.max_buffered_bytes), input_lanes(settings)
        )
        self.offsets = Offsets(metrics, read_back=lambda tps: self.clients.admin.committed(settings.group_id, tps))
        thresholds = Thresholds(any_category=settings.review_threshold, per_category=settings.review_thresholds)
        self.cancellations = Cancellations()
        self.spending, self._spend_sync = worker_spending(settings, kafka, metrics)
        self._processor = Processor(
            client,
            thresholds,
            max_job_bytes=settings.max_job_bytes,
            log_prompts=settings.log_prompts,
            cancellations=self.cancellations,
            spending=self.spending,
        )
        destinations = Destinations(
            settings.output_topic, settings.review_topic, settings.group_id, kafka.max_record_bytes
        )
        self._sink = Sink(self.clients.producer, destinations, metrics)
        self._client = client
        self._intake = Intake(
            self.clients.consumer,
            self.scheduler,
            metrics,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            takes_new_jobs=lambda: client.takes_new_jobs,
        )
        self._starts = PartitionStarts(
            group_id=settings.group_id,
            reset=settings.auto_offset_reset,
            consumer=self.clients.consumer,
            admin=self.clients.admin,
            offsets=self.offsets,
            intake=self._intake,
            metrics=metrics,
            fail=self._fail,
        )
        self._jobs = Jobs(
            scheduler=self.scheduler,
            processor=self._processor,
            sink=self._sink,
            offsets=self.offsets,
            metrics=metrics,
            max_job_bytes=settings.max_job_bytes,
            after=self._after_job,
            fail=self._fail,
        )
        #: Partitions whose commit offset is more than ``_span_limit`` records behind what was fetched: a stuck
        #: job at their head; fetching more of them would only grow what a restart must fetch again.
        self._span_held: set[TopicPartition] = set()
        self._span_limit = MAX_SPAN_BEHIND_HEAD
        self._running = False
        #: Set by a stop or a failure: the fetch loop ends and the worker drains.
        self._halt = asyncio.Event()
        self.failure: str | None = None
        # Read when scraped rather than set on every job start and finish.
        metrics.jobs_in_flight.set_function(lambda: self.scheduler.held)
        metrics.bytes_in_flight.set_function(lambda: self.scheduler.held_bytes)
        metrics.oldest_job_seconds.set_function(self._oldest_job_s)

    # ------------------------------------------------------------------ state seen from outside

    @property
    def alive(self) -> bool:
        """Running; the fetch loop turned recently (or it is draining, which stops fetching on purpose, or the
        group is rebalancing, which holds the fetch loop: a restart then would only rebalance it again); and
        no job has been held longer than ``stuck_job_s`` (a delivery that cannot get through)."""
        stalled = time.monotonic() - self._intake.last_turn > LIVENESS_STALL_S
        fetching = self.scheduler.draining or self._intake.rebalancing or not stalled
        return self._running and fetching and self._oldest_job_s() <= self.settings.stuck_job_s

    def _oldest_job_s(self) -> float:
        since = self.scheduler.oldest_since()
        return 0.0 if since is None else time.monotonic() - since

    @property
    def ready(self) -> bool:
        """Running, not draining, owning started partitions, and the provider takes calls."""
        started = bool(self.offsets.partitions)
        return self._running and not self.scheduler.draining and started and self._client.provider_available

    @property
    def in_flight(self) -> int:
        return self.scheduler.held

    @property
    def assignment(self) -> list[TopicPartition]:
        return self.offsets.partitions

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set, then drain and leave the group; raises :class:`WorkerFailed`
        (after draining) when an error it cannot get past stopped it instead."""
        consumer, producer, admin = self.clients.consumer, self.clients.producer, self.clients.admin
        relay = asyncio.create_task(self._halt_when(stop), name="stop-relay")
        try:
            await admin.start()
            try:
                await self._check_topics()
                await producer.start()
                try:
                    consumer.subscribe(list(input_lanes(self.settings)), listener=_RebalanceListener(self))
                    # aiokafka's start waits for the first assignment, which a stuck rebalance may never bring
                    if await _unless_stopped(consumer.start(), self._halt, name="consumer-start"):
                        await self._run_started()
                    else:
                        log.info("stopped before the first assignment")
                        await consumer.stop()
                finally:
                    await producer.stop()
            finally:
                await admin.close()
        finally:
            relay.cancel()
        if self.failure is not None:
            raise WorkerFailed(self.failure)

    async def _run_started(self) -> None:
        self._running = True
        committer = asyncio.create_task(self._watched(self._commit_loop(), "the commit loop"), name="commit-loop")
        self.cancellations.start(self.clients.batches)
        if self._spend_sync is not None:
            self._spend_sync.start()
        try:
            # getmany waits out a rebalance whatever its timeout, and a stop must not wait for the group: the
            # loop is given up on (cancelled at an await, having submitted what it was handed).
            fetching = self._watched(self._intake.run(self._halt, self._submit), "the fetch loop")
            await _unless_stopped(fetching, self._halt, name="fetch-loop", grace_s=STOP_FETCH_GRACE_S)
            await self._drain()
        finally:
            self._running = False
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self.cancellations.stop()
            if self._spend_sync is not None:
                await self._spend_sync.stop()
            await self._starts.close()
            await self._jobs.cancel()
            await self.clients.consumer.stop()

    async def _halt_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._halt.set()

    async def _watched(self, work: Coroutine[object, object, None], what: str) -> None:
        """Run a loop that must not end by an error: if it does, the worker fails (and stops)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc, what)

    def _fail(self, error: BaseException, where: str) -> None:
        """Stop the worker for an error it cannot get past: the first one is logged (with its traceback
        unless it is a Kafka verdict, which says all) and named by :class:`WorkerFailed`."""
        if self.failure is None:
            self.failure = str(error) if isinstance(error, FatalKafkaError) else f"{where}: {error!r}"
            self.metrics.worker_failures.labels(where).inc()
            log.error(
                "worker failed; stopping",
                exc_info=None if isinstance(error, FatalKafkaError) else error,
                extra={"error": type(error).__name__, "detail": self.failure},
            )
        self._halt.set()

    async def _check_topics(self) -> None:
        """Fail at start when a topic is missing, after waiting up to ``topic_wait_s`` for it to appear."""
        needed = (*input_lanes(self.settings), self.settings.output_topic, self.settings.review_topic)
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

    async def _drain(self) -> None:
        self.scheduler.drain()
        consumer = self.clients.consumer
        assignment = list(consumer.assignment())
        if assignment:
            consumer.pause(*assignment)
        pending = self._jobs.running()
        log.info("draining", extra={"count": len(pending)})
        if pending:
            await asyncio.wait(pending, timeout=self.settings.drain_timeout_s)
        await self.clients.producer.flush()
        try:
            await self.offsets.commit(consumer.commit)
        except FatalKafkaError as exc:
            self._fail(exc, "the last commit")
        left = self._jobs.running()
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
            _, started = self.scheduler.admit(
                tp, ledger.epoch, record.offset, key, len(record.value or b""), record, since=time.monotonic()
            )
            self._jobs.start(started)
        if ledger.span > self._span_limit and tp not in self._span_held:
            self._span_held.add(tp)
            self._intake.hold(tp)
            log.warning(
                "a stuck job holds its partition's commit far behind: fetching it paused until it moves",
                extra={"partition": tp.partition, "offset": ledger.commit_offset(), "count": ledger.span},
            )
        return True

    def _after_job(self, ticket: Ticket[Record]) -> None:
        """A job gave up its slot or its hold: wake a paused fetch loop, fetch a span-held partition again
        once its commit has caught up to a tenth below the limit."""
        self._intake.wake()
        if ticket.tp in self._span_held:
            ledger = self.offsets.ledger(ticket.tp)
            if ledger is None or ledger.span <= self._span_limit * 0.9:
                self._span_held.discard(ticket.tp)
                self._intake.release(ticket.tp)

    # ------------------------------------------------------------------ offsets and rebalance

    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self.offsets.commit(self.clients.consumer.commit)
            await self._intake.refresh_log_ends(self.offsets.partitions)
            self.offsets.record_lag(self._intake.log_end)

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Each new partition starts where its committed offset says (see :mod:`~pipeline.worker.starts`)."""
        self._intake.assignment_changed()
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}-{tp.partition}" for tp in assigned]})
        await self._starts.assigned(assigned)
        self.metrics.partitions_assigned.set(len(self.offsets.partitions))

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        self._intake.rebalancing = True
        self._starts.revoked(revoked)
        self._span_held.difference_update(revoked)
        revoked = [tp for tp in revoked if tp in self.offsets]
        if not revoked:
            return
        self.scheduler.close_partitions(revoked)
        pending = self._jobs.running(revoked)
        if pending:
            await asyncio.wait(pending, timeout=self.settings.revoke_timeout_s)
        await self.offsets.commit(self.clients.consumer.commit, self.offsets.release(revoked))
        self.offsets.forget(revoked)
        for tp in revoked:
            self.metrics.forget_partition(tp.topic, tp.partition)
        abandoned = await self._jobs.cancel(revoked)
        self._jobs.start(self.scheduler.forget_partitions(revoked))
        self._intake.wake()
        self.metrics.partitions_assigned.set(len(self.offsets.partitions))
        log.info(
            "partitions revoked",
            extra={"partitions": [f"{tp.topic}-{tp.partition}" for tp in revoked], "count": abandoned},
        )
