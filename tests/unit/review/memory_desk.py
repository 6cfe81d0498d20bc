"""An in-memory :class:`~pipeline.review.desk.Desk` for the web layer's tests: the desk's rules without Kafka.

The rules it keeps (the Kafka-backed desk keeps the same ones through the decisions log):

- the first decision wins; the same decision again changes nothing (accepted, ``repeated``); a different one
  is a conflict (409) until an admin reopens the item;
- approve needs a completion (422 ``no_completion``), rerun needs the job (422 ``no_job``);
- an escalated item is decided only by an admin (403 ``forbidden``), and only an admin reopens;
- opening an item claims it for ``claim_s``; another reviewer's live claim refuses a claim, a release, and a
  decision by a non-admin (409 ``claimed``); an expired claim is no claim.

``clock`` gives epoch seconds, shared with the app under test so ages agree. Every change bumps a version that
:meth:`changes` yields. Not thread-safe: call it on the event loop that serves the app.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from pipeline.review.desk import (
    BulkOutcome,
    HistoryEntry,
    Item,
    ItemFilter,
    ItemState,
    Outcome,
    Problem,
    QueueCounts,
    Reviewer,
)
from pipeline.review.items import decision_problem, matches, max_score
from schemas.decisions import Applied, Claim, Decision, DecisionKind, DecisionRecord, Release, Reopen, ReviewRef
from schemas.topics import Review, reason_kind

DECISION_REASONS = ("false positive", "policy violation", "needs context", "spam or abuse")


@dataclass
class _Entry:
    key: str
    review: Review
    ref: ReviewRef
    received_at: int
    score: float | None
    decision: Decision | None = None
    claim: Claim | None = None
    applied: Applied | None = None
    history: list[HistoryEntry] = field(default_factory=list)

    @property
    def state(self) -> ItemState:
        if self.decision is None:
            return "open"
        return "escalated" if self.decision.decision == "escalate" else "decided"


class MemoryDesk:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        claim_s: float = 300.0,
        decision_reasons: tuple[str, ...] = DECISION_REASONS,
        review_topic: str = "review",
    ) -> None:
        self.decision_reasons = decision_reasons
        self._clock = clock
        self._claim_ms = int(claim_s * 1000)
        self._review_topic = review_topic
        self._entries: dict[str, _Entry] = {}
        self._next_review_offset = 0
        self._next_decision_offset = 0
        self._version = 0
        self._waiters: set[asyncio.Future[None]] = set()

    # ---------------------------------------------------------------- feeding it (what the review topic does)

    def add(self, review: Review, *, received_at: int | None = None) -> Item:
        """A review record arrives; a job reviewed again starts a new round (state and history reset)."""
        ref = ReviewRef(topic=self._review_topic, partition=0, offset=self._next_review_offset)
        self._next_review_offset += 1
        key = review.id or f"@{ref.topic}:{ref.partition}:{ref.offset}"
        at = received_at if received_at is not None else self._now()
        self._entries[key] = _Entry(key=key, review=review, ref=ref, received_at=at, score=max_score(review))
        self._bump()
        item = self.item(key)
        assert item is not None
        return item

    # ---------------------------------------------------------------- reading

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _live_claim(self, entry: _Entry) -> Claim | None:
        claim = entry.claim
        return claim if claim is not None and claim.expires_at > self._now() else None

    def _item(self, entry: _Entry) -> Item:
        return Item(
            key=entry.key,
            review=entry.review,
            ref=entry.ref,
            received_at=entry.received_at,
            state=entry.state,
            decision=entry.decision,
            claim=self._live_claim(entry),
            applied=entry.applied,
            max_score=entry.score,
            history=tuple(entry.history),
        )

    def _matches(self, entry: _Entry, where: ItemFilter, now: int) -> bool:
        """The product's own filter (:func:`pipeline.review.items.matches`), and the state this desk keeps."""
        if where.state is not None and entry.state != where.state:
            return False
        return matches(where, entry.review, reason_kind(entry.review.reason), entry.score, entry.received_at, now)

    def _matching(self, where: ItemFilter) -> list[_Entry]:
        now = self._now()
        found = [entry for entry in self._entries.values() if self._matches(entry, where, now)]
        if where.sort == "score":
            found.sort(key=lambda e: (-(e.score if e.score is not None else -1.0), e.received_at, e.ref.offset))
        else:
            found.sort(key=lambda e: (e.received_at, e.ref.offset), reverse=where.sort == "newest")
        return found

    def items(self, where: ItemFilter, *, limit: int = 100, offset: int = 0) -> list[Item]:
        return [self._item(entry) for entry in self._matching(where)[offset : offset + limit]]

    def count(self, where: ItemFilter) -> int:
        return len(self._matching(where))

    def item(self, key: str) -> Item | None:
        entry = self._entries.get(key)
        return None if entry is None else self._item(entry)

    def counts(self) -> QueueCounts:
        open_by_reason: dict[str, int] = {}
        escalated = decided = 0
        oldest: int | None = None
        for entry in self._entries.values():
            state = entry.state
            if state == "open":
                kind = reason_kind(entry.review.reason)
                open_by_reason[kind] = open_by_reason.get(kind, 0) + 1
            elif state == "escalated":
                escalated += 1
            else:
                decided += 1
            if state != "decided":
                oldest = entry.received_at if oldest is None else min(oldest, entry.received_at)
        return QueueCounts(
            open_by_reason=open_by_reason, escalated=escalated, decided=decided, oldest_undecided_at=oldest
        )

    # ---------------------------------------------------------------- changing

    def _record(self, entry: _Entry, record: DecisionRecord) -> None:
        position = f"review-decisions/0/{self._next_decision_offset}"
        self._next_decision_offset += 1
        entry.history.append(HistoryEntry(record=record, position=position, accepted=True))
        self._bump()

    def _refuse(self, entry: _Entry | None, problem: Problem, detail: str) -> Outcome:
        return Outcome(False, None if entry is None else self._item(entry), problem=problem, detail=detail)

    async def claim(self, key: str, reviewer: Reviewer) -> Outcome:
        entry = self._entries.get(key)
        if entry is None:
            return self._refuse(None, "not_found", f"no item {key!r}")
        held = self._live_claim(entry)
        if held is not None and held.reviewer != reviewer.name:
            return self._refuse(entry, "claimed", f"held by {held.reviewer}")
        if entry.state == "decided":
            return self._refuse(entry, "conflict", "decided: nothing to claim")
        now = self._now()
        record = Claim(
            record_id=str(uuid.uuid4()), item=key, reviewer=reviewer.name, at=now, expires_at=now + self._claim_ms
        )
        entry.claim = record
        self._record(entry, record)
        return Outcome(True, self._item(entry), record)

    async def release(self, key: str, reviewer: Reviewer) -> Outcome:
        entry = self._entries.get(key)
        if entry is None:
            return self._refuse(None, "not_found", f"no item {key!r}")
        held = self._live_claim(entry)
        if held is None:
            return Outcome(True, self._item(entry), repeated=True, detail="not claimed")
        if held.reviewer != reviewer.name:
            return self._refuse(entry, "claimed", f"held by {held.reviewer}")
        record = Release(record_id=str(uuid.uuid4()), item=key, reviewer=reviewer.name, at=self._now())
        entry.claim = None
        self._record(entry, record)
        return Outcome(True, self._item(entry), record)

    def _check(self, entry: _Entry, decision: DecisionKind, reviewer: Reviewer) -> Outcome | None:
        current = entry.decision
        if entry.state == "decided" and current is not None:
            if current.decision == decision:
                return Outcome(True, self._item(entry), current, repeated=True)
            return self._refuse(entry, "conflict", f"already decided: {current.decision} by {current.reviewer}")
        if entry.state == "escalated" and decision == "escalate":
            return Outcome(True, self._item(entry), current, repeated=True)
        if entry.state == "escalated" and not reviewer.admin:
            return self._refuse(entry, "forbidden", "escalated: only an admin decides it")
        if (problem := decision_problem(entry.review, decision)) is not None:
            return self._refuse(entry, *problem)
        held = self._live_claim(entry)
        if held is not None and held.reviewer != reviewer.name and not reviewer.admin:
            return self._refuse(entry, "claimed", f"held by {held.reviewer}")
        return None

    async def decide(
        self,
        key: str,
        decision: DecisionKind,
        reviewer: Reviewer,
        *,
        reason: str | None = None,
        note: str | None = None,
    ) -> Outcome:
        entry = self._entries.get(key)
        if entry is None:
            return self._refuse(None, "not_found", f"no item {key!r}")
        refused = self._check(entry, decision, reviewer)
        if refused is not None:
            return refused
        record = Decision(
            record_id=str(uuid.uuid4()),
            item=key,
            review=entry.ref,
            decision=decision,
            reviewer=reviewer.name,
            at=self._now(),
            reason=reason,
            note=note,
            admin=reviewer.admin,
        )
        entry.decision = record
        if entry.claim is not None and entry.claim.reviewer == reviewer.name:
            entry.claim = None
        self._record(entry, record)
        if decision in ("approve", "rerun"):
            topic = "completions" if decision == "approve" else "prompts"
            position = entry.history[-1].position
            entry.applied = Applied(
                record_id=str(uuid.uuid4()),
                item=key,
                decision_id=position,
                topic=topic,
                partition=0,
                offset=0,
                at=self._now(),
            )
        return Outcome(True, self._item(entry), record)

    async def bulk(
        self,
        where: ItemFilter,
        decision: DecisionKind,
        reviewer: Reviewer,
        *,
        reason: str | None = None,
        note: str | None = None,
    ) -> BulkOutcome:
        decided = 0
        skipped: dict[str, int] = {}
        for entry in self._matching(where):
            outcome = await self.decide(entry.key, decision, reviewer, reason=reason, note=note)
            if outcome.accepted and not outcome.repeated:
                decided += 1
            else:
                why = "repeated" if outcome.repeated else (outcome.problem or "conflict")
                skipped[why] = skipped.get(why, 0) + 1
        return BulkOutcome(decided=decided, skipped=sum(skipped.values()), skipped_because=skipped)

    async def reopen(self, key: str, admin: Reviewer, *, note: str | None = None) -> Outcome:
        entry = self._entries.get(key)
        if entry is None:
            return self._refuse(None, "not_found", f"no item {key!r}")
        if not admin.admin:
            return self._refuse(entry, "forbidden", "only an admin reopens an item")
        if entry.state == "open":
            return Outcome(True, self._item(entry), repeated=True, detail="the item is open")
        record = Reopen(
            record_id=str(uuid.uuid4()), item=key, reviewer=admin.name, at=self._now(), note=note, admin=True
        )
        entry.decision = None
        entry.applied = None
        self._record(entry, record)
        return Outcome(True, self._item(entry), record)

    # ---------------------------------------------------------------- watching

    def _bump(self) -> None:
        self._version += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def changes(self) -> AsyncIterator[int]:
        seen = self._version
        while True:
            while self._version == seen:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)
            seen = self._version
            yield seen
