"""Where a newly assigned partition starts, and partitions held back until that is known.

A partition starts at its committed offset, read with the done map in its metadata. Only an explicit "no
commit" (the broker's -1) makes it a new partition, which starts as ``PIPELINE_AUTO_OFFSET_RESET`` says:
``earliest`` (offset 0), ``latest`` (the log end) or ``none`` (not started: it stays held, and says so).
A read that fails is never taken for "no commit" (a group-level OffsetFetch error looks like an empty answer
to aiokafka, and reading it as a new group would restart every partition at 0): the read is retried for a
few seconds inside the rebalance callback, and if the coordinator still does not answer, the partition is
held (not fetched) and read again in the background until it answers. An error that will not pass
(authorization) stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.backoff import Backoff
from pipeline.config import OffsetReset
from pipeline.kafka_errors import FatalKafkaError, Verdict, verdict
from pipeline.metrics import Metrics
from pipeline.worker.intake import Intake
from pipeline.worker.offsets import Offsets
from pipeline.worker.ports import Consumer, GroupAdmin

log = logging.getLogger("pipeline.worker")

#: How long the rebalance callback retries the committed-offset read before holding the partitions.
READ_IN_CALLBACK_S: Final = 5.0
READ_BACKOFF: Final = Backoff(base_s=0.2, cap_s=5.0)

Fail = Callable[[BaseException, str], None]


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}-{tp.partition}" for tp in partitions]


class PartitionStarts:
    """Starts assigned partitions (ledger + position) once their committed offsets are known."""

    def __init__(
        self,
        *,
        group_id: str,
        reset: OffsetReset,
        consumer: Consumer,
        admin: GroupAdmin,
        offsets: Offsets,
        intake: Intake,
        metrics: Metrics,
        fail: Fail,
    ) -> None:
        self._group_id = group_id
        self._reset = reset
        self._consumer = consumer
        self._admin = admin
        self._offsets = offsets
        self._intake = intake
        self._metrics = metrics
        self._fail = fail
        #: Owned, not started: their committed offsets are not known yet...
        self._unknown: set[TopicPartition] = set()
        #: ...or there is none and PIPELINE_AUTO_OFFSET_RESET is "none".
        self._refused: set[TopicPartition] = set()
        self._retry: asyncio.Task[None] | None = None
        metrics.partitions_not_started.set_function(lambda: len(self.waiting))

    @property
    def waiting(self) -> set[TopicPartition]:
        """The owned partitions not started."""
        return self._unknown | self._refused

    async def assigned(self, partitions: list[TopicPartition]) -> None:
        self._unknown.update(partitions)
        self._intake.hold(*partitions)
        stored = await self._read(partitions, within_s=READ_IN_CALLBACK_S)
        if stored is None:
            log.warning(
                "committed offsets unknown (the group coordinator did not answer); partitions held until it does",
                extra={"partitions": _names(partitions)},
            )
            self._read_in_background()
            return
        await self._start(partitions, stored)

    def revoked(self, partitions: list[TopicPartition]) -> None:
        self._unknown.difference_update(partitions)
        self._refused.difference_update(partitions)
        self._intake.release(*partitions)

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry

    async def _read(
        self, partitions: list[TopicPartition], *, within_s: float | None
    ) -> dict[TopicPartition, OffsetAndMetadata] | None:
        """The committed offsets, or None when the coordinator did not answer within ``within_s``
        (``None``: until it answers)."""
        loop = asyncio.get_running_loop()
        deadline = None if within_s is None else loop.time() + within_s
        retries = 0
        while True:
            try:
                return await self._admin.committed(self._group_id, partitions)
            except KafkaError as exc:
                if verdict(exc) is Verdict.FATAL:
                    raise FatalKafkaError("reading committed offsets", exc) from exc
                self._metrics.committed_read_failures.inc()
                delay = READ_BACKOFF.delay_s(retries)
                if deadline is not None and loop.time() + delay > deadline:
                    return None
                log.info("committed offsets not read; retrying", extra={"error": type(exc).__name__})
            await asyncio.sleep(delay)
            retries += 1

    def _read_in_background(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._read_until_known(), name="committed-offsets")

    async def _read_until_known(self) -> None:
        try:
            while unknown := sorted(self._unknown):
                stored = await self._read(unknown, within_s=None)
                still = [tp for tp in unknown if tp in self._unknown]  # a revocation may have come meanwhile
                if stored is not None and still:
                    await self._start(still, stored)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(exc, "reading committed offsets")

    async def _start(self, partitions: list[TopicPartition], stored: dict[TopicPartition, OffsetAndMetadata]) -> None:
        owned = self._consumer.assignment()
        new = [tp for tp in partitions if tp not in stored]
        if new and self._reset == "none":
            log.error(
                "partitions without a committed offset are not started (PIPELINE_AUTO_OFFSET_RESET=none)",
                extra={"partitions": _names(new)},
            )
        elif new:
            # From the first record nothing is skipped (a new group, as expected); from the log end records are.
            log.log(
                logging.INFO if self._reset == "earliest" else logging.WARNING,
                "partitions without a committed offset start at the "
                + ("first record" if self._reset == "earliest" else "log end"),
                extra={"partitions": _names(new), "detail": f"PIPELINE_AUTO_OFFSET_RESET={self._reset}"},
            )
        at_end = [tp for tp in new if self._reset == "latest" and tp in owned]
        if at_end:
            await self._consumer.seek_to_end(*at_end)
        started = []
        self._unknown.difference_update(partitions)
        for tp in partitions:
            committed = stored.get(tp)
            if committed is None and self._reset == "none":
                self._refused.add(tp)
                continue
            if tp in owned and (committed is not None or self._reset == "earliest"):
                # Offset 0, not the broker's "earliest": see kafka.seek_to_log_start.
                self._consumer.seek(tp, committed.offset if committed is not None else 0)
            self._offsets.assign(tp, committed)
            started.append(tp)
        self._intake.release(*started)
