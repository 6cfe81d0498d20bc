"""A route becomes a record on the output or review topic, acknowledged by the broker (acks=all).

The record is encoded once, keyed by the job id (the source record's key when the job has none), and
carries the source coordinates as headers. One that would exceed ``KAFKA_MAX_RECORD_BYTES`` (key, value,
headers and the record's own overhead counted) becomes a slimmer review (without the job and the
completion) or a slimmer result (without a batch job's copy of the whole completion) or, if even that is
too large, an ``oversize`` review.

What the broker answers decides what happens next (:mod:`pipeline.kafka_errors`): an error that passes is
retried with :data:`DELIVERY_BACKOFF` until the broker acknowledges; a record the broker refuses as too
large (a topic's ``max.message.bytes`` below our limit) is sent once more (the refusal may have been for its
batch), then replaced by an ``oversize`` review, so it never blocks its partition; anything else raises
:class:`~pipeline.kafka_errors.FatalKafkaError`. A result is never dropped (cancellation aside, which
leaves the job uncommitted for the partition's next owner).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Final

import msgspec
from aiokafka.errors import KafkaError

from pipeline.backoff import Backoff
from pipeline.kafka import record_headers
from pipeline.kafka_errors import FatalKafkaError, Verdict, verdict
from pipeline.metrics import Metrics
from pipeline.routing import Route, ToOutput, ToReview
from pipeline.worker.ports import Producer, Record
from schemas.topics import HEADER_REPLAY_COUNT, ApiFailure, Review, reason_kind

log = logging.getLogger("pipeline.worker")

DELIVERY_BACKOFF: Final = Backoff(base_s=0.1, cap_s=5.0, jitter=0.0)
#: A record's bytes beyond its key, value and headers (lengths, attributes, deltas; its batch's header is
#: shared by the batch), counted generously.
RECORD_OVERHEAD_BYTES: Final = 128
#: Refusals as too large a record gets before it is replaced by an ``oversize`` review.
RESENDS_WHEN_REFUSED: Final = 1

_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A record ready to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def size(self) -> int:
        """What the record weighs against a size limit."""
        headers = sum(len(name.encode()) + len(value) for name, value in self.headers)
        return len(self.value) + len(self.key or b"") + headers + RECORD_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class Destinations:
    output_topic: str
    review_topic: str
    group_id: str
    max_record_bytes: int


class Sink:
    """Encodes, fits, produces and counts one route per job."""

    def __init__(self, producer: Producer, destinations: Destinations, metrics: Metrics) -> None:
        self._producer = producer
        self._to = destinations
        self._metrics = metrics

    async def deliver(self, routed: Route, record: Record) -> Route:
        """Produce until the broker acknowledges; returns the route as delivered (it may have been slimmed)."""
        routed, encoded = self.fit(routed, record)
        retries = refusals = 0
        while True:
            try:
                ack = await self._producer.send(encoded.topic, encoded.value, key=encoded.key, headers=encoded.headers)
                await ack
                break
            except KafkaError as exc:
                found = verdict(exc)
                if found is Verdict.FATAL:
                    raise FatalKafkaError(f"producing to {encoded.topic}", exc) from exc
                if found is Verdict.TOO_LARGE:
                    refusals += 1
                    if refusals > RESENDS_WHEN_REFUSED + 1:
                        raise FatalKafkaError(f"producing to {encoded.topic} (even an oversize review)", exc) from exc
                    if refusals > RESENDS_WHEN_REFUSED:
                        routed = self._refused(routed, type(exc).__name__)
                        encoded = self.encode(routed, record)
                    log.warning(
                        "the broker refused a record as too large",
                        extra={"job_id": _job_id(encoded), "error": type(exc).__name__, "count": encoded.size},
                    )
                    continue
                self._metrics.produce_retries.inc()
                log.warning("produce failed; retrying", extra={"job_id": _job_id(encoded), "error": type(exc).__name__})
                await asyncio.sleep(DELIVERY_BACKOFF.delay_s(retries))
                retries += 1
        self._count(routed, record)
        return routed

    def encode(self, routed: Route, record: Record) -> Encoded:
        job_id: str | None
        kind: str | None
        if isinstance(routed, ToOutput):
            topic, job_id, kind = self._to.output_topic, routed.result.id, None
            value = _encoder.encode(routed.result)
        else:
            topic, job_id, kind = self._to.review_topic, routed.review.id, reason_kind(routed.review.reason)
            value = _encoder.encode(routed.review)
        headers = record_headers(
            job_id=job_id,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            group_id=self._to.group_id,
            reason_kind=kind,
            replay_count=next((v for k, v in record.headers if k == HEADER_REPLAY_COUNT), None),
        )
        return Encoded(topic, job_id.encode() if job_id is not None else record.key, value, headers)

    def fit(self, routed: Route, record: Record) -> tuple[Route, Encoded]:
        """A record that fits the producer's limit (an oversize result becomes a slimmer review), encoded."""
        limit = self._to.max_record_bytes
        encoded = self.encode(routed, record)
        if encoded.size <= limit:
            return routed, encoded  # the usual case: encoded once
        slimmer: Route | None = None
        if isinstance(routed, ToReview):
            slimmer = ToReview(msgspec.structs.replace(routed.review, job=None, completion=None))
        elif routed.result.completion is not None:  # a batch job's copy of the answer: results rebuild it
            slimmer = ToOutput(msgspec.structs.replace(routed.result, completion=None))
        if slimmer is not None:
            slim = self.encode(slimmer, record)
            if slim.size <= limit:
                return slimmer, slim
        oversize = _oversize(routed, f"the result exceeds the {limit}-byte record limit")
        return oversize, self.encode(oversize, record)

    @staticmethod
    def _refused(routed: Route, error: str) -> Route:
        return _oversize(routed, f"the broker refused the record as too large ({error})")

    def _count(self, routed: Route, record: Record) -> None:
        job_id: str | None
        attempts: int | None
        if isinstance(routed, ToOutput):
            destination, reason, job_id, attempts = "output", "none", routed.result.id, routed.result.attempts
        else:
            review = routed.review
            destination, reason, job_id, attempts = "review", reason_kind(review.reason), review.id, review.attempts
        self._metrics.routed(destination, reason)
        if record.timestamp is not None and record.timestamp > 0:
            self._metrics.job_seconds.observe(max(0.0, time.time() - record.timestamp / 1000))
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


def _oversize(routed: Route, message: str) -> ToReview:
    """The smallest review a route can become: its id, source and an ``oversize`` reason."""
    if isinstance(routed, ToReview):
        source, job_id = routed.review.source, routed.review.id
    else:
        source, job_id = routed.result.source, routed.result.id
    reason = ApiFailure(failure="oversize", message=message, attempts=0)
    return ToReview(Review(id=job_id, reason=reason, source=source))


def _job_id(encoded: Encoded) -> str | None:
    return encoded.key.decode(errors="replace") if encoded.key else None
