"""The review book: the console's state as a pure fold of the review and decisions topics."""

from __future__ import annotations

import itertools
import random

import pytest

from pipeline.review.desk import ItemFilter
from pipeline.review.items import item_key, max_score
from pipeline.review.state import ReviewBook, Verdict, position_of
from schemas.decisions import Applied, Applying, DecisionRecord, ReviewRef
from schemas.topics import Review
from tests.unit.review.decision_builders import (
    REVIEW_TOPIC,
    T0,
    api_error,
    claim,
    decision,
    flagged,
    invalid,
    ref,
    release,
    reopen,
)

MINUTE = 60_000


class Log:
    """A book and a decisions topic (one partition) to append to."""

    def __init__(self) -> None:
        self.book = ReviewBook(REVIEW_TOPIC)
        self.offsets = itertools.count()

    def review(self, review: Review, offset: int, at: int = T0, partition: int = 0) -> ReviewRef:
        where = ref(offset, partition)
        self.book.add_review(review, where, at)
        return where

    def write(self, record: DecisionRecord) -> Verdict:
        verdict = self.book.add_decision_record(record, position_of("review-decisions", 0, next(self.offsets)))
        assert verdict is not None, "judged at once"
        return verdict

    def state(self, key: str, now: int = T0) -> str:
        item = self.book.item(key, now)
        assert item is not None
        return item.state


def test_an_item_is_keyed_by_job_id_or_by_the_review_record_coordinates() -> None:
    assert item_key(flagged("job-1"), ref(4)) == "job-1"
    assert item_key(invalid(9), ref(4, partition=2)) == "@review:2:4"


def test_approve_decides_the_item_and_is_owed_to_the_applier() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    verdict = log.write(decision("j", r1, "approve"))
    assert verdict.entry.accepted
    item = log.book.item("j", T0)
    assert item is not None and item.state == "decided"
    assert item.decision is not None and item.decision.decision == "approve"
    (owed,) = log.book.unapplied()
    assert owed.key == "j" and owed.decision_id == verdict.entry.position and owed.ref == r1


def test_the_same_decision_again_is_repeated_not_a_conflict() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    log.write(decision("j", r1, "reject", "ana"))
    again = log.write(decision("j", r1, "reject", "bo"))
    assert not again.entry.accepted and again.repeated and again.problem is None
    item = log.book.item("j", T0)
    assert item is not None and item.decision is not None and item.decision.reviewer == "ana"


def test_a_conflicting_decision_from_a_second_console_is_refused_first_in_log_order_wins() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    first = log.write(decision("j", r1, "approve", "ana"))
    second = log.write(decision("j", r1, "reject", "bo"))
    assert first.entry.accepted
    assert not second.entry.accepted and second.problem == "conflict"
    assert second.entry.refused_because == "already decided: approve by ana"
    item = log.book.item("j", T0)
    assert item is not None and [h.accepted for h in item.history] == [True, False]


def test_an_admin_reopen_first_in_log_order_lets_another_decision_through() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    log.write(decision("j", r1, "reject"))
    assert log.write(reopen("j")).entry.accepted
    assert log.state("j") == "open"
    assert log.write(decision("j", r1, "approve", "bo")).entry.accepted
    assert log.state("j") == "decided"


def test_a_reopen_without_admin_is_refused_and_one_of_an_open_item_changes_nothing() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    nothing = log.write(reopen("j"))
    assert not nothing.entry.accepted and nothing.repeated
    log.write(decision("j", r1, "reject"))
    refused = log.write(reopen("j", "bo", admin=False))
    assert not refused.entry.accepted and refused.problem == "forbidden"
    assert log.state("j") == "decided"


def test_escalated_items_are_decided_only_by_an_admin() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    assert log.write(decision("j", r1, "escalate", "ana")).entry.accepted
    assert log.state("j") == "escalated"
    assert log.write(decision("j", r1, "escalate", "bo")).repeated
    refused = log.write(decision("j", r1, "approve", "bo"))
    assert not refused.entry.accepted and refused.problem == "forbidden"
    assert log.state("j") == "escalated"
    assert log.write(decision("j", r1, "reject", "root", admin=True)).entry.accepted
    assert log.state("j") == "decided"


def test_an_admin_reopens_an_escalated_item_to_the_queue() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    log.write(decision("j", r1, "escalate"))
    assert log.write(reopen("j")).entry.accepted
    assert log.state("j") == "open"
    assert log.write(decision("j", r1, "approve", "bo")).entry.accepted


def test_approve_needs_a_completion_a_result_can_carry_and_rerun_needs_the_job() -> None:
    log = Log()
    no_completion = log.review(api_error("a"), 0)
    unknown_finish = log.review(flagged("b", finish_reason="safety_stop"), 1)
    no_job = log.review(api_error("c", with_job=False), 2)
    assert log.write(decision("a", no_completion, "approve")).problem == "no_completion"
    assert log.write(decision("b", unknown_finish, "approve")).problem == "no_completion"
    assert log.write(decision("c", no_job, "rerun")).problem == "no_job"
    assert log.write(decision("a", no_completion, "rerun")).entry.accepted
    assert [log.state(k) for k in "abc"] == ["decided", "open", "open"]


def test_a_new_review_of_a_decided_item_starts_a_new_round_with_its_history() -> None:
    log = Log()
    r1 = log.review(api_error("j"), 0)
    log.write(decision("j", r1, "rerun"))
    r2 = log.review(flagged("j"), 1)
    item = log.book.item("j", T0)
    assert item is not None and item.state == "open" and item.ref == r2 and item.decision is None
    assert len(item.history) == 1
    assert log.write(decision("j", r2, "approve")).entry.accepted
    assert log.state("j") == "decided"


def test_a_new_review_of_an_undecided_item_replaces_it_and_an_escalation_carries_over() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    log.write(decision("j", r1, "escalate"))
    r2 = log.review(flagged("j", score=0.5), 1)
    item = log.book.item("j", T0)
    assert item is not None and item.ref == r2 and item.state == "escalated"
    assert log.write(decision("j", r2, "approve", "bo")).problem == "forbidden"
    assert log.write(decision("j", r2, "approve", "root", admin=True)).entry.accepted


def test_a_decision_on_an_older_round_than_the_log_decided_is_stale() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    r2 = log.review(flagged("j"), 1)
    assert log.write(decision("j", r2, "reject", "ana")).entry.accepted
    stale = log.write(decision("j", r1, "approve", "bo"))
    assert not stale.entry.accepted and stale.problem == "conflict"
    assert stale.entry.refused_because is not None and stale.entry.refused_because.startswith("stale")
    assert log.book.unapplied() == []


def test_a_decision_naming_no_review_of_the_item_is_refused() -> None:
    log = Log()
    log.review(flagged("j"), 0)
    log.review(flagged("other"), 1)
    wrong = log.write(decision("j", ref(1), "reject"))
    assert not wrong.entry.accepted and wrong.problem == "not_found"
    other_topic = log.write(decision("j", ref(0, topic="elsewhere"), "reject"))
    assert not other_topic.entry.accepted


def test_decisions_read_before_their_review_wait_and_every_reading_order_agrees() -> None:
    """The follower reads the two topics interleaved in any order; verdicts must not depend on it."""
    reviews = [(flagged("j"), ref(0)), (flagged("k"), ref(1)), (flagged("j", score=0.2), ref(2))]
    decisions: list[DecisionRecord] = [
        decision("j", ref(0), "approve", "ana"),
        decision("k", ref(1), "reject", "ana"),
        decision("j", ref(2), "reject", "bo"),
        decision("j", ref(0), "reject", "cy"),  # stale once the log decided round 2
        claim("k", "bo", T0),
    ]
    outcomes = set()
    for seed in range(40):
        book = ReviewBook(REVIEW_TOPIC)
        stream: list[tuple[str, int]] = [("r", i) for i in range(len(reviews))] + [
            ("d", i) for i in range(len(decisions))
        ]
        random.Random(seed).shuffle(stream)
        # each topic stays in its own order: only the interleaving changes
        ordered = iter(sorted((i for kind, i in stream if kind == "r")))
        ordered_d = iter(sorted((i for kind, i in stream if kind == "d")))
        for kind, _ in stream:
            if kind == "r":
                review, where = reviews[next(ordered)]
                book.add_review(review, where, T0)
            else:
                i = next(ordered_d)
                book.add_decision_record(decisions[i], position_of("review-decisions", 0, i))
        verdicts = tuple(book.verdict(d.record_id) for d in decisions)
        assert all(v is not None for v in verdicts)
        outcomes.add(tuple(v.entry.accepted for v in verdicts if v is not None))
        item = book.item("j", T0)
        assert item is not None and item.state == "decided" and item.ref == ref(2)
    assert outcomes == {(True, True, True, False, True)}


def test_a_record_waiting_for_its_review_holds_back_the_items_later_records() -> None:
    book = ReviewBook(REVIEW_TOPIC)
    first = decision("j", ref(5), "approve", "ana")
    second = decision("j", ref(5), "reject", "bo")
    assert book.add_decision_record(first, "d/0/0") is None
    assert book.add_decision_record(second, "d/0/1") is None
    book.review_read_to(0, 3)  # not far enough yet
    assert book.verdict(first.record_id) is None
    book.add_review(flagged("j"), ref(5), T0)
    one, two = book.verdict(first.record_id), book.verdict(second.record_id)
    assert one is not None and one.entry.accepted
    assert two is not None and two.problem == "conflict"


def test_a_waiting_record_is_refused_once_its_partition_was_read_past_it() -> None:
    book = ReviewBook(REVIEW_TOPIC)
    record = decision("j", ref(5), "approve")
    book.add_decision_record(record, "d/0/0")
    book.review_read_to(0, 6)  # offset 5 was not a review (an undecodable record)
    verdict = book.verdict(record.record_id)
    assert verdict is not None and verdict.problem == "not_found"


def test_a_copy_of_a_record_is_not_judged_twice() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    record = decision("j", r1, "approve")
    first = log.write(record)
    copy = log.write(record)
    assert first.entry.accepted and not copy.entry.accepted
    assert log.book.verdict(record.record_id) == first
    assert len(log.book.unapplied()) == 1


def test_a_claim_holds_until_it_expires_or_is_released() -> None:
    log = Log()
    log.review(flagged("j"), 0)
    assert log.write(claim("j", "ana", T0)).entry.accepted
    taken = log.write(claim("j", "bo", T0 + MINUTE))
    assert not taken.entry.accepted and taken.problem == "claimed"
    item = log.book.item("j", T0 + MINUTE)
    assert item is not None and item.claim is not None and item.claim.reviewer == "ana"
    assert log.write(claim("j", "ana", T0 + 2 * MINUTE)).entry.accepted  # renewed by its holder
    assert log.write(release("j", "bo", T0 + 3 * MINUTE)).problem == "claimed"
    assert log.write(release("j", "ana", T0 + 3 * MINUTE)).entry.accepted
    assert log.write(claim("j", "bo", T0 + 4 * MINUTE)).entry.accepted


def test_an_expired_claim_vanishes_and_returns_the_item_to_others() -> None:
    log = Log()
    log.review(flagged("j"), 0)
    log.write(claim("j", "ana", T0, for_ms=5 * MINUTE))
    assert not log.book.claims_ended(T0 + MINUTE)
    held = log.book.item("j", T0 + MINUTE)
    assert held is not None and held.claim is not None
    expired = log.book.item("j", T0 + 5 * MINUTE)
    assert expired is not None and expired.claim is None
    assert log.book.claims_ended(T0 + 5 * MINUTE)
    assert log.write(claim("j", "bo", T0 + 6 * MINUTE)).entry.accepted


def test_a_decision_ends_its_authors_claim() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    log.write(claim("j", "ana", T0))
    log.write(decision("j", r1, "reject", "ana", at=T0 + 1))
    item = log.book.item("j", T0 + 2)
    assert item is not None and item.claim is None


def test_applying_then_applied_settles_an_application() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    decided = log.write(decision("j", r1, "approve"))
    decision_id = decided.entry.position
    applying = Applying(
        record_id="a1", item="j", decision_id=decision_id, topic="out", partition=1, from_offset=10, at=T0
    )
    assert log.write(applying).entry.accepted
    owed = log.book.application(decision_id)
    assert owed is not None and owed.applying == (applying,) and owed.applied is None
    applied = Applied(record_id="a2", item="j", decision_id=decision_id, topic="out", partition=1, offset=12, at=T0)
    assert log.write(applied).entry.accepted
    assert log.book.unapplied() == []
    item = log.book.item("j", T0)
    assert item is not None and item.applied == applied
    again = Applied(record_id="a3", item="j", decision_id=decision_id, topic="out", partition=1, offset=13, at=T0)
    assert log.write(again).repeated


def test_applying_for_a_refused_or_unknown_decision_is_refused() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    rejected = log.write(decision("j", r1, "reject")).entry.position
    for decision_id in (rejected, "review-decisions/0/99"):
        record = Applying(
            record_id=f"x{decision_id}", item="j", decision_id=decision_id, topic="o", partition=0, from_offset=0, at=T0
        )
        assert log.write(record).problem == "not_found"


def test_a_reopened_approve_is_still_owed_to_the_applier() -> None:
    log = Log()
    r1 = log.review(flagged("j"), 0)
    log.write(decision("j", r1, "approve"))
    log.write(reopen("j"))
    assert len(log.book.unapplied()) == 1
    item = log.book.item("j", T0)
    assert item is not None and item.state == "open" and item.applied is None


def test_max_score_reads_both_sides_and_flagged_categories() -> None:
    assert max_score(flagged("j", score=0.75, side="input")) == 0.75
    assert max_score(flagged("j", score=0.4, with_completion=False)) == 0.4
    assert max_score(api_error("j")) is None


@pytest.fixture
def queue() -> ReviewBook:
    """Five items of different reasons, sides, scores, models, tenants and ages; one decided, one escalated."""
    log = Log()
    log.review(flagged("old-violent", score=0.95, metadata={"tenant": "acme"}), 0, at=T0)
    log.review(flagged("mid-hate", score=0.6, category="hate", side="input", model="gpt-4o"), 1, at=T0 + MINUTE)
    log.review(api_error("failed"), 2, at=T0 + 2 * MINUTE)
    decided = log.review(flagged("decided", score=0.3), 3, at=T0 + 3 * MINUTE)
    escalated = log.review(flagged("escalated", score=0.8, metadata={"tenant": "acme"}), 4, at=T0 + 4 * MINUTE)
    log.write(decision("decided", decided, "reject"))
    log.write(decision("escalated", escalated, "escalate"))
    return log.book


NOW = T0 + 10 * MINUTE


def keys(book: ReviewBook, **where: object) -> list[str]:
    return [item.key for item in book.items(ItemFilter(**where), NOW)]  # type: ignore[arg-type]


def test_filters_by_state_reason_side_and_category(queue: ReviewBook) -> None:
    assert keys(queue) == ["old-violent", "mid-hate", "failed"]
    assert keys(queue, state=None) == ["old-violent", "mid-hate", "failed", "decided", "escalated"]
    assert keys(queue, state="escalated") == ["escalated"]
    assert keys(queue, reason="api_error") == ["failed"]
    assert keys(queue, side="input") == ["mid-hate"]
    assert keys(queue, category="violence") == ["old-violent"]
    assert keys(queue, category="violence", side="input") == []


def test_filters_by_score_model_metadata_and_age(queue: ReviewBook) -> None:
    assert keys(queue, score_min=0.7) == ["old-violent"]
    assert keys(queue, score_max=0.7) == ["mid-hate"]  # no score: outside every score range
    assert keys(queue, model="gpt-4o") == ["mid-hate"]
    assert keys(queue, state=None, metadata=(("tenant", "acme"),)) == ["old-violent", "escalated"]
    assert keys(queue, min_age_s=9 * 60) == ["old-violent", "mid-hate"]
    assert keys(queue, max_age_s=8.5 * 60) == ["failed"]


def test_sorts_oldest_newest_and_by_score_and_pages(queue: ReviewBook) -> None:
    assert keys(queue, sort="newest") == ["failed", "mid-hate", "old-violent"]
    assert keys(queue, sort="score") == ["old-violent", "mid-hate", "failed"]
    assert [i.key for i in queue.items(ItemFilter(), NOW, limit=1, offset=1)] == ["mid-hate"]
    assert queue.count(ItemFilter(score_min=0.5), NOW) == 2


def test_counts_by_reason_and_state_with_the_oldest_undecided(queue: ReviewBook) -> None:
    counts = queue.counts()
    assert counts.open_by_reason == {"flagged": 2, "api_error": 1}
    assert (counts.escalated, counts.decided, counts.oldest_undecided_at) == (1, 1, T0)
    stats = queue.queue_stats()
    assert stats.items == {
        ("flagged", "open"): 2,
        ("api_error", "open"): 1,
        ("flagged", "decided"): 1,
        ("flagged", "escalated"): 1,
    }
    assert stats.oldest_undecided_at == {"flagged": T0, "api_error": T0 + 2 * MINUTE}
