"""The review console's state: a pure fold of the review topic and the review-decisions topic (no I/O, no clock).

A :class:`ReviewBook` is fed the records of both topics (:meth:`ReviewBook.add_review`,
:meth:`ReviewBook.add_decision_record`) and answers the desk's queries; the time is always passed in.

**Why the verdicts agree between consoles.** Every record about one item is keyed by the item, so they share a
partition of the decisions topic and come in one order for every reader. A verdict is made from that order
and from the review record the decision names, never from what else a reader happens to have read of the
review topic: two consoles (and the applier) that read the two topics interleaved differently still agree.
Hence:

- A decision names its round (``review``: a review record). If that record has not been read yet, the
  item's records *wait* (in order) until the review partition was read past it; a name that turns out to be
  no review record of the item is refused.
- The decisions log has its own idea of an item's round: the round of the last accepted decision. A decision
  on an older round is refused as *stale*; one on a newer round starts that round (decided → open,
  escalated stays escalated: the new review replaces the one that was escalated). What a reviewer *sees* is
  the newest review record read: an item whose newest round is newer than the log's is open (or still
  escalated), with its history kept.
- Claims are judged at the claim's own ``at`` (the author's clock), not at the reader's time; whether a claim
  still holds *now* is asked at query time.

Every accepted ``approve`` and ``rerun`` is an :class:`Application` the applier carries out once, whatever
happens to the item later (a reopen does not unpublish, nor cancel what was decided).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from pipeline.review.desk import HistoryEntry, Item, ItemFilter, ItemState, Problem, QueueCounts
from pipeline.review.item_log import ItemLog, ReviewOrigin, Round, Ruling, Wait
from pipeline.review.items import item_key, matches, max_score
from schemas.decisions import (
    Applied,
    Applying,
    Claim,
    Decision,
    DecisionKind,
    DecisionRecord,
    Release,
    Reopen,
    ReviewRef,
)
from schemas.topics import Review, reason_kind

__all__ = ["Application", "QueueStats", "ReviewBook", "ReviewOrigin", "Verdict", "position_of"]

ITEM_STATES: Final[tuple[ItemState, ...]] = ("open", "escalated", "decided")
#: Decisions with a side effect, carried out by the applier.
APPLIED_DECISIONS: Final[frozenset[DecisionKind]] = frozenset({"approve", "rerun"})
_NOTHING_TO_APPLY: Final = "names no accepted approve or rerun"


def position_of(topic: str, partition: int, offset: int) -> str:
    """A record's place on a topic as written in ``decision_id`` and ``HistoryEntry.position``."""
    return f"{topic}/{partition}/{offset}"


@dataclass(frozen=True)
class Verdict:
    """How a decisions record was judged: its history entry, and for a refusal, the desk's word for it."""

    entry: HistoryEntry
    #: The item the record is about.
    key: str
    problem: Problem | None = None
    #: Refused because what it asks was already so (the same decision in force): nothing to fix.
    repeated: bool = False


@dataclass(frozen=True)
class Application:
    """An accepted approve or rerun decision, and how far its side effect got (see :mod:`.applier`)."""

    decision_id: str
    key: str
    decision: Decision
    review: Review
    ref: ReviewRef
    origin: ReviewOrigin
    applying: tuple[Applying, ...]
    applied: Applied | None


@dataclass(frozen=True)
class QueueStats:
    """The queue by reason kind and state, and the oldest undecided item's arrival per reason (for metrics)."""

    items: dict[tuple[str, ItemState], int]
    oldest_undecided_at: dict[str, int]


@dataclass
class _Application:
    decision_id: str
    key: str
    decision: Decision
    round: Round
    applying: list[Applying] = field(default_factory=list)
    applied: Applied | None = None

    def value(self) -> Application:
        r = self.round
        return Application(
            self.decision_id, self.key, self.decision, r.review, r.ref, r.origin, tuple(self.applying), self.applied
        )


class ReviewBook:
    """Items of the review topic and what the decisions topic says of them; see the module docstring."""

    def __init__(self, review_topic: str) -> None:
        self.review_topic = review_topic
        #: Bumped by every change (a new round, a judged record); readers compare it to see news.
        self.version = 0
        self._items: dict[str, ItemLog] = {}
        #: Per review partition, the offset up to which it was read.
        self._review_read: dict[int, int] = {}
        self._waiting_keys: set[str] = set()
        self._verdicts: dict[str, Verdict] = {}
        self._applications: dict[str, _Application] = {}
        self._claim_ends: list[int] = []

    # ------------------------------------------------------------------------------------------------
    # Folding
    # ------------------------------------------------------------------------------------------------

    def add_review(
        self, review: Review, ref: ReviewRef, timestamp_ms: int, *, origin: ReviewOrigin | None = None
    ) -> str:
        """Fold one review record; returns its item key. A record read twice changes nothing."""
        key = item_key(review, ref)
        fresh = Round(
            ref, review, timestamp_ms, origin or ReviewOrigin(), reason_kind(review.reason), max_score(review)
        )
        if self._item_log(key).add_round(fresh):
            self.version += 1
        self.review_read_to(ref.partition, ref.offset + 1)
        return key

    def review_read_to(self, partition: int, next_offset: int) -> None:
        """The review topic's ``partition`` was read up to ``next_offset`` (records that are not reviews
        included): decisions waiting for a record before it can be judged."""
        if next_offset <= self._review_read.get(partition, 0):
            return
        self._review_read[partition] = next_offset
        for key in list(self._waiting_keys):
            self._drain(self._items[key])

    def add_decision_record(self, record: DecisionRecord, position: str) -> Verdict | None:
        """Fold one record of the decisions topic (``position``: ``topic/partition/offset``); returns its
        verdict, or None while it waits for the review record it names."""
        log = self._item_log(record.item)
        if log.waiting:
            log.waiting.append((record, position))
            return None
        verdict = self._judge(log, record, position)
        if verdict is None:
            log.waiting.append((record, position))
            self._waiting_keys.add(log.key)
        return verdict

    def _item_log(self, key: str) -> ItemLog:
        log = self._items.get(key)
        if log is None:
            log = self._items[key] = ItemLog(key)
        return log

    def _drain(self, log: ItemLog) -> None:
        while log.waiting:
            record, position = log.waiting[0]
            if self._judge(log, record, position) is None:
                return
            log.waiting.popleft()
        self._waiting_keys.discard(log.key)

    def _judge(self, log: ItemLog, record: DecisionRecord, position: str) -> Verdict | None:
        """The record's verdict, noted; None while it must wait."""
        ruling: Ruling | Wait
        seen = log.record_ids.get(record.record_id)
        if seen is not None:
            ruling = Ruling(False, f"a copy of the record at {seen}", repeated=True)
        else:
            match record:
                case Decision():
                    read_to = self._review_read.get(record.review.partition, 0)
                    ruling = log.rule_decision(record, position, self.review_topic, read_to)
                    if (
                        isinstance(ruling, Ruling)
                        and ruling.accepted
                        and record.decision in APPLIED_DECISIONS
                        and log.round is not None
                    ):
                        self._applications[position] = _Application(position, log.key, record, log.round)
                case Claim():
                    ruling = log.rule_claim(record)
                    if ruling.accepted:
                        heapq.heappush(self._claim_ends, record.expires_at)
                case Release():
                    ruling = log.rule_release(record)
                case Reopen():
                    ruling = log.rule_reopen(record)
                case Applying() | Applied():
                    ruling = self._rule_application(log, record)
        if isinstance(ruling, Wait):
            return None
        entry = HistoryEntry(record, position, ruling.accepted, ruling.because)
        log.history.append(entry)
        log.record_ids.setdefault(record.record_id, position)
        verdict = Verdict(entry, log.key, ruling.problem, ruling.repeated)
        self._verdicts.setdefault(record.record_id, verdict)
        self.version += 1
        return verdict

    def _rule_application(self, log: ItemLog, record: Applying | Applied) -> Ruling:
        """Applying and applied records: only for an accepted approve or rerun of the same item, not after
        it was applied."""
        found = self._applications.get(record.decision_id)
        if found is None or found.key != log.key:
            return Ruling(False, _NOTHING_TO_APPLY, "not_found")
        if found.applied is not None:
            where = position_of(found.applied.topic, found.applied.partition, found.applied.offset)
            return Ruling(False, f"applied already, at {where}", repeated=True)
        if isinstance(record, Applying):
            found.applying.append(record)
        else:
            found.applied = record
        return Ruling(True)

    # ------------------------------------------------------------------------------------------------
    # Queries
    # ------------------------------------------------------------------------------------------------

    def verdict(self, record_id: str) -> Verdict | None:
        """How the first record with this ``record_id`` was judged, once it was."""
        return self._verdicts.get(record_id)

    def application(self, decision_id: str) -> Application | None:
        """The accepted approve or rerun decision at ``decision_id``, or None (refused, or nothing to apply)."""
        found = self._applications.get(decision_id)
        return found.value() if found is not None else None

    def unapplied(self) -> list[Application]:
        """Accepted approve and rerun decisions whose side effect is not recorded as done yet."""
        return [a.value() for a in self._applications.values() if a.applied is None]

    def claims_ended(self, now_ms: int) -> bool:
        """Whether a claim's time ran out since the last call (the queue changed without a record)."""
        ended = False
        while self._claim_ends and self._claim_ends[0] <= now_ms:
            heapq.heappop(self._claim_ends)
            ended = True
        return ended

    def item(self, key: str, now_ms: int) -> Item | None:
        log = self._items.get(key)
        return self._item(log, now_ms) if log is not None and log.current is not None else None

    def items(self, where: ItemFilter, now_ms: int, *, limit: int | None = 100, offset: int = 0) -> list[Item]:
        chosen = sorted(self._matching(where, now_ms), key=_sort_key(where))
        page = chosen[offset:] if limit is None else chosen[offset : offset + limit]
        return [self._item(log, now_ms) for log, _ in page]

    def count(self, where: ItemFilter, now_ms: int) -> int:
        return sum(1 for _ in self._matching(where, now_ms))

    def counts(self) -> QueueCounts:
        open_by_reason: dict[str, int] = {}
        escalated = decided = 0
        oldest: int | None = None
        for current, state in self._states():
            if state == "decided":
                decided += 1
                continue
            if state == "open":
                open_by_reason[current.reason] = open_by_reason.get(current.reason, 0) + 1
            else:
                escalated += 1
            oldest = current.received_at if oldest is None else min(oldest, current.received_at)
        return QueueCounts(open_by_reason, escalated, decided, oldest)

    def queue_stats(self) -> QueueStats:
        items: dict[tuple[str, ItemState], int] = {}
        oldest: dict[str, int] = {}
        for current, state in self._states():
            items[(current.reason, state)] = items.get((current.reason, state), 0) + 1
            if state != "decided":
                at = current.received_at
                oldest[current.reason] = min(oldest.get(current.reason, at), at)
        return QueueStats(items, oldest)

    def _states(self) -> Iterator[tuple[Round, ItemState]]:
        for log in self._items.values():
            if log.current is not None:
                yield log.current, log.view()[0]

    def _matching(self, where: ItemFilter, now_ms: int) -> Iterator[tuple[ItemLog, Round]]:
        for log in self._items.values():
            current = log.current
            if current is None or (where.state is not None and log.view()[0] != where.state):
                continue
            if matches(where, current.review, current.reason, current.score, current.received_at, now_ms):
                yield log, current

    def _item(self, log: ItemLog, now_ms: int) -> Item:
        current = log.current
        assert current is not None
        state, decision, decision_id = log.view()
        application = self._applications.get(decision_id) if decision_id is not None else None
        return Item(
            key=log.key,
            review=current.review,
            ref=current.ref,
            received_at=current.received_at,
            state=state,
            decision=decision,
            claim=log.held(now_ms),
            applied=application.applied if application is not None else None,
            max_score=current.score,
            history=tuple(log.history),
        )


_SortKey = Callable[[tuple[ItemLog, Round]], tuple[Any, ...]]


def _sort_key(where: ItemFilter) -> _SortKey:
    if where.sort == "newest":
        return lambda pair: (-pair[1].received_at, pair[0].key)
    if where.sort == "score":
        return lambda pair: (pair[1].score is None, -(pair[1].score or 0.0), pair[1].received_at, pair[0].key)
    return lambda pair: (pair[1].received_at, pair[0].key)
