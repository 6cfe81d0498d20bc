"""Where each owned partition stands between fetch and commit, and when commits go out.

One :class:`~pipeline.ledger.PartitionLedger` per owned partition, built on assignment from the committed
offset (and the done map in its metadata, when the broker keeps it) and numbered with an **assignment
epoch**: a job carries the epoch it was fetched in, and its completion counts only while that same ledger
is in place, so work finishing after its partition was revoked (or revoked and assigned again) is never
committed. The commit offset is each ledger's completed prefix; a commit goes out when it moved since the
last one (on the worker's interval, on revoke, at shutdown), always as explicit offsets, one at a time.

The done map goes into every commit's metadata until the broker is seen to drop it: the first commit that
carries one is read back from the group (the worker's own: no extra group to authorise), and a broker that
returned it empty (the embedded one) gets no more maps. Reading a map needs no such check: an empty string
is simply no map.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.kafka_errors import FatalKafkaError, Verdict, verdict
from pipeline.ledger import DoneRanges, PartitionLedger, decode_done_map
from pipeline.metrics import Metrics

log = logging.getLogger("pipeline.worker")

Commit = Callable[[dict[TopicPartition, OffsetAndMetadata]], Awaitable[None]]
#: Reads the group's commits back (used once, to see whether the broker keeps commit metadata).
ReadBack = Callable[[list[TopicPartition]], Awaitable[dict[TopicPartition, OffsetAndMetadata]]]


class Admission(enum.Enum):
    """What a fetched record is to the partition's ledger."""

    #: New: track it and process it.
    TRACKED = "tracked"
    #: Below the ledger's next offset: committed already, or fetched twice.
    SEEN = "seen"
    #: The done map says a previous owner handled it: tracked as done, not processed.
    DONE_BEFORE = "done_before"


def admit(ledger: PartitionLedger, offset: int) -> Admission:
    """Track a fetched record in its partition's ledger (records come in offset order)."""
    if ledger.next_offset is not None and offset < ledger.next_offset:
        return Admission.SEEN
    return Admission.DONE_BEFORE if ledger.track(offset) else Admission.TRACKED


class Offsets:
    """The ledgers of the partitions this worker owns, their epochs, and the commit schedule."""

    def __init__(self, metrics: Metrics, read_back: ReadBack | None = None) -> None:
        self._metrics = metrics
        self._read_back = read_back
        self._ledgers: dict[TopicPartition, PartitionLedger] = {}
        self._last_commit: dict[TopicPartition, tuple[int, str]] = {}
        self._epoch = 0
        self._lock = asyncio.Lock()
        #: Whether the broker keeps commit metadata: None until a commit carrying a done map was read back.
        self.keeps_metadata: bool | None = None

    @property
    def partitions(self) -> list[TopicPartition]:
        return sorted(self._ledgers)

    def __contains__(self, tp: object) -> bool:
        return tp in self._ledgers

    def ledger(self, tp: TopicPartition) -> PartitionLedger | None:
        return self._ledgers.get(tp)

    # ------------------------------------------------------------------ assign and revoke

    def assign(self, tp: TopicPartition, committed: OffsetAndMetadata | None) -> PartitionLedger:
        """A ledger for a newly owned partition, in a new epoch, starting at ``committed`` (None: no commit)."""
        self._epoch += 1
        remembered = DoneRanges()
        if committed is not None:
            remembered = decode_done_map(committed.offset, committed.metadata)
        ledger = PartitionLedger(self._epoch, committed=committed.offset if committed else None, remembered=remembered)
        self._ledgers[tp] = ledger
        if committed is not None:
            self._last_commit[tp] = (committed.offset, committed.metadata)
        return ledger

    def release(self, partitions: list[TopicPartition]) -> dict[TopicPartition, PartitionLedger]:
        """Stop owning ``partitions``: their ledgers leave (a completion of theirs is stale from now on) and
        are returned for the final commit (see :meth:`commit`)."""
        return {tp: self._ledgers.pop(tp) for tp in partitions if tp in self._ledgers}

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop what is remembered of released partitions' commits, after their final commit."""
        for tp in partitions:
            self._last_commit.pop(tp, None)

    # ------------------------------------------------------------------ records and completions

    def complete(self, tp: TopicPartition, epoch: int, offset: int) -> bool:
        """Record a job as done; False (nothing recorded) when its ledger is gone or of another epoch."""
        ledger = self._ledgers.get(tp)
        if ledger is None or ledger.epoch != epoch:
            self._metrics.stale_completions.inc()
            return False
        ledger.complete(offset)
        return True

    # ------------------------------------------------------------------ commits

    def due(
        self, ledgers: Mapping[TopicPartition, PartitionLedger] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The commits that moved since the last one (of the owned ledgers, or of ``ledgers``)."""
        chosen = self._ledgers if ledgers is None else ledgers
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, ledger in chosen.items():
            offset = ledger.commit_offset()
            if offset is None:
                continue
            point = (offset, ledger.commit_metadata() if self.keeps_metadata is not False else "")
            if self._last_commit.get(tp) != point:
                offsets[tp] = OffsetAndMetadata(*point)
        return offsets

    async def commit(self, commit: Commit, ledgers: Mapping[TopicPartition, PartitionLedger] | None = None) -> None:
        """Commit each partition's completed prefix (and done map) when it moved; a failure that passes (a
        rebalance, a coordinator moving) is logged and counted, and the next commit tries again; any other
        raises :class:`~pipeline.kafka_errors.FatalKafkaError`."""
        async with self._lock:
            offsets = self.due(ledgers)
            if not offsets:
                return
            try:
                await commit(offsets)
            except KafkaError as exc:
                if verdict(exc) is Verdict.FATAL:
                    raise FatalKafkaError("committing offsets", exc) from exc
                self._metrics.commit_failures.inc()
                log.warning("commit failed; will retry", extra={"error": type(exc).__name__})
                return
            self._metrics.commits.inc()
            now = time.time()
            for tp, committed in offsets.items():
                self._last_commit[tp] = (committed.offset, committed.metadata)
                labels = (tp.topic, str(tp.partition))
                self._metrics.committed_offset.labels(*labels).set(committed.offset)
                self._metrics.last_commit_time.labels(*labels).set(now)
            if self.keeps_metadata is None and any(om.metadata for om in offsets.values()):
                await self._check_metadata_kept(offsets)

    async def _check_metadata_kept(self, committed: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self._read_back is None:
            return
        try:
            stored = await self._read_back(list(committed))
        except KafkaError as exc:  # asked again with the next commit that carries a map
            log.warning("could not read a commit back", extra={"error": type(exc).__name__})
            return
        self.keeps_metadata = all(
            tp in stored and stored[tp].metadata == om.metadata for tp, om in committed.items() if om.metadata
        )
        self._metrics.commit_metadata_supported.set(1 if self.keeps_metadata else 0)
        if not self.keeps_metadata:
            log.info(
                "the broker does not keep commit metadata: the done-offset map is off, so a restart "
                "reprocesses jobs finished beyond the committed offset"
            )

    def record_lag(self, end_of: Callable[[TopicPartition], int]) -> None:
        """Lag per owned partition: the log end (``end_of``; 0 when unknown) minus the commit point."""
        for tp, ledger in list(self._ledgers.items()):
            end = end_of(tp)
            point = ledger.commit_offset()
            if end and point is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, end - point))
