"""One item's story: its review rounds, and the rules by which its records on the decisions topic are judged.

The rules (the reasons they make every reader agree are in :mod:`pipeline.review.state`):

- **decisions**: open → decided (approve, reject, rerun) or escalated (escalate); escalated → decided only by
  an admin's decision. The same decision again is *repeated* (refused, nothing changes, nothing to fix); a
  different one after a decision is a *conflict* unless an admin's reopen came first. A decision names its
  round: an older round than the log's is *stale*; a newer one starts that round (a decision ends, an
  escalation carries over). Approve needs a completion a Result can carry, rerun needs the job.
- **claims**: a claim holds until its ``expires_at`` or its holder's release; another reviewer's claim while
  it holds is refused. Both are judged at the record's own ``at``. A decision ends its author's claim.
- **reopen**: only an admin's, and only of a decided or escalated item.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from pipeline.review.desk import HistoryEntry, ItemState, Problem
from pipeline.review.items import decision_problem
from schemas.decisions import Claim, Decision, DecisionRecord, Release, Reopen, ReviewRef
from schemas.topics import Review


@dataclass(frozen=True)
class ReviewOrigin:
    """What the review record's headers say about the original job record (for the records the applier
    publishes: they carry the same headers as the worker's)."""

    timestamp_ms: int | None = None
    consumer_group: str | None = None
    replay_count: int = 0


@dataclass(frozen=True)
class Round:
    """One review record of an item, with what the queue sorts and filters on."""

    ref: ReviewRef
    review: Review
    received_at: int
    origin: ReviewOrigin
    reason: str
    score: float | None

    def newer_than(self, other: Round) -> bool:
        """By offset in one partition (the usual case: one job id, one partition), else by timestamp."""
        if self.ref.partition == other.ref.partition:
            return self.ref.offset > other.ref.offset
        return (self.received_at, self.ref.partition) > (other.received_at, other.ref.partition)


@dataclass(frozen=True)
class Ruling:
    """What the rules say of one record: accepted, or refused and why."""

    accepted: bool
    because: str | None = None
    problem: Problem | None = None
    #: Refused because what it asks is already so (the same decision, nothing to reopen or release).
    repeated: bool = False


class Wait:
    """The ruling on a decision that names a review record not read yet."""


ACCEPTED: Final = Ruling(True)
WAIT: Final = Wait()


def _who(decision: Decision) -> str:
    return f"{decision.decision} by {decision.reviewer}"


def _refused(because: str, problem: Problem) -> Ruling:
    return Ruling(False, because, problem)


def _repeated(because: str) -> Ruling:
    return Ruling(False, because, repeated=True)


@dataclass
class ItemLog:
    key: str
    rounds: dict[tuple[int, int], Round] = field(default_factory=dict)
    #: The newest review round read: what a reviewer sees.
    current: Round | None = None
    #: The decisions log's round (of its last accepted decision), the decision in force, an escalation.
    round: Round | None = None
    decision: Decision | None = None
    decision_id: str | None = None
    escalation: Decision | None = None
    claim: Claim | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    #: Records that name a review record not read yet, and every later record of the item, in log order.
    waiting: deque[tuple[DecisionRecord, str]] = field(default_factory=deque)
    #: ``record_id`` → position of its first copy.
    record_ids: dict[str, str] = field(default_factory=dict)

    def add_round(self, fresh: Round) -> bool:
        """A review record of this item; False when it was read already."""
        at = (fresh.ref.partition, fresh.ref.offset)
        if at in self.rounds:
            return False
        self.rounds[at] = fresh
        if self.current is None or fresh.newer_than(self.current):
            self.current = fresh
        return True

    def view(self) -> tuple[ItemState, Decision | None, str | None]:
        """What a reviewer sees: the state of the newest round read, the decision in force and its position."""
        if self.round is not None and self.round is self.current and self.decision is not None:
            return "decided", self.decision, self.decision_id
        if self.escalation is not None:  # never beside a decision: escalated until an admin decides
            return "escalated", self.escalation, None
        return "open", None, None

    def held(self, at_ms: int) -> Claim | None:
        """The claim in force at ``at_ms``, if any."""
        claim = self.claim
        return claim if claim is not None and claim.expires_at > at_ms else None

    def rule_decision(self, d: Decision, position: str, review_topic: str, review_read_to: int) -> Ruling | Wait:
        """Judge a decision (and apply it when accepted). ``review_read_to``: how far the partition of the
        review record it names was read."""
        ref = d.review
        if ref.topic != review_topic:
            return _refused(f"names a review record on {ref.topic}", "conflict")
        named = self.rounds.get((ref.partition, ref.offset))
        if named is None:
            return (
                WAIT if ref.offset >= review_read_to else _refused("names no review record of this item", "not_found")
            )
        if self.round is not None and self.round.newer_than(named):
            return _refused("stale: a later review round was decided already", "conflict")
        invalid = decision_problem(named.review, d.decision)
        if invalid is not None:
            return _refused(invalid[1], invalid[0])
        # A new round ends a decision but not an escalation (the newer review replaces the escalated one).
        decided = self.decision if self.round is named else None
        if decided is not None:
            if decided.decision == d.decision:
                return _repeated(f"repeated: already {_who(decided)}")
            return _refused(f"already decided: {_who(decided)}", "conflict")
        if self.escalation is not None:
            if d.decision == "escalate":
                return _repeated(f"repeated: already {_who(self.escalation)}")
            if not d.admin:
                return _refused("escalated: only an admin decides it", "forbidden")
        self.round = named
        if d.decision == "escalate":
            self.decision, self.decision_id, self.escalation = None, None, d
        else:
            self.decision, self.decision_id, self.escalation = d, position, None
        if self.claim is not None and self.claim.reviewer == d.reviewer:
            self.claim = None
        return ACCEPTED

    def rule_claim(self, claim: Claim) -> Ruling:
        if claim.expires_at <= claim.at:
            return _refused("expires before it starts", "conflict")
        held = self.held(claim.at)
        if held is not None and held.reviewer != claim.reviewer:
            return _refused(f"held by {held.reviewer} until {held.expires_at}", "claimed")
        self.claim = claim
        return ACCEPTED

    def rule_release(self, release: Release) -> Ruling:
        held = self.held(release.at)
        if held is None:
            return _repeated("not claimed")
        if held.reviewer != release.reviewer:
            return _refused(f"held by {held.reviewer}", "claimed")
        self.claim = None
        return ACCEPTED

    def rule_reopen(self, reopen: Reopen) -> Ruling:
        if not reopen.admin:
            return _refused("only an admin reopens", "forbidden")
        if self.decision is None and self.escalation is None:
            return _repeated("not decided: nothing to reopen")
        self.decision, self.decision_id, self.escalation = None, None, None
        return ACCEPTED
