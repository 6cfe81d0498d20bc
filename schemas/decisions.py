"""The review-decisions topic (default ``review-decisions``): the review console's source of truth and audit log.

Every record is keyed by the job id of the item it concerns (``ItemKey``), so one item's records share a
partition and the log's order decides between reviewers: the first decision in log order wins, a later
conflicting one is *refused* (it stays in the log, as the audit trail of an attempt, and changes nothing).
A console rebuilds its whole state by folding the review topic and this topic from their beginnings.

Records (a tagged union on ``type``):

- ``claim`` / ``release`` — a reviewer holds an item for a while (others see who), or lets it go early.
- ``decision`` — ``approve`` (the completion is published to the output topic), ``reject`` (nothing is
  published), ``rerun`` (the job goes back to the input topic, as ``pipeline replay`` does), ``escalate``
  (the item moves to the admin queue; an admin then decides it).
- ``reopen`` — an admin takes a decided item back to the queue.
- ``applying`` / ``applied`` — written by the applier around the one side effect of an approve or a rerun,
  so that a crash between "decided" and "published" neither loses nor doubles the published record:
  ``applying`` names the target partition and an offset at or before where the record will land;
  ``applied`` names where it landed. An ``applying`` without its ``applied`` is resolved by looking for the
  record (header ``pipeline_decision-id``) in the target partition from that offset.

Every record carries ``record_id`` (a UUID written by its author) so the author can find it when it reads
the log back and learn whether it was accepted; ``at`` is epoch milliseconds on the author's clock.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from schemas.wire import Wire

#: Header on every record the applier publishes: the decision it carries out, as ``topic/partition/offset``
#: of the decision record (unique and the same on every retry).
HEADER_DECISION_ID: Final = "pipeline_decision-id"
#: Header on a rerun job: the job was sent back by a reviewer's decision (value: the reviewer's name).
HEADER_RERUN_BY: Final = "pipeline_rerun-by"

ReviewerName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]
Note = Annotated[str, msgspec.Meta(max_length=4000)]
DecisionKind = Literal["approve", "reject", "rerun", "escalate"]
DECISION_KINDS: Final[tuple[DecisionKind, ...]] = ("approve", "reject", "rerun", "escalate")


class ReviewRef(Wire, frozen=True):
    """Which review record (one round of an item) a decision is about: its place on the review topic."""

    topic: str
    partition: int
    offset: int


class Claim(Wire, frozen=True, tag_field="type", tag="claim"):
    record_id: str
    item: str
    reviewer: ReviewerName
    at: int
    expires_at: int


class Release(Wire, frozen=True, tag_field="type", tag="release"):
    record_id: str
    item: str
    reviewer: ReviewerName
    at: int


class Decision(Wire, frozen=True, tag_field="type", tag="decision"):
    record_id: str
    item: str
    review: ReviewRef
    decision: DecisionKind
    reviewer: ReviewerName
    at: int
    #: One of the console's configured decision reasons, when one was chosen.
    reason: str | None = None
    note: Note | None = None
    #: Written by an admin (escalated items can only be decided by admins).
    admin: bool = False


class Reopen(Wire, frozen=True, tag_field="type", tag="reopen"):
    record_id: str
    item: str
    reviewer: ReviewerName
    at: int
    note: Note | None = None
    #: Written by an admin: only an admin reopens (a reopen without it is refused, like a non-admin decision
    #: on an escalated item).
    admin: bool = False


class Applying(Wire, frozen=True, tag_field="type", tag="applying"):
    record_id: str
    item: str
    #: ``topic/partition/offset`` of the decision record being carried out.
    decision_id: str
    topic: str
    partition: int
    #: An offset at or before where the published record lands (the partition's end when it was read).
    from_offset: int
    at: int


class Applied(Wire, frozen=True, tag_field="type", tag="applied"):
    record_id: str
    item: str
    decision_id: str
    topic: str
    partition: int
    offset: int
    at: int


DecisionRecord = Claim | Release | Decision | Reopen | Applying | Applied
