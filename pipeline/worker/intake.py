"""The fetch loop: fetch what the scheduler has room for, pause and resume as it decides, stay in the group.

It asks :meth:`~pipeline.worker.scheduler.Scheduler.room` how many records to fetch and
:meth:`~pipeline.worker.scheduler.Scheduler.fetch_decision` whether to pause or resume the assignment, and
hands each fetched batch to ``submit``. A batch that ``submit`` refuses (its partition has no ledger yet)
is fetched again: aiokafka wakes the fetch loop when it takes a new assignment, before it runs our
``on_partitions_assigned``, which reads the committed offsets (a broker round trip) to build the ledgers; a
fetch that returns first would move the position past records no ledger tracked, and the next commit past
them. While paused it waits for room (:meth:`Intake.wake`) rather than in ``getmany``, and still polls now
and then so the consumer keeps its place in the group. A partition whose own read-ahead is full
(:meth:`~pipeline.worker.scheduler.Scheduler.ahead_full`) is paused on its own, so a flooded partition is
not fetched further while the others still are (aiokafka hands out a fetch's records partition by partition,
the flood's first, so a fetch of everything would bring the flood alone); the loop waits for room, as
paused, when every partition is. A partition can also be held on its own (:meth:`Intake.hold`): not fetched
whatever the pressure, until :meth:`Intake.release`.

A Kafka error that passes by itself is retried with :data:`FETCH_BACKOFF`, for up to
:data:`FETCH_FAILING_FOR_S` in a row; any other, or one that has not passed by then, ends the loop with
:class:`~pipeline.kafka_errors.FatalKafkaError` (aiokafka re-raises a dead coordinator's error on every
fetch: retrying it for ever would only hide it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from pipeline.backoff import Backoff
from pipeline.kafka_errors import FatalKafkaError, Verdict, verdict
from pipeline.metrics import Metrics
from pipeline.worker.ports import Consumer, Record
from pipeline.worker.scheduler import Scheduler

log = logging.getLogger("pipeline.worker")

#: While paused, the fetch loop checks for room (and for a stop) this often...
PAUSED_WAIT_S: Final = 0.1
#: ...and polls the consumer this often (at most a quarter of the max poll interval), so it stays in its group.
PAUSED_POLL_S: Final = 5.0
#: How long a fetch waits for records when there are none.
FETCH_WAIT_MS: Final = 100
FETCH_BACKOFF: Final = Backoff(base_s=0.5, cap_s=5.0)
#: Fetches failing without a break for this long stop the worker (a broker stall of minutes passes well within).
FETCH_FAILING_FOR_S: Final = 300.0
#: How often the log ends are asked for while partitions are paused (their fetches, which bring the high
#: watermark, stop).
END_OFFSETS_EVERY_S: Final = 10.0

#: Takes a fetched batch; False when the partition has no ledger yet (the batch is fetched again).
Submit = Callable[[TopicPartition, list[Record]], bool]


class Intake:
    """The consumer's fetch loop for one worker; see the module docstring."""

    def __init__(
        self,
        consumer: Consumer,
        scheduler: Scheduler[Any],
        metrics: Metrics,
        *,
        max_poll_interval_ms: int,
        takes_new_jobs: Callable[[], bool] = lambda: True,
    ) -> None:
        self._consumer = consumer
        self._scheduler = scheduler
        #: While the provider refuses every call (its breaker is open) nothing is fetched, unless the breaker
        #: wants a fresh job to probe with (``CompletionClient.takes_new_jobs``).
        self._takes_new_jobs = takes_new_jobs
        self._metrics = metrics
        self._keepalive_s = min(PAUSED_POLL_S, max_poll_interval_ms / 4000)
        self._paused = False
        #: Partitions not fetched whatever the pressure (see :meth:`hold`).
        self._held: set[TopicPartition] = set()
        #: Partitions paused because their own read-ahead is full (see the module docstring).
        self._ahead: set[TopicPartition] = set()
        #: True between a revocation and the next assignment: the consumer is rejoining its group.
        self.rebalancing = False
        #: Set when what is held falls to the resume level while paused: wakes the fetch loop at once.
        self._room = asyncio.Event()
        #: When the loop last turned (for the liveness probe).
        self.last_turn = time.monotonic()
        self._end_offsets: dict[TopicPartition, int] = {}
        self._end_offsets_at = 0.0

    @property
    def paused(self) -> bool:
        return self._paused

    def wake(self) -> None:
        """Something left the scheduler: wake a paused fetch loop as soon as there is room again."""
        if self._has_room():
            self._room.set()

    def _may_resume(self) -> bool:
        return self._scheduler.calm() and self._takes_new_jobs()

    def _has_room(self) -> bool:
        """Paused: everything may resume. Otherwise: a partition paused for its read-ahead may."""
        if self._paused:
            return self._may_resume()
        return bool(self._ahead) and not self._ahead <= self._scheduler.ahead_full(self._ahead)

    def _waiting(self) -> bool:
        """Nothing is to be fetched: everything is paused, or every owned partition is on its own."""
        owned = self._consumer.assignment()
        return self._paused or (bool(owned) and owned <= self._held | self._ahead)

    def assignment_changed(self) -> None:
        """A new assignment starts unpaused (the consumer does not carry pauses across a rebalance); the
        partitions still held and still owned are paused again."""
        self._paused = False
        self.rebalancing = False
        self._ahead.clear()
        self._held &= self._consumer.assignment()
        if self._held:
            self._consumer.pause(*self._held)

    def hold(self, *partitions: TopicPartition) -> None:
        """Stop fetching these partitions until :meth:`release`, whatever the backpressure says."""
        self._held.update(partitions)
        owned = [tp for tp in partitions if tp in self._consumer.assignment()]
        if owned:
            self._consumer.pause(*owned)

    def release(self, *partitions: TopicPartition) -> None:
        self._held.difference_update(partitions)
        owned = [tp for tp in partitions if tp in self._consumer.assignment() and tp not in self._ahead]
        if owned and not self._paused:
            self._consumer.resume(*owned)

    @property
    def held(self) -> set[TopicPartition]:
        return set(self._held)

    async def run(self, stop: asyncio.Event, submit: Submit) -> None:
        polled = failing_since = time.monotonic()
        failures = 0
        while not stop.is_set():
            self.last_turn = time.monotonic()
            self._apply_backpressure()
            timeout_ms = FETCH_WAIT_MS
            if self._waiting():
                # Wait for room here, not in getmany: getmany would sleep out its timeout after room came back,
                # and it drops the records already fetched for paused partitions (fetched again on resume).
                if await self._room_within(PAUSED_WAIT_S) or time.monotonic() - polled < self._keepalive_s:
                    continue
                timeout_ms = 0
            try:
                fetching = self._consumer.assignment() - self._held - self._ahead
                batches = await self._consumer.getmany(
                    timeout_ms=timeout_ms, max_records=max(self._scheduler.room(fetching), 1)
                )
            except KafkaError as exc:
                if not failures:
                    failing_since = time.monotonic()
                if verdict(exc) is not Verdict.RETRY or time.monotonic() - failing_since > FETCH_FAILING_FOR_S:
                    raise FatalKafkaError("fetching", exc) from exc
                log.warning("fetch failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(FETCH_BACKOFF.delay_s(failures))
                failures += 1
                continue
            polled, failures = time.monotonic(), 0
            for tp, records in batches.items():
                if records and not submit(tp, records):
                    self._fetch_again(tp, records[0].offset)

    def log_end(self, tp: TopicPartition) -> int:
        """The partition's log end as last seen (0 when unknown): the fetch high watermark, or the end offset
        asked for while paused (exact on Apache Kafka; a little low on the embedded broker)."""
        return max(self._consumer.highwater(tp) or 0, self._end_offsets.get(tp, 0))

    async def refresh_log_ends(self, partitions: list[TopicPartition]) -> None:
        """While paused, ask for the log ends every :data:`END_OFFSETS_EVERY_S`."""
        if self._paused and time.monotonic() - self._end_offsets_at > END_OFFSETS_EVERY_S:
            self._end_offsets_at = time.monotonic()
            try:
                self._end_offsets = await self._consumer.end_offsets(partitions)
            except KafkaError:
                self._end_offsets = {}

    def _apply_backpressure(self) -> None:
        decision = self._scheduler.fetch_decision(self._paused)
        if not self._takes_new_jobs():
            decision = "keep" if self._paused else "pause"
        owned = self._consumer.assignment()
        before, self._ahead = self._ahead, self._scheduler.ahead_full(self._ahead) & owned
        if decision == "pause":
            self._consumer.pause(*owned)
        elif decision == "resume":
            self._consumer.resume(*(owned - self._held - self._ahead))
        elif not self._paused:
            filled, emptied = self._ahead - before, (before - self._ahead) & (owned - self._held)
            if filled:
                self._consumer.pause(*filled)
            if emptied:
                self._consumer.resume(*emptied)
        if decision != "keep":
            self._paused = decision == "pause"
        self._metrics.partitions_paused.set(len(self._consumer.paused()))

    async def _room_within(self, timeout_s: float) -> bool:
        """Whether what is held fell to the resume level (and the provider takes calls) within ``timeout_s``;
        a provider coming back is noticed at the next turn, within ``timeout_s``."""
        self._room.clear()
        if self._has_room():
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._room.wait()
        except TimeoutError:
            return False
        return True

    def _fetch_again(self, tp: TopicPartition, offset: int) -> None:
        """Rewind a partition whose records came before its ledger, so none is skipped unseen."""
        if tp in self._consumer.assignment():
            self._consumer.seek(tp, offset)
            self._metrics.fetches_rewound.inc()
            log.debug("fetched before the ledger; fetching again", extra={"partition": tp.partition, "offset": offset})
