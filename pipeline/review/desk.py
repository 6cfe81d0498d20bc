"""What the review console's web layer asks of its state: the ``Desk`` contract and the values it deals in.

The web layer (pages, JSON API, server-sent events) depends on this module only; the Kafka-backed desk
(:mod:`pipeline.review.log`) implements it by folding the review topic and the review-decisions topic.
Everything here is a plain value: the web layer renders it and never changes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from schemas.decisions import Applied, Claim, DecisionKind, DecisionRecord, ReviewRef
from schemas.decisions import Decision as DecisionRecordType
from schemas.topics import ReasonKind, Review, Side

#: ``open``: waiting for a reviewer; ``escalated``: waiting for an admin; ``decided``: approve, reject or rerun.
ItemState = Literal["open", "escalated", "decided"]
SortOrder = Literal["oldest", "newest", "score"]


@dataclass(frozen=True)
class Reviewer:
    """A signed-in account: its name and whether it may act as an admin."""

    name: str
    admin: bool = False


@dataclass(frozen=True)
class ItemFilter:
    """Which items a queue view or a bulk decision covers; ``None`` means "any"."""

    state: ItemState | None = "open"
    reason: ReasonKind | None = None
    side: Side | None = None
    category: str | None = None
    #: Bounds on the item's highest moderation score (over both sides and every category).
    score_min: float | None = None
    score_max: float | None = None
    model: str | None = None
    #: ``(field, value)`` pairs the job's metadata must hold, e.g. ``(("tenant", "acme"),)``.
    metadata: tuple[tuple[str, str], ...] = ()
    #: Only items that arrived at least / at most this many seconds ago.
    min_age_s: float | None = None
    max_age_s: float | None = None
    sort: SortOrder = "oldest"


@dataclass(frozen=True)
class HistoryEntry:
    """One record of the decisions topic about an item, in log order, and whether it changed anything."""

    record: DecisionRecord
    #: ``topic/partition/offset`` on the decisions topic.
    position: str
    accepted: bool
    #: Why a refused record changed nothing (e.g. "already decided: reject by ana").
    refused_because: str | None = None


@dataclass(frozen=True)
class Item:
    """One reviewable item: the latest review record of a job (a job reviewed again starts a new round)."""

    #: The job id, or ``@topic:partition:offset`` of the review record for a record without one.
    key: str
    review: Review
    ref: ReviewRef
    #: Epoch ms of the review record (its Kafka timestamp): the item's age counts from here.
    received_at: int
    state: ItemState
    #: The winning decision of this round (``escalate`` while escalated), if any.
    decision: DecisionRecordType | None
    #: A claim that has not expired or been released.
    claim: Claim | None
    #: Where an approve's result or a rerun's job landed, once it has.
    applied: Applied | None
    #: Highest moderation score over both sides and every category, when the review carries moderation.
    max_score: float | None
    history: tuple[HistoryEntry, ...] = ()


@dataclass(frozen=True)
class QueueCounts:
    """The queue at a glance: undecided items by reason and state, and the age of the oldest undecided one."""

    open_by_reason: dict[str, int] = field(default_factory=dict)
    escalated: int = 0
    decided: int = 0
    oldest_undecided_at: int | None = None


Problem = Literal["not_found", "conflict", "no_completion", "no_job", "forbidden", "claimed"]


@dataclass(frozen=True)
class Outcome:
    """What came of an attempt to decide, claim or reopen: the record written, and whether the log accepted it.

    ``problem`` says why nothing changed: ``not_found`` (404), ``conflict`` (409: decided otherwise, or the
    log put another reviewer's decision first), ``no_completion`` / ``no_job`` (422: approve needs a
    completion, rerun needs the job), ``forbidden`` (403: an admin action by a reviewer), ``claimed`` (409:
    held by someone else). ``repeated`` is true when the same decision was already in force (nothing written).
    """

    accepted: bool
    item: Item | None
    record: DecisionRecord | None = None
    problem: Problem | None = None
    detail: str | None = None
    repeated: bool = False


@dataclass(frozen=True)
class BulkOutcome:
    decided: int
    skipped: int
    #: Why items were skipped, counted (e.g. ``{"no_completion": 3, "conflict": 1}``).
    skipped_because: dict[str, int] = field(default_factory=dict)


class DeskUnavailable(Exception):
    """The desk could not write a record, or did not see it come back in time (Kafka unreachable or slow):
    the web layer answers 503, and the change may or may not have been recorded (look again)."""


class Desk(Protocol):
    """The console's state and its only way to change it (every change is a record on the decisions topic)."""

    #: Decision reasons offered to reviewers (configured; free text goes in the note).
    decision_reasons: tuple[str, ...]

    def items(self, where: ItemFilter, *, limit: int = 100, offset: int = 0) -> list[Item]: ...

    def count(self, where: ItemFilter) -> int: ...

    def item(self, key: str) -> Item | None: ...

    def counts(self) -> QueueCounts: ...

    async def claim(self, key: str, reviewer: Reviewer) -> Outcome: ...

    async def release(self, key: str, reviewer: Reviewer) -> Outcome: ...

    async def decide(
        self,
        key: str,
        decision: DecisionKind,
        reviewer: Reviewer,
        *,
        reason: str | None = None,
        note: str | None = None,
    ) -> Outcome: ...

    async def bulk(
        self,
        where: ItemFilter,
        decision: DecisionKind,
        reviewer: Reviewer,
        *,
        reason: str | None = None,
        note: str | None = None,
    ) -> BulkOutcome: ...

    async def reopen(self, key: str, admin: Reviewer, *, note: str | None = None) -> Outcome: ...

    def changes(self) -> AsyncIterator[int]:
        """Yields a new version number each time the state changes (new items, decisions, claims)."""
        ...
