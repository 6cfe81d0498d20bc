"""Which batches are cancelled: a follower of the compacted batches topic, and the check a batch's job passes
before its call.

``pipeline batch cancel`` writes the batch's manifest again with ``cancelled_ms`` set. Every worker follows the
batches topic with a consumer of its own (no group: each worker reads every partition from offset 0, the
latest manifest of a batch wins) and keeps the cancelled batch ids with the time of their cancellation. Before
a job of a batch is handed to the provider client, :meth:`Cancellations.check` is asked: a job published
before its batch was cancelled is routed to review as ``cancelled`` without a call. A job published after
(``pipeline replay`` sends a ``cancelled`` review's job again) runs.

How soon a worker learns of a cancellation: the broker answers the follower's waiting fetch as soon as the
manifest is written (about 80 ms later on the embedded broker, measured), and at the latest the follower's
next fetch, :data:`FOLLOW_WAIT_MS` on. Calls already handed to the client
then (in flight, retrying, or waiting for a rate-limit turn) complete normally and are routed as usual. At
start a job of a batch waits (at most :data:`FIRST_READ_WAIT_S`) for the follower's first read to the end
of the topic, so a restarted worker does not call what was cancelled while it was down. A missing batches
topic is looked for again every :data:`MISSING_TOPIC_RETRY_S` and never created (the embedded broker would
create an uncompacted one on a fetch); meanwhile nothing is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Protocol

import msgspec

from pipeline.backoff import Backoff
from pipeline.kafka import KafkaSettings
from pipeline.topic_tail import TopicTail, follow_forever
from schemas.batches import batch_of
from schemas.topics import Cancelled, Job

log = logging.getLogger("pipeline.worker")

#: How long one fetch of the batches topic waits for a record: bounds how late a worker learns of a cancel.
FOLLOW_WAIT_MS: Final = 1000
#: How long a batch's job waits at start for the follower's first read to the end.
FIRST_READ_WAIT_S: Final = 10.0
MISSING_TOPIC_RETRY_S: Final = 30.0
#: How long a fetch waits before the follower's first read to the end.
STARTING_WAIT_MS: Final = 50
#: How long the broker holds a fetch that finds nothing new: an idle follower sends about four fetches a second
#: (a record written meanwhile is answered at once).
BROKER_WAIT_MS: Final = 250
FOLLOW_BACKOFF: Final = Backoff(base_s=0.5, cap_s=10.0)

#: A record of the batches topic: its key (the batch id) and value (a manifest, or None: a tombstone).
BatchRecord = tuple[bytes | None, bytes | None]


class BatchesFeed(Protocol):
    """Reads the batches topic from its start, one fetch at a time."""

    async def read(self, timeout_ms: int) -> tuple[list[BatchRecord], bool]:
        """The records of one fetch, and whether the reader has reached the topic's end (a missing topic has)."""
        ...

    async def close(self) -> None: ...


class _CancelView(msgspec.Struct):
    """The part of a manifest a worker reads."""

    id: str
    cancelled_ms: int | None = None


_view_decoder: Final = msgspec.json.Decoder(_CancelView)


class Cancellations:
    """The cancelled batches a worker knows of; see the module docstring."""

    def __init__(self) -> None:
        self._cancelled: dict[str, int] = {}
        #: Set once the follower has read the topic to its end (or there is nothing to follow).
        self.ready = asyncio.Event()
        self._waited_in_vain = False
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, batch_id: str) -> bool:
        return batch_id in self._cancelled

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Take one record of the batches topic: a manifest (latest wins) or a tombstone."""
        if value is None:
            if key is not None:
                self._cancelled.pop(key.decode(errors="replace"), None)
            return
        try:
            view = _view_decoder.decode(value)
        except msgspec.MsgspecError:
            log.warning("an unreadable record on the batches topic; ignored", extra={"count": len(value)})
            return
        if view.cancelled_ms is None:
            self._cancelled.pop(view.id, None)
        else:
            if view.id not in self._cancelled:
                log.info("batch cancelled", extra={"detail": view.id})
            self._cancelled[view.id] = view.cancelled_ms

    async def check(self, job: Job, published_ms: int | None) -> Cancelled | None:
        """The ``cancelled`` reason when ``job`` belongs to a batch cancelled after the job was published."""
        batch = batch_of(job.metadata)
        if batch is None:
            return None
        if not self.ready.is_set() and not self._waited_in_vain:
            try:
                await asyncio.wait_for(self.ready.wait(), FIRST_READ_WAIT_S)
            except TimeoutError:
                self._waited_in_vain = True  # once: later jobs do not wait again
                log.warning("the batches topic was not read in time; batch jobs run without knowing cancellations")
        cancelled_ms = self._cancelled.get(batch)
        if cancelled_ms is None or (published_ms is not None and published_ms > cancelled_ms):
            return None
        return Cancelled(batch_id=batch, cancelled_at=cancelled_ms)

    def start(self, feed: BatchesFeed | None) -> None:
        """Follow ``feed`` in the background (nothing to follow: no batch is ever cancelled here)."""
        if feed is None:
            self.ready.set()
            return
        self._task = asyncio.create_task(self._follow(feed), name="batch-cancellations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self, feed: BatchesFeed) -> None:
        """Read for ever; an error is logged and retried (a worker that cannot read cancellations still works)."""

        def take(records: list[BatchRecord]) -> None:
            for key, value in records:
                self.apply(key, value)

        try:
            await follow_forever(
                lambda: feed.read(FOLLOW_WAIT_MS),
                take,
                self.ready,
                what="the batches topic",
                backoff=FOLLOW_BACKOFF,
                logger=log,
            )
        finally:
            await feed.close()


class AiokafkaBatchesFeed:
    """:class:`BatchesFeed` over a consumer without a group that reads every partition from offset 0."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        #: Until the first read to the end, fetches wait briefly: batch jobs of a starting worker wait for it.
        self._tail = TopicTail(
            kafka,
            topic,
            missing_retry_s=MISSING_TOPIC_RETRY_S,
            starting_wait_ms=STARTING_WAIT_MS,
            fetch_max_wait_ms=BROKER_WAIT_MS,
        )

    async def read(self, timeout_ms: int) -> tuple[list[BatchRecord], bool]:
        records, at_end = await self._tail.read(timeout_ms)  # a failed lookup raises: the follower retries
        return [(r.key, r.value) for r in records], at_end

    async def close(self) -> None:
        await self._tail.close()
