"""The Kafka-backed :class:`~pipeline.review.desk.Desk`: the console's state is the fold of two logs, and every
change is a record on the decisions topic.

Writing is a round trip through the log: the desk checks the item as it knows it (and writes nothing when the
answer is already clear: not found, forbidden, decided otherwise, held by someone else, the same decision in
force), produces the record (acks=all, keyed by the item), then waits until its own follower has folded the
record and answers from the book's verdict on *that* record (found by ``record_id``, so a producer's retried
copy does not confuse it). Two consoles racing on one item therefore learn the same truth: the first record in
the log wins, the other is refused.

A write that cannot get its answer within ``write_timeout_s`` raises :class:`DeskUnavailable` (the record may
still be folded later; the log stays the truth).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Final

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.kafka import KafkaSettings, make_producer
from pipeline.review.desk import (
    BulkOutcome,
    Desk,
    DeskUnavailable,
    Item,
    ItemFilter,
    ItemState,
    Outcome,
    QueueCounts,
    Reviewer,
)
from pipeline.review.follower import LogFollower, epoch_ms
from pipeline.review.items import decision_problem
from pipeline.review.metrics import ReviewMetrics
from pipeline.review.state import Verdict
from schemas.decisions import Claim, Decision, DecisionKind, DecisionRecord, Release, Reopen

log = logging.getLogger("pipeline.review")

#: Offered to reviewers when the console is not configured with its own list.
DEFAULT_DECISION_REASONS: Final = ("false positive", "policy violation", "needs context", "spam or abuse", "other")
DEFAULT_CLAIM_S: Final = 300.0
_encoder: Final = msgspec.json.Encoder()
_record_decoder: Final = msgspec.json.Decoder(DecisionRecord)


class KafkaDesk:
    """A review console's desk over the review topic and the decisions topic (see the module docstring).

    It owns a :class:`LogFollower` (``self.follower``, which an applier in the same process can share) and a
    producer. ``clock`` gives epoch milliseconds (replaced in tests).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        review_topic: str,
        decisions_topic: str,
        decision_reasons: Sequence[str] = DEFAULT_DECISION_REASONS,
        claim_s: float = DEFAULT_CLAIM_S,
        write_timeout_s: float = 30.0,
        clock: Callable[[], int] = epoch_ms,
        metrics: ReviewMetrics | None = None,
    ) -> None:
        self.decision_reasons = tuple(decision_reasons)
        self.follower = LogFollower(kafka, review_topic=review_topic, decisions_topic=decisions_topic, clock=clock)
        self._kafka = kafka
        self._decisions_topic = decisions_topic
        self._claim_ms = int(claim_s * 1000)
        self._write_timeout_s = write_timeout_s
        self._clock = clock
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None

    # ------------------------------------------------------------------------------------------------
    # Lifecycle
    # ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following both topics and the producer; :meth:`wait_ready` waits for the whole state."""
        producer = make_producer(self._kafka)
        await producer.start()
        self._producer = producer
        try:
            await self.follower.start()
        except BaseException:
            await self.stop()
            raise
        if self._metrics is not None:
            self._metrics.watch(self.follower.book, self._clock)

    async def stop(self) -> None:
        await self.follower.stop()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> KafkaDesk:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        return self.follower.ready

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        await self.follower.wait_ready(timeout_s)

    # ------------------------------------------------------------------------------------------------
    # Reading
    # ------------------------------------------------------------------------------------------------

    def items(self, where: ItemFilter, *, limit: int = 100, offset: int = 0) -> list[Item]:
        return self.follower.book.items(where, self._clock(), limit=limit, offset=offset)

    def count(self, where: ItemFilter) -> int:
        return self.follower.book.count(where, self._clock())

    def item(self, key: str) -> Item | None:
        return self.follower.book.item(key, self._clock())

    def counts(self) -> QueueCounts:
        return self.follower.book.counts()

    def changes(self) -> AsyncIterator[int]:
        return self.follower.changes()

    # ------------------------------------------------------------------------------------------------
    # Writing
    # ------------------------------------------------------------------------------------------------

    async def claim(self, key: str, reviewer: Reviewer) -> Outcome:
        item = self.item(key)
        if item is None:
            return _not_found(key)
        held = item.claim
        if held is not None and held.reviewer != reviewer.name:
            return Outcome(False, item, problem="claimed", detail=f"held by {held.reviewer} until {held.expires_at}")
        if item.state == "decided":
            return Outcome(False, item, problem="conflict", detail="decided: nothing to claim")
        now = self._clock()
        record = Claim(record_id=_new_id(), item=key, reviewer=reviewer.name, at=now, expires_at=now + self._claim_ms)
        return await self._write(record)

    async def release(self, key: str, reviewer: Reviewer) -> Outcome:
        item = self.item(key)
        if item is None:
            return _not_found(key)
        held = item.claim
        if held is None:
            return Outcome(True, item, repeated=True, detail="not claimed")
        if held.reviewer != reviewer.name:
            return Outcome(False, item, problem="claimed", detail=f"held by {held.reviewer}")
        return await self._write(Release(record_id=_new_id(), item=key, reviewer=reviewer.name, at=self._clock()))

    async def decide(
        self,
        key: str,
        decision: DecisionKind,
        reviewer: Reviewer,
        *,
        reason: str | None = None,
        note: str | None = None,
    ) -> Outcome:
        """Record a decision on the item's current round. ``reason`` must be one of :attr:`decision_reasons`
        (:class:`ValueError` otherwise, like a note longer than the contract allows)."""
        self._check_reason(reason)
        item = self.item(key)
        if item is None:
            return _not_found(key)
        refused = self._precheck(item, decision, reviewer)
        if refused is not None:
            return refused
        return await self._write(self._decision(item, decision, reviewer, reason, note))

    async def bulk(
        self,
        where: ItemFilter,
        decision: DecisionKind,
        reviewer: Reviewer,
        *,
        reason: str | None = None,
        note: str | None = None,
    ) -> BulkOutcome:
        """Decide every item ``where`` matches that ``reviewer`` may decide now: open ones, and escalated ones
        for an admin. Every other match is skipped and counted by why (``decided``/``conflict``, ``forbidden``,
        ``claimed``, ``no_completion``, ``no_job``, ``repeated``). All records are sent, then awaited together."""
        self._check_reason(reason)
        allowed: tuple[ItemState, ...] = ("open", "escalated") if reviewer.admin else ("open",)
        skipped: dict[str, int] = {}
        records: list[DecisionRecord] = []
        for item in self.follower.book.items(where, self._clock(), limit=None):
            refused = self._precheck(item, decision, reviewer)
            if refused is None and item.state not in allowed:
                refused = Outcome(False, item, problem="forbidden")
            if refused is not None:
                why = "repeated" if refused.repeated else (refused.problem or "conflict")
                skipped[why] = skipped.get(why, 0) + 1
                continue
            records.append(self._decision(item, decision, reviewer, reason, note))
        verdicts = await self._write_all(records, timeout_s=self._write_timeout_s + 0.01 * len(records))
        decided = 0
        for verdict in verdicts:
            if verdict.entry.accepted:
                decided += 1
                self._count(verdict.entry.record)
            else:
                why = "repeated" if verdict.repeated else (verdict.problem or "conflict")
                skipped[why] = skipped.get(why, 0) + 1
        return BulkOutcome(decided=decided, skipped=sum(skipped.values()), skipped_because=skipped)

    async def reopen(self, key: str, admin: Reviewer, *, note: str | None = None) -> Outcome:
        item = self.item(key)
        if item is None:
            return _not_found(key)
        if not admin.admin:
            return Outcome(False, item, problem="forbidden", detail="only an admin reopens an item")
        if item.state == "open":
            return Outcome(True, item, repeated=True, detail="the item is open")
        record = Reopen(record_id=_new_id(), item=key, reviewer=admin.name, at=self._clock(), note=note, admin=True)
        return await self._write(record)

    def _precheck(self, item: Item, decision: DecisionKind, reviewer: Reviewer) -> Outcome | None:
        """Why a decision is refused before anything is written, or None."""
        current = item.decision
        if item.state == "decided" and current is not None:
            if current.decision == decision:
                return Outcome(True, item, record=current, repeated=True)
            return Outcome(
                False, item, problem="conflict", detail=f"already decided: {current.decision} by {current.reviewer}"
            )
        if item.state == "escalated" and decision == "escalate":
            return Outcome(True, item, record=current, repeated=True)
        if item.state == "escalated" and not reviewer.admin:
            return Outcome(False, item, problem="forbidden", detail="escalated: only an admin decides it")
        invalid = decision_problem(item.review, decision)
        if invalid is not None:
            return Outcome(False, item, problem=invalid[0], detail=invalid[1])
        held = item.claim
        if held is not None and held.reviewer != reviewer.name and not reviewer.admin:
            return Outcome(False, item, problem="claimed", detail=f"held by {held.reviewer} until {held.expires_at}")
        return None

    def _decision(
        self, item: Item, decision: DecisionKind, reviewer: Reviewer, reason: str | None, note: str | None
    ) -> Decision:
        return Decision(
            record_id=_new_id(),
            item=item.key,
            review=item.ref,
            decision=decision,
            reviewer=reviewer.name,
            at=self._clock(),
            reason=reason,
            note=note,
            admin=reviewer.admin,
        )

    def _check_reason(self, reason: str | None) -> None:
        if reason is not None and reason not in self.decision_reasons:
            raise ValueError(f"unknown decision reason {reason!r}; configured: {', '.join(self.decision_reasons)}")

    async def _write(self, record: DecisionRecord) -> Outcome:
        (verdict,) = await self._write_all([record], timeout_s=self._write_timeout_s)
        item = self.item(record.item)
        if verdict.entry.accepted:
            self._count(record)
            return Outcome(True, item, record)
        if verdict.repeated and isinstance(record, Decision) and item is not None:
            # Another console wrote the same decision first: it is in force, which is what was asked.
            return Outcome(True, item, item.decision or record, repeated=True, detail=verdict.entry.refused_because)
        if verdict.repeated:
            return Outcome(True, item, record, repeated=True, detail=verdict.entry.refused_because)
        return Outcome(False, item, record, problem=verdict.problem or "conflict", detail=verdict.entry.refused_because)

    async def _write_all(self, records: list[DecisionRecord], *, timeout_s: float) -> list[Verdict]:
        """Produce every record, then wait until the follower has judged each; their verdicts in order."""
        if not records:
            return []
        producer = self._producer
        if producer is None:
            raise DeskUnavailable("the desk is not started")
        encoded = [_checked(record) for record in records]
        book = self.follower.book
        waiting = [record.record_id for record in records]

        def judged() -> bool:  # shrinks as verdicts come, so a bulk decision is not checked whole on every change
            waiting[:] = [record_id for record_id in waiting if book.verdict(record_id) is None]
            return not waiting

        try:
            async with asyncio.timeout(timeout_s):
                await self.follower.wait_ready()
                sent = [
                    await producer.send(self._decisions_topic, value, key=record.item.encode())
                    for record, value in zip(records, encoded, strict=True)
                ]
                await asyncio.gather(*sent)
                await self.follower.wait_until(judged)
        except TimeoutError:
            raise DeskUnavailable(f"no answer from the decisions topic within {timeout_s:g} s") from None
        except RuntimeError as exc:  # the follower stopped or failed
            raise DeskUnavailable(str(exc)) from exc
        except KafkaError as exc:
            raise DeskUnavailable(f"writing to the decisions topic failed: {type(exc).__name__}") from exc
        verdicts = [book.verdict(record.record_id) for record in records]
        return [v for v in verdicts if v is not None]

    def _count(self, record: DecisionRecord) -> None:
        if self._metrics is not None and isinstance(record, Decision):
            self._metrics.decisions.labels(record.decision).inc()


def _checked(record: DecisionRecord) -> bytes:
    """The record encoded, once it is known to decode again (a note too long or a reviewer name the contract
    refuses would otherwise be written, never folded, and its writer would wait in vain)."""
    value = _encoder.encode(record)
    try:
        _record_decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise ValueError(f"not a valid {type(record).__name__.lower()} record: {exc}") from None
    return value


def _new_id() -> str:
    return uuid.uuid4().hex


def _not_found(key: str) -> Outcome:
    return Outcome(False, None, problem="not_found", detail=f"no item {key!r}")


if TYPE_CHECKING:

    def _is_a_desk(desk: KafkaDesk) -> Desk:  # mypy checks that KafkaDesk keeps the Desk contract
        return desk


__all__ = ["DEFAULT_CLAIM_S", "DEFAULT_DECISION_REASONS", "DeskUnavailable", "KafkaDesk"]
