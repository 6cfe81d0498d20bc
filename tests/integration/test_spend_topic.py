"""The spend topic on a real broker: what one worker publishes, a worker started later reads back from the
start of the day, bucketed by the records' own timestamps (yesterday's spend does not count today)."""

from __future__ import annotations

import asyncio
import time

from pipeline.kafka import KafkaSettings, ensure_topics
from pipeline.tenancy.budgets import SpendBook
from pipeline.tenancy.spend_topic import AiokafkaSpendFeed, SpendRecord, SpendSync
from tests.fixtures.broker import Broker

DAY_MS = 86_400_000


async def test_a_later_worker_reads_the_days_spend_of_the_others(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topic = f"{topic_prefix}-spend"
    await ensure_topics(kafka, [topic], 1)
    now_ms = int(time.time() * 1000)
    writer = AiokafkaSpendFeed(kafka, topic, "day")
    try:
        await writer.publish([SpendRecord(tenant="acme", usd=7.0, worker="old")], now_ms - 2 * DAY_MS)
        await writer.publish([SpendRecord(tenant="acme", usd=2.5, worker="w1")], now_ms)
        await writer.publish([SpendRecord(tenant="globex", usd=1.0, worker="w1")], now_ms)
    finally:
        await writer.close()

    book = SpendBook("w2")
    sync = SpendSync(book, AiokafkaSpendFeed(kafka, topic, "day"))
    sync.start()
    try:
        await asyncio.wait_for(sync.caught_up.wait(), 20)
    finally:
        await sync.stop()
    assert book.spent("acme", "day", now_ms) == 2.5
    assert book.spent("globex", "day", now_ms) == 1.0
