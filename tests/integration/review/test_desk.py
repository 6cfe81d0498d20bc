"""The Kafka desk against a real broker: consoles agree through the decisions log, and state is rebuilt from it."""

from __future__ import annotations

import asyncio

from pipeline.kafka import KafkaSettings
from pipeline.review.desk import Item, ItemFilter, Reviewer
from tests.fixtures.broker import Broker
from tests.integration.review.support import (
    ReviewTopics,
    create_topics,
    publish_reviews,
    read_topic,
    running_desk,
)
from tests.unit.review.decision_builders import api_error, flagged, invalid

ANA = Reviewer("ana")
BO = Reviewer("bo")
ROOT = Reviewer("root", admin=True)
EVERYTHING = ItemFilter(state=None)


def view(item: Item | None) -> tuple[object, ...]:
    """What two desks must agree on about an item."""
    assert item is not None
    decision = item.decision.record_id if item.decision is not None else None
    claim = item.claim.record_id if item.claim is not None else None
    history = tuple((h.record.record_id, h.position, h.accepted, h.refused_because) for h in item.history)
    return (item.key, item.ref, item.state, decision, claim, history)


async def test_two_consoles_racing_opposite_decisions_agree_on_the_winner(
    kafka_broker: Broker, topic_prefix: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    keys = [f"race-{i}" for i in range(5)]
    await publish_reviews(kafka, topics.review, [flagged(key) for key in keys])
    async with running_desk(kafka, topics) as one, running_desk(kafka, topics) as two:
        for key in keys:
            approve, reject = await asyncio.gather(one.decide(key, "approve", ANA), two.decide(key, "reject", BO))
            assert sorted([approve.accepted, reject.accepted]) == [False, True]
            loser = reject if approve.accepted else approve
            assert loser.record is not None, "both were written: the log, not a check before writing, refused one"
            assert loser.problem == "conflict"
            assert loser.detail is not None and loser.detail.startswith("already decided")
        for desk in (one, two):
            await desk.follower.wait_until(lambda d=desk: all(len(d.item(k).history) == 2 for k in keys), 10)  # type: ignore[union-attr,misc]
        assert [view(one.item(k)) for k in keys] == [view(two.item(k)) for k in keys]


async def test_a_fresh_desk_rebuilds_the_same_state(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    await publish_reviews(
        kafka, topics.review, [flagged("a"), flagged("b"), api_error("c"), flagged("d"), invalid(7), flagged("e")]
    )
    async with running_desk(kafka, topics) as first:
        assert (await first.claim("a", ANA)).accepted
        assert (await first.decide("b", "reject", BO, reason="policy violation", note="clear case")).accepted
        assert (await first.decide("c", "escalate", ANA)).accepted
        assert (await first.decide("c", "rerun", ROOT)).accepted
        assert (await first.decide("d", "approve", ANA)).accepted
        assert (await first.reopen("d", ROOT)).accepted
        assert (await first.decide("e", "escalate", BO)).accepted
        before = sorted(view(item) for item in first.items(EVERYTHING))
        counts = first.counts()
    async with running_desk(kafka, topics) as again:
        assert sorted(view(item) for item in again.items(EVERYTHING)) == before
        assert again.counts() == counts
    assert len(before) == 6


async def test_a_claim_is_seen_by_the_other_console_and_holds_the_item(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    await publish_reviews(kafka, topics.review, [flagged("j")])
    async with running_desk(kafka, topics) as one, running_desk(kafka, topics) as two:
        claimed = await one.claim("j", ANA)
        assert claimed.accepted and claimed.item is not None and claimed.item.claim is not None
        await two.follower.wait_until(lambda: (item := two.item("j")) is not None and item.claim is not None, 10)
        item = two.item("j")
        assert item is not None and item.claim is not None and item.claim.reviewer == "ana"
        assert (await two.claim("j", BO)).problem == "claimed"
        assert (await two.decide("j", "reject", BO)).problem == "claimed"
        assert (await two.release("j", BO)).problem == "claimed"
        assert (await one.release("j", ANA)).accepted
        await two.follower.wait_until(lambda: (item := two.item("j")) is not None and item.claim is None, 10)
        assert (await two.claim("j", BO)).accepted


async def test_refusals_known_before_writing_write_nothing(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    await publish_reviews(kafka, topics.review, [api_error("failed", with_job=False), flagged("done")])
    async with running_desk(kafka, topics) as desk:
        assert (await desk.decide("nope", "reject", ANA)).problem == "not_found"
        assert (await desk.decide("failed", "approve", ANA)).problem == "no_completion"
        assert (await desk.decide("failed", "rerun", ANA)).problem == "no_job"
        assert (await desk.reopen("failed", ANA)).problem == "forbidden"
        assert (await desk.decide("done", "reject", ANA)).accepted
        again = await desk.decide("done", "reject", BO)
        assert again.accepted and again.repeated and again.record is not None and again.record.reviewer == "ana"
        assert (await desk.decide("done", "approve", BO)).problem == "conflict"
    assert len(await read_topic(kafka, topics.decisions)) == 1


async def test_bulk_decides_the_open_items_a_filter_matches(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    reviews = [flagged(f"acme-{i}", metadata={"tenant": "acme"}) for i in range(6)]
    reviews += [flagged("other", metadata={"tenant": "other"}), flagged("acme-esc", metadata={"tenant": "acme"})]
    await publish_reviews(kafka, topics.review, reviews)
    async with running_desk(kafka, topics) as desk:
        assert (await desk.decide("acme-esc", "escalate", ANA)).accepted
        assert (await desk.decide("acme-0", "approve", ANA)).accepted
        acme = ItemFilter(state=None, metadata=(("tenant", "acme"),))
        assert desk.count(ItemFilter(metadata=(("tenant", "acme"),))) == 5
        outcome = await desk.bulk(acme, "approve", BO, reason="false positive")
        assert outcome.decided == 5
        assert outcome.skipped_because == {"forbidden": 1, "repeated": 1}
        assert desk.count(ItemFilter(state="decided")) == 6
        other = desk.item("other")
        assert other is not None and other.state == "open"
        by_admin = await desk.bulk(ItemFilter(state="escalated"), "reject", ROOT)
        assert by_admin.decided == 1


async def test_changes_announce_new_items_and_decisions(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = ReviewTopics.named(topic_prefix)
    await create_topics(kafka, topics)
    async with running_desk(kafka, topics) as desk:
        changes = desk.changes()
        await publish_reviews(kafka, topics.review, [flagged("new")])
        async with asyncio.timeout(10):
            while desk.item("new") is None:
                await anext(changes)
        seen = desk.follower.version
        assert (await desk.claim("new", ANA)).accepted
        assert await asyncio.wait_for(anext(changes), 10) > seen
