"""Each started job, from its provider call to its acknowledged result: one task per job, grouped by partition.

A job runs the processor (decode → call → route), tells the scheduler its call returned (the slot goes to
the next job), has the sink deliver its result, then tells the ledger and the scheduler it is done. What the
scheduler starts because of each transition is started here too. A job whose processing or encoding raises
(a bug) is routed to review as ``api_error`` ``internal`` and its partition moves on; a job that cannot be
delivered at all (a Kafka error that will not pass) reports the failure, which stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from aiokafka.structs import TopicPartition

from pipeline.kafka_errors import FatalKafkaError
from pipeline.metrics import Metrics
from pipeline.routing import Route
from pipeline.worker.offsets import Offsets
from pipeline.worker.ports import Record
from pipeline.worker.processor import Processor, internal_failure
from pipeline.worker.scheduler import Scheduler, Ticket
from pipeline.worker.sink import Sink
from schemas.topics import Source

log = logging.getLogger("pipeline.worker")


class Jobs:
    """The running job tasks of one worker, by partition."""

    def __init__(
        self,
        *,
        scheduler: Scheduler[Record],
        processor: Processor,
        sink: Sink,
        offsets: Offsets,
        metrics: Metrics,
        max_job_bytes: int,
        after: Callable[[Ticket[Record]], None],
        fail: Callable[[BaseException, str], None],
    ) -> None:
        self._scheduler = scheduler
        self._processor = processor
        self._sink = sink
        self._offsets = offsets
        self._metrics = metrics
        self._max_job_bytes = max_job_bytes
        #: Called after each job's slot or hold was given up (the worker wakes its fetch loop there).
        self._after = after
        self._fail = fail
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}

    def start(self, tickets: Iterable[Ticket[Record]]) -> None:
        for ticket in tickets:
            task = asyncio.create_task(self._run(ticket))
            tasks = self._tasks.setdefault(ticket.tp, set())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    def running(self, partitions: Iterable[TopicPartition] | None = None) -> set[asyncio.Task[None]]:
        """The tasks not yet ended (an ended one leaves its set a loop turn later, by its done callback)."""
        chosen = self._tasks.values() if partitions is None else [self._tasks.get(tp, set()) for tp in partitions]
        return {task for tasks in chosen for task in tasks if not task.done()}

    async def cancel(self, partitions: Iterable[TopicPartition] | None = None) -> int:
        """Cancel the tasks (of ``partitions``, or all) and wait for them to end; returns how many there were."""
        tasks = self.running(partitions)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for tp in list(self._tasks) if partitions is None else partitions:
            self._tasks.pop(tp, None)
        return len(tasks)

    async def _run(self, ticket: Ticket[Record]) -> None:
        record = ticket.payload
        raw = record.value or b""
        source = Source(topic=record.topic, partition=record.partition, offset=record.offset)
        delivered = False
        try:
            try:
                routed = await self._processor.process(raw, source, record.timestamp)
            except Exception as exc:  # a bug: this job goes to review, its partition moves on
                routed = self._failed(exc, raw, source)
            self.start(self._scheduler.call_returned(ticket))
            self._after(ticket)
            try:
                await self._sink.deliver(routed, record)
            except FatalKafkaError:
                raise
            except Exception as exc:  # a bug in encoding this one result: the job goes to review instead
                await self._sink.deliver(self._failed(exc, raw, source), record)
            delivered = True
        except Exception as exc:  # nothing can be delivered for this job: the worker cannot go on safely
            self._fail(exc, "delivering a result")
        finally:
            if delivered:
                self._offsets.complete(ticket.tp, ticket.epoch, ticket.offset)
                self.start(self._scheduler.delivered(ticket))
            else:
                self.start(self._scheduler.abandon(ticket))
            self._after(ticket)

    def _failed(self, error: Exception, raw: bytes, source: Source) -> Route:
        log.error(
            "processing a job raised; it goes to review as api_error internal",
            exc_info=error,
            extra={"topic": source.topic, "partition": source.partition, "offset": source.offset},
        )
        self._metrics.job_failures.inc()
        return internal_failure(raw, source, error, self._max_job_bytes)
