"""Where a batch stands: each request line's latest result, read from the output and review topics.

:class:`BatchFollower` reads the output and review topics from the offsets the batch's manifest recorded at
submit (never from their start), and the batches topic for the manifest's later versions (a cancel).
A record belongs to the batch when its key (the job id) starts with ``<batch id>:``; its line comes from the
job metadata the worker copied into it (``batch_line``). :class:`Tracker` keeps one byte per line of the
file, whatever the batch's size, and decides which record stands for a line:

- a clean result beats a review (a reviewer's approval, or a replay that went through, puts one on the
  output topic after the review);
- otherwise the latest record wins (a replayed job's second review replaces the first);
- a job reprocessed after a crash may have two results: the line counts once.

The counts follow the Batch API's ``request_counts`` where they mean the same: ``total`` (the file's
requests), ``completed`` (clean results), ``failed`` (the request produced no usable completion:
``api_error``, ``invalid_job``); beyond them ``in_review`` counts the other review reasons (flagged,
moderation, content filter, unknown finish reason, cancelled) and ``remaining`` what has no result yet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec
from aiokafka.structs import TopicPartition

from pipeline.batch.manifest import decode_manifest
from pipeline.batch.reading import Record, TopicReader, starts_from, topic_partitions
from pipeline.kafka import KafkaSettings
from schemas.batches import META_BATCH_ID, META_BATCH_LINE, META_CUSTOM_ID, BatchManifest, batch_key_prefix
from schemas.topics import REASON_KINDS

#: Review reasons that mean the request produced no usable completion (the Batch API's ``failed``).
FAILED_KINDS: Final[frozenset[str]] = frozenset({"api_error", "invalid_job"})
_NONE: Final = 0
_OUTPUT: Final = 1
#: A line's state: ``_NONE``, ``_OUTPUT`` or ``_FIRST_REVIEW`` + the index of its reason in REASON_KINDS.
_FIRST_REVIEW: Final = 2
_REVIEW_STATE: Final[dict[str, int]] = {kind: _FIRST_REVIEW + i for i, kind in enumerate(REASON_KINDS)}

Role = Literal["output", "review"]


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    completed: int
    failed: int
    in_review: dict[str, int]
    remaining: int

    @property
    def done(self) -> int:
        return self.total - self.remaining


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A record of the output or review topic that belongs to the batch."""

    line: int
    custom_id: str
    #: None for a clean result, else the review's reason kind.
    kind: str | None
    record: Record
    #: What the provider billed for the job this time (``cost_usd`` of the record), when known.
    cost_usd: float | None = None


class Tracker:
    """Each line's standing result, and the counts (see the module docstring)."""

    def __init__(self, manifest: BatchManifest) -> None:
        self.total = manifest.requests
        self._state = bytearray(manifest.input_file.lines + 1)
        self._count = [0] * (_FIRST_REVIEW + len(REASON_KINDS))
        #: The latest timestamp (epoch ms) of a record that moved a line from no result to one.
        self.last_done_ms: int | None = None

    def offer(self, line: int, kind: str | None, timestamp_ms: int) -> bool:
        """Take a result for ``line``; True when it now stands for the line (the caller keeps it)."""
        if not 0 < line < len(self._state):
            return False
        new = _OUTPUT if kind is None else _REVIEW_STATE.get(kind)
        if new is None:
            return False
        old = self._state[line]
        if old == _OUTPUT and new != _OUTPUT:
            return False
        if old == _NONE:
            self.last_done_ms = max(self.last_done_ms or 0, timestamp_ms)
        self._count[old] -= 1 if old != _NONE else 0
        self._count[new] += 1
        self._state[line] = new
        return True

    def counts(self) -> Counts:
        reviews = {kind: self._count[state] for kind, state in _REVIEW_STATE.items() if self._count[state]}
        failed = sum(n for kind, n in reviews.items() if kind in FAILED_KINDS)
        in_review = {kind: n for kind, n in reviews.items() if kind not in FAILED_KINDS}
        done = sum(self._count[_OUTPUT:])
        return Counts(self.total, self._count[_OUTPUT], failed, in_review, max(0, self.total - done))


class _Tags(msgspec.Struct):
    metadata: dict[str, str] | None = None
    cost_usd: float | None = None


class _ReasonTags(msgspec.Struct):
    kind: str
    raw: str | None = None
    raw_encoding: str | None = None


class _ReviewTags(msgspec.Struct):
    reason: _ReasonTags
    metadata: dict[str, str] | None = None
    cost_usd: float | None = None


_output_tags: Final = msgspec.json.Decoder(_Tags)
_review_tags: Final = msgspec.json.Decoder(_ReviewTags)


def _metadata_of_review(value: bytes) -> tuple[str, dict[str, str] | None, float | None]:
    review = _review_tags.decode(value)
    metadata = review.metadata
    reason = review.reason
    if metadata is None and reason.raw is not None and reason.raw_encoding == "utf-8":
        # an invalid_job review keeps no metadata, only (the start of) the record it could not read
        try:
            metadata = _output_tags.decode(reason.raw).metadata
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            metadata = None
    return reason.kind, metadata, review.cost_usd


def batch_record(batch_id: str, role: Role, record: Record) -> BatchRecord | None:
    """The record as one of the batch's results, or None when it is another job's (or unreadable)."""
    if record.key is None or not record.key.startswith(batch_key_prefix(batch_id)) or record.value is None:
        return None
    try:
        if role == "output":
            tags = _output_tags.decode(record.value)
            kind, metadata, cost = None, tags.metadata, tags.cost_usd
        else:
            kind, metadata, cost = _metadata_of_review(record.value)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None
    if not metadata or metadata.get(META_BATCH_ID) != batch_id:
        return None
    try:
        line = int(metadata.get(META_BATCH_LINE, ""))
    except ValueError:
        return None
    return BatchRecord(line, metadata.get(META_CUSTOM_ID, ""), kind, record, cost)


class BatchFollower:
    """Follows a batch's results and manifest; ``on_result`` is called with each record that now stands for
    its line (in the order read)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        manifest: BatchManifest,
        batches_topic: str,
        on_result: Callable[[BatchRecord], None] = lambda _: None,
    ) -> None:
        self._kafka = kafka
        self.manifest = manifest
        self._batches_topic = batches_topic
        self._on_result = on_result
        self.tracker = Tracker(manifest)
        #: What the provider billed for the batch's jobs, every processing counted (a replay, or a job
        #: reprocessed after a crash, is paid again); None until a record says.
        self.spent_usd: float | None = None
        self._reader = TopicReader(kafka)
        self._roles: dict[str, Role] = {manifest.output.topic: "output", manifest.review.topic: "review"}

    async def __aenter__(self) -> BatchFollower:
        topics = [self.manifest.output.topic, self.manifest.review.topic, self._batches_topic]
        counts = await topic_partitions(self._kafka, topics)
        starts = starts_from([self.manifest.output, self.manifest.review], counts)
        starts.update({TopicPartition(self._batches_topic, p): 0 for p in range(counts[self._batches_topic])})
        await self._reader.__aenter__()
        self._reader.assign(starts)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._reader.__aexit__(*exc)

    def counts(self) -> Counts:
        return self.tracker.counts()

    async def step(self, timeout_ms: int = 200) -> bool:
        """Read one fetch's records; True once everything up to the topics' current ends has been read."""
        records = await self._reader.fetch(timeout_ms)
        for record in records:
            role = self._roles.get(record.topic)
            if role is None:
                self._manifest_record(record)
                continue
            found = batch_record(self.manifest.id, role, record)
            if found is None:
                continue
            if found.cost_usd is not None:
                self.spent_usd = (self.spent_usd or 0.0) + found.cost_usd
            if self.tracker.offer(found.line, found.kind, record.timestamp):
                self._on_result(found)
        return await self._reader.caught_up()

    def _manifest_record(self, record: Record) -> None:
        if record.key == self.manifest.id.encode() and record.value is not None:
            with contextlib.suppress(msgspec.MsgspecError):
                self.manifest = decode_manifest(record.value)

    async def catch_up(self) -> Counts:
        """Read up to the topics' current ends."""
        while not await self.step():
            pass
        return self.counts()

    async def until_done(self, on_progress: Callable[[Counts], None] = lambda _: None) -> Counts:
        """Read until every request has a result (or for ever: the caller stops it)."""
        while True:
            caught_up = await self.step(timeout_ms=500)
            counts = self.counts()
            on_progress(counts)
            if caught_up and counts.remaining == 0:
                return counts
