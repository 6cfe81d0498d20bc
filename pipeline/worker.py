"""The worker: consume jobs → moderated completion → route → produce, many jobs in flight, offsets safe.

One task per job; any number of them per partition (unordered by default, or one at a time per Kafka key).
A job is *done* when its output or review record is acknowledged by the broker (acks=all); only then does
its partition's :class:`~pipeline.ledger.PartitionLedger` let the commit move past it. Commits go out on an
interval, on revoke and on shutdown, always as explicit offsets, with the done-beyond map in the metadata
when the broker keeps it.

Rebalance: revoked partitions get ``revoke_timeout_s`` for their in-flight jobs, then what is done is
committed and the rest is cancelled and left to the new owner; every ledger carries an assignment epoch,
so a job finishing after its partition was revoked is never committed, and records of a new partition that
arrive before its ledger exists are fetched again, never skipped. Shutdown: stop fetching, drain up
to ``drain_timeout_s``, flush, commit, leave the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec
from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from pipeline.config import WorkerSettings
from pipeline.kafka import (
    KafkaSettings,
    broker_keeps_commit_metadata,
    committed_with_metadata,
    make_admin,
    make_consumer,
    make_producer,
    record_headers,
)
from pipeline.ledger import DoneRanges, PartitionLedger, decode_done_map
from pipeline.metrics import Metrics
from pipeline.outcomes import Failed, Outcome
from pipeline.routing import Route, Thresholds, ToOutput, ToReview, repeated_key, route, route_invalid
from schemas.chat import TextPart, UserMessage
from schemas.topics import (
    HEADER_REPLAY_COUNT,
    ApiFailure,
    Job,
    JobDecodeError,
    Review,
    Source,
    decode_job,
    invalid_job,
    reason_kind,
)

log = logging.getLogger("pipeline.worker")

_encoder: Final = msgspec.json.Encoder()
#: Resume fetching once what is held falls below this share of the limits. Close to 1, so the read-ahead
#: stays full (at 0.75 an eighth of the slots sat idle on average); pausing and resuming are cheap, as the
#: fetch loop waits for room without polling the consumer (which would drop what it had fetched).
RESUME_AT: Final = 0.95
#: /healthz fails when the fetch loop has not turned for this long (a wedged loop, not a slow provider).
LIVENESS_STALL_S: Final = 60.0
#: How often lag is measured against the log end while partitions are paused (their fetches stop).
END_OFFSETS_EVERY_S: Final = 10.0
PRODUCE_BACKOFF_MAX_S: Final = 5.0
#: Jobs held at once (calling, fetched ahead, waiting behind their key, or delivering their result) as a
#: multiple of the concurrency.
DELIVERY_ALLOWANCE: Final = 2
#: Records fetched ahead of a free slot, as a share of the concurrency: a returning call hands its slot to
#: the next job at once, instead of after a fetch from the broker (with a fixed 1 s latency, calls return in
#: waves and the refetch left ~10% of the slots idle).
READ_AHEAD_SHARE: Final = 0.25
#: On a stop, how long the fetch loop may take to notice it before it is cancelled (held by a rebalance).
STOP_FETCH_GRACE_S: Final = 1.0
#: Bytes a partition's producer batch may hold. aiokafka's default (16 KiB) holds five results (about 3 KB
#: each with both moderation sides), so under load ``send`` kept waiting for batches to drain; far below
#: the brokers' 1 MB default message (batch) size.
PRODUCER_BATCH_BYTES: Final = 256 * 1024
#: While paused, the fetch loop checks for room (and for a stop) this often...
PAUSED_WAIT_S: Final = 0.1
#: ...and polls the consumer this often (at most a quarter of the max poll interval), so it stays in its group.
PAUSED_POLL_S: Final = 5.0


#: A record ready to produce: topic, key, value, headers.
_Encoded = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]


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


class CompletionClient(Protocol):
    """What the worker needs from the provider client: one job in, one outcome out, never an exception."""

    async def complete(self, job: Job) -> Outcome: ...

    async def aclose(self) -> None: ...


class TopicMissing(RuntimeError):
    """A topic the worker needs does not exist."""


@dataclass(slots=True)
class _InFlight:
    tp: TopicPartition
    epoch: int
    record: ConsumerRecord[bytes, bytes]
    size: int
    #: Holds one of the ``concurrency`` slots: from its start until its provider call has returned.
    calling: bool = False


class _RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._worker._on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._worker._on_assigned(list(assigned))


def _prompt_text(job: Job) -> str:
    """The user-visible text of a job, for the explicit debug flag only."""
    parts: list[str] = []
    for message in job.messages:
        if isinstance(message, UserMessage):
            content = message.content
            parts.extend(
                [content] if isinstance(content, str) else [p.text for p in content if isinstance(p, TextPart)]
            )
    return "\n".join(parts)


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        kafka: KafkaSettings,
        client: CompletionClient,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.kafka = kafka
        self.metrics = metrics or Metrics()
        self._client = client
        self._thresholds = Thresholds(any_category=settings.review_threshold, per_category=settings.review_thresholds)
        self._consumer = make_consumer(
            kafka,
            settings.group_id,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            max_partition_fetch_bytes=max(settings.max_job_bytes, 1_048_576),
            fetch_max_bytes=max(settings.max_job_bytes * 4, 52_428_800),
        )
        self._producer = make_producer(kafka, max_batch_size=PRODUCER_BATCH_BYTES)
        self._admin = make_admin(kafka)
        self._ledgers: dict[TopicPartition, PartitionLedger] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._key_queues: dict[tuple[TopicPartition, bytes], deque[_InFlight]] = {}
        self._last_commit: dict[TopicPartition, tuple[int, str]] = {}
        self._commit_lock = asyncio.Lock()
        self._epoch = 0
        #: Jobs submitted and not yet delivered; of those, the ones calling the provider, and the ones fetched
        #: ahead of a free slot (started in order as calls return).
        self._in_flight = 0
        self._calling = 0
        self._ready: deque[_InFlight] = deque()
        self._bytes_in_flight = 0
        self._paused = False
        #: Set when in-flight work falls to the resume level while paused: wakes the fetch loop at once.
        self._room = asyncio.Event()
        self._keeps_metadata = False
        self._running = False
        self._draining = False
        self._last_poll = time.monotonic()
        self._end_offsets: dict[TopicPartition, int] = {}
        self._end_offsets_at = 0.0
        # Read when scraped rather than set on every job start and finish.
        self.metrics.jobs_in_flight.set_function(lambda: self._in_flight)
        self.metrics.bytes_in_flight.set_function(lambda: self._bytes_in_flight)

    # ------------------------------------------------------------------ lifecycle

    @property
    def alive(self) -> bool:
        """Running, and the fetch loop turned recently (or it is draining, which stops fetching on purpose)."""
        stalled = time.monotonic() - self._last_poll > LIVENESS_STALL_S
        return self._running and (self._draining or not stalled)

    @property
    def ready(self) -> bool:
        return self._running and not self._draining and bool(self._ledgers)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def assignment(self) -> list[TopicPartition]:
        return sorted(self._ledgers)

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set, then drain and leave the group."""
        await self._admin.start()
        try:
            await self._check_topics()
            self._keeps_metadata = await self._probe_commit_metadata()
            await self._producer.start()
            try:
                self._consumer.subscribe([self.settings.input_topic], listener=_RebalanceListener(self))
                if not await self._started_unless_stopped(stop):
                    await self._consumer.stop()
                    return
                self._running = True
                committer = asyncio.create_task(self._commit_loop(), name="commit-loop")
                try:
                    await self._fetch_until_stopped(stop)
                    await self._drain()
                finally:
                    self._running = False
                    committer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await committer
                    await self._cancel(self._all_tasks())
                    await self._consumer.stop()
            finally:
                await self._producer.stop()
        finally:
            await self._admin.close()

    async def _check_topics(self) -> None:
        """Fail at start when a topic is missing, after waiting up to ``topic_wait_s`` for it to appear."""
        needed = (self.settings.input_topic, self.settings.output_topic, self.settings.review_topic)
        deadline = time.monotonic() + self.settings.topic_wait_s
        while True:
            topics = set(await self._admin.list_topics())
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
            keeps = await broker_keeps_commit_metadata(self.kafka, self.settings.input_topic, self.settings.group_id)
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

    async def _started_unless_stopped(self, stop: asyncio.Event) -> bool:
        """Start the consumer, or give up when a stop comes first: aiokafka's ``start`` waits for the group's
        first assignment, which a stuck rebalance may never bring."""
        if await _unless_stopped(self._consumer.start(), stop, name="consumer-start"):
            return True
        log.info("stopped before the first assignment")
        return False

    async def _fetch_until_stopped(self, stop: asyncio.Event) -> None:
        """The fetch loop, given up on when a stop finds it held by a rebalance: aiokafka's ``getmany`` waits
        out a rebalance whatever its timeout, and a stop must not wait for the group (drain, commit, leave).
        Cancelled at an await, it has already submitted whatever getmany handed over."""
        await _unless_stopped(self._fetch_until(stop), stop, name="fetch-loop", grace_s=STOP_FETCH_GRACE_S)

    async def _fetch_until(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        keepalive_s = min(PAUSED_POLL_S, self.settings.max_poll_interval_ms / 4000)
        polled = time.monotonic()
        while not stop.is_set():
            self._last_poll = time.monotonic()
            self._apply_backpressure()
            timeout_ms = 100
            if self._paused:
                # Wait for room here, not in getmany: getmany would sleep out its timeout after room came back,
                # and it drops the records already fetched for paused partitions (fetched again on resume).
                # It is still called now and then, so the consumer keeps polling and its place in the group.
                if await self._room_within(PAUSED_WAIT_S) or time.monotonic() - polled < keepalive_s:
                    continue
                timeout_ms = 0
            room = min(
                self.settings.concurrency - self._calling + self._read_ahead - len(self._ready),
                self._max_in_flight - self._in_flight,
            )
            try:
                batches = await consumer.getmany(timeout_ms=timeout_ms, max_records=max(room, 1))
                polled = time.monotonic()
            except KafkaError as exc:
                log.warning("fetch failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(0.5)
                continue
            for tp, records in batches.items():
                ledger = self._ledgers.get(tp)
                if ledger is None:
                    self._fetch_again(tp, records[0].offset)
                    continue
                for record in records:
                    self._submit(tp, ledger, record)

    def _fetch_again(self, tp: TopicPartition, offset: int) -> None:
        """Rewind a partition whose records came before its ledger, so none is skipped unseen.

        aiokafka wakes the fetch loop when it takes a new assignment, before it runs our ``on_assigned``,
        which reads the committed offsets (a broker round trip) to build the ledgers; a fetch that returns
        first would move the position past records no ledger tracked, and the next commit past them.
        """
        if tp in self._consumer.assignment():
            self._consumer.seek(tp, offset)
            self.metrics.fetches_rewound.inc()
            log.debug("fetched before the ledger; fetching again", extra={"partition": tp.partition, "offset": offset})

    async def _drain(self) -> None:
        self._draining = True
        self._drop_ready(lambda item: True)
        assignment = list(self._consumer.assignment())
        if assignment:
            self._consumer.pause(*assignment)
        pending = self._all_tasks()
        log.info("draining", extra={"count": len(pending)})
        if pending:
            await asyncio.wait(pending, timeout=self.settings.drain_timeout_s)
        await self._producer.flush()
        await self._commit()
        left = self._all_tasks()
        if left:
            log.warning("drain deadline passed; unfinished jobs will be reprocessed", extra={"count": len(left)})

    # ------------------------------------------------------------------ scheduling

    def _all_tasks(self) -> set[asyncio.Task[None]]:
        return set().union(*self._tasks.values()) if self._tasks else set()

    @property
    def _max_in_flight(self) -> int:
        """Every job held: calling, fetched ahead, waiting behind its key or delivering its result. A result
        waiting for the broker's acknowledgement gives its slot to the next call (the slots are for the
        provider, and a slow produce must not idle them), as long as no more than this many are held."""
        return self.settings.concurrency * DELIVERY_ALLOWANCE

    @property
    def _read_ahead(self) -> int:
        return max(1, int(self.settings.concurrency * READ_AHEAD_SHARE))

    def _calm(self) -> bool:
        return (
            len(self._ready) <= self._read_ahead * RESUME_AT
            and self._in_flight <= self._max_in_flight * RESUME_AT
            and self._bytes_in_flight <= self.settings.max_buffered_bytes * RESUME_AT
        )

    def _wake_if_room(self) -> None:
        """Wake a paused fetch loop as soon as what is held falls to the resume level."""
        if self._paused and self._calm():
            self._room.set()

    async def _room_within(self, timeout_s: float) -> bool:
        """Whether in-flight work fell to the resume level within ``timeout_s``."""
        self._room.clear()
        if self._calm():
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._room.wait()
        except TimeoutError:
            return False
        return True

    def _apply_backpressure(self) -> None:
        full = (
            len(self._ready) >= self._read_ahead
            or self._in_flight >= self._max_in_flight
            or self._bytes_in_flight >= self.settings.max_buffered_bytes
        )
        calm = self._calm()
        assignment = list(self._consumer.assignment())
        if full and not self._paused:
            self._consumer.pause(*assignment)
            self._paused = True
        elif self._paused and calm:
            self._consumer.resume(*assignment)
            self._paused = False
        self.metrics.partitions_paused.set(len(self._consumer.paused()))

    def _submit(self, tp: TopicPartition, ledger: PartitionLedger, record: ConsumerRecord[bytes, bytes]) -> None:
        if ledger.next_offset is not None and record.offset < ledger.next_offset:
            return  # committed already, or delivered twice
        self.metrics.jobs_consumed.inc()
        if ledger.track(record.offset):
            self.metrics.jobs_skipped.inc()
            return
        item = _InFlight(tp=tp, epoch=ledger.epoch, record=record, size=len(record.value or b""))
        self._in_flight += 1
        self._bytes_in_flight += item.size
        if self.settings.ordering == "key" and record.key is not None:
            queue = self._key_queues.setdefault((tp, record.key), deque())
            queue.append(item)
            if len(queue) > 1:
                return
        self._offer(item)

    def _offer(self, item: _InFlight) -> None:
        """Start the job when a slot is free (and none is waiting before it), else queue it for one."""
        if self._calling < self.settings.concurrency and not self._ready and not self._draining:
            self._start(item)
        else:
            self._ready.append(item)

    def _start(self, item: _InFlight) -> None:
        item.calling = True
        self._calling += 1
        task = asyncio.create_task(self._run_job(item))
        self._tasks.setdefault(item.tp, set()).add(task)

    def _drop_ready(self, which: Callable[[_InFlight], bool]) -> None:
        """Forget the chosen jobs fetched but not started: uncommitted, they are for the partition's next owner."""
        kept: deque[_InFlight] = deque()
        for item in self._ready:
            if which(item):
                self._in_flight -= 1
                self._bytes_in_flight -= item.size
            else:
                kept.append(item)
        self._ready = kept

    async def _run_job(self, item: _InFlight) -> None:
        finished = False
        try:
            await self._process(item)
            finished = True
        finally:
            self._call_returned(item)
            self._in_flight -= 1
            self._bytes_in_flight -= item.size
            self._wake_if_room()
            tasks = self._tasks.get(item.tp)
            if tasks is not None:
                tasks.discard(asyncio.current_task())
            if finished:
                self._mark_done(item)

    def _mark_done(self, item: _InFlight) -> None:
        ledger = self._ledgers.get(item.tp)
        if ledger is None or ledger.epoch != item.epoch:
            self.metrics.stale_completions.inc()
            return
        ledger.complete(item.record.offset)
        key = item.record.key
        if self.settings.ordering == "key" and key is not None:
            queue = self._key_queues.get((item.tp, key))
            if queue:
                queue.popleft()
                if queue:
                    self._offer(queue[0])
                else:
                    del self._key_queues[(item.tp, key)]

    # ------------------------------------------------------------------ one job

    async def _process(self, item: _InFlight) -> None:
        record = item.record
        raw = record.value or b""
        source = Source(topic=record.topic, partition=record.partition, offset=record.offset)
        decoded = decode_job(raw, max_bytes=self.settings.max_job_bytes)
        if not isinstance(decoded, JobDecodeError) and (key := repeated_key(raw)) is not None:
            decoded = JobDecodeError(error=f"not a valid job: an object names the key {key!r} twice (ambiguous)")
        if isinstance(decoded, JobDecodeError):
            routed: Route = route_invalid(raw, invalid_job(raw, decoded, source))
        else:
            if self.settings.log_prompts:
                log.debug("prompt", extra={"job_id": decoded.id, "prompt": _prompt_text(decoded)})
            outcome = await self._call(decoded)
            routed = route(decoded, source, outcome, self._thresholds)
        self._call_returned(item)
        await self._deliver(routed, item)

    def _call_returned(self, item: _InFlight) -> None:
        """Hand the job's slot (once) to the next job fetched ahead; what is left is delivering its result."""
        if item.calling:
            item.calling = False
            self._calling -= 1
            while self._ready and self._calling < self.settings.concurrency and not self._draining:
                self._start(self._ready.popleft())
            self._wake_if_room()

    async def _call(self, job: Job) -> Outcome:
        started = time.monotonic()
        try:
            outcome = await self._client.complete(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a client bug must cost one job a review, not the worker its life
            log.exception("client raised instead of returning an outcome", extra={"job_id": job.id})
            latency = (time.monotonic() - started) * 1000
            return Failed(
                failure="internal", message=f"client error: {type(exc).__name__}", attempts=1, latency_ms=latency
            )
        return outcome

    def _encode(self, routed: Route, item: _InFlight) -> _Encoded:
        record = item.record
        job_id: str | None
        kind: str | None
        if isinstance(routed, ToOutput):
            topic, job_id, kind = self.settings.output_topic, routed.result.id, None
            value = _encoder.encode(routed.result)
        else:
            topic, job_id, kind = self.settings.review_topic, routed.review.id, reason_kind(routed.review.reason)
            value = _encoder.encode(routed.review)
        key = job_id.encode() if job_id is not None else record.key
        headers = record_headers(
            job_id=job_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            group_id=self.settings.group_id,
            reason_kind=kind,
            replay_count=next((v for k, v in record.headers if k == HEADER_REPLAY_COUNT), None),
        )
        return topic, key, value, headers

    def _fit(self, routed: Route, item: _InFlight) -> tuple[Route, _Encoded]:
        """A record that fits the producer's limit (an oversize result becomes a slimmer review), encoded."""
        limit = self.kafka.max_record_bytes
        encoded = self._encode(routed, item)
        if len(encoded[2]) <= limit:
            return routed, encoded  # the usual case: encoded once
        if isinstance(routed, ToReview):
            slim = msgspec.structs.replace(routed.review, job=None, completion=None)
            if len(_encoder.encode(slim)) <= limit:
                slimmer = ToReview(slim)
                return slimmer, self._encode(slimmer, item)
            source, job_id = routed.review.source, routed.review.id
        else:
            source, job_id = routed.result.source, routed.result.id
        reason = ApiFailure(failure="oversize", message=f"the result exceeds the {limit}-byte record limit", attempts=0)
        oversize = ToReview(Review(id=job_id, reason=reason, source=source))
        return oversize, self._encode(oversize, item)

    async def _deliver(self, routed: Route, item: _InFlight) -> None:
        """Produce until the broker acknowledges it; a result is never dropped (cancellation aside)."""
        routed, (topic, key, value, headers) = self._fit(routed, item)
        delay = 0.1
        while True:
            try:
                ack = await self._producer.send(topic, value, key=key, headers=headers)
                await ack
                break
            except KafkaError as exc:
                self.metrics.produce_retries.inc()
                log.warning(
                    "produce failed; retrying",
                    extra={"job_id": key.decode(errors="replace") if key else None, "error": type(exc).__name__},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, PRODUCE_BACKOFF_MAX_S)
        self._record_route(routed, item)

    def _record_route(self, routed: Route, item: _InFlight) -> None:
        record = item.record
        job_id: str | None
        attempts: int | None
        if isinstance(routed, ToOutput):
            destination, reason, job_id, attempts = "output", "none", routed.result.id, routed.result.attempts
        else:
            review = routed.review
            destination, reason, job_id, attempts = "review", reason_kind(review.reason), review.id, review.attempts
        self.metrics.routed(destination, reason)
        if record.timestamp is not None and record.timestamp > 0:
            self.metrics.job_seconds.observe(max(0.0, time.time() - record.timestamp / 1000))
        log.info(
            "routed",
            extra={
                "job_id": job_id,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "route": destination,
                "reason": None if reason == "none" else reason,
                "attempts": attempts,
            },
        )

    # ------------------------------------------------------------------ offsets and rebalance

    async def _commit_loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self._commit()
            await self._update_lag()

    def _commit_point(self, ledger: PartitionLedger) -> tuple[int, str] | None:
        offset = ledger.commit_offset()
        if offset is None:
            return None
        return offset, ledger.commit_metadata() if self._keeps_metadata else ""

    async def _commit(self, ledgers: dict[TopicPartition, PartitionLedger] | None = None) -> None:
        """Commit each partition's completed prefix (and done map) when it moved; failures are retried later."""
        async with self._commit_lock:
            chosen = self._ledgers if ledgers is None else ledgers
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, ledger in chosen.items():
                point = self._commit_point(ledger)
                if point is not None and self._last_commit.get(tp) != point:
                    offsets[tp] = OffsetAndMetadata(*point)
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except KafkaError as exc:
                self.metrics.commit_failures.inc()
                log.warning("commit failed; will retry", extra={"error": type(exc).__name__})
                return
            self.metrics.commits.inc()
            now = time.time()
            for tp, committed in offsets.items():
                self._last_commit[tp] = (committed.offset, committed.metadata)
                labels = (tp.topic, str(tp.partition))
                self.metrics.committed_offset.labels(*labels).set(committed.offset)
                self.metrics.last_commit_time.labels(*labels).set(now)

    async def _update_lag(self) -> None:
        """Lag per owned partition: log end minus the commit point (uncommitted partitions included).

        The end is the fetch high watermark; paused partitions are not fetched, so their end is also asked
        for every ``END_OFFSETS_EVERY_S`` (exact on Apache Kafka; a little low on the embedded broker).
        """
        if self._paused and time.monotonic() - self._end_offsets_at > END_OFFSETS_EVERY_S:
            self._end_offsets_at = time.monotonic()
            try:
                self._end_offsets = await self._consumer.end_offsets(list(self._ledgers))
            except KafkaError:
                self._end_offsets = {}
        for tp, ledger in list(self._ledgers.items()):
            end = max(self._consumer.highwater(tp) or 0, self._end_offsets.get(tp, 0))
            point = ledger.commit_offset()
            if end and point is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - point))

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        """A ledger per new partition, starting at its committed offset (with the done map), and the
        consumer positioned there: the ledger, not a reset the consumer did on its own, says where to start."""
        stored: dict[TopicPartition, OffsetAndMetadata] | None = None
        try:
            stored = await committed_with_metadata(self._admin, self.settings.group_id, assigned)
        except Exception as exc:  # the partitions need their ledgers anyway: without one, fetches are rewound
            log.warning("could not read committed offsets; no done map this time", extra={"error": type(exc).__name__})
        if stored is not None:
            owned = self._consumer.assignment()
            for tp in assigned:
                if tp in owned:
                    # Offset 0, not the broker's "earliest": see kafka.seek_to_log_start.
                    self._consumer.seek(tp, stored[tp].offset if tp in stored else 0)
        for tp in assigned:
            self._epoch += 1
            committed = stored.get(tp) if stored else None
            remembered = DoneRanges()
            if committed is not None and self._keeps_metadata:
                remembered = decode_done_map(committed.offset, committed.metadata)
            self._ledgers[tp] = PartitionLedger(
                self._epoch, committed=committed.offset if committed else None, remembered=remembered
            )
            if committed is not None:
                self._last_commit[tp] = (committed.offset, committed.metadata)
        self._paused = False
        self.metrics.partitions_assigned.set(len(self._ledgers))
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}-{tp.partition}" for tp in assigned]})

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        revoked = [tp for tp in revoked if tp in self._ledgers]
        if not revoked:
            return
        gone = set(revoked)
        self._drop_ready(lambda item: item.tp in gone)
        pending: set[asyncio.Task[None]] = set().union(*(self._tasks.get(tp, set()) for tp in revoked))
        if pending:
            await asyncio.wait(pending, timeout=self.settings.revoke_timeout_s)
        self._drop_ready(lambda item: item.tp in gone)  # followers of a key queued while waiting
        ledgers = {tp: self._ledgers.pop(tp) for tp in revoked}
        await self._commit(ledgers)
        abandoned: set[asyncio.Task[None]] = set()
        for tp in revoked:
            abandoned |= self._tasks.pop(tp, set())
            self._last_commit.pop(tp, None)
            self.metrics.forget_partition(tp.topic, tp.partition)
        for key in [key for key in self._key_queues if key[0] in ledgers]:
            waiting = list(self._key_queues.pop(key))[1:]  # the head was dropped above or is cancelled below
            self._in_flight -= len(waiting)
            self._bytes_in_flight -= sum(item.size for item in waiting)
        await self._cancel(abandoned)
        self.metrics.partitions_assigned.set(len(self._ledgers))
        log.info(
            "partitions revoked",
            extra={"partitions": [f"{tp.topic}-{tp.partition}" for tp in revoked], "count": len(abandoned)},
        )

    async def _cancel(self, tasks: set[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
