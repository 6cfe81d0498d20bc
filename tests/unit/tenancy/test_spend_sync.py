"""The spend topic's sync on an in-memory feed: increments go out on the interval (and back in line when a
publish fails), the other workers' records count, the worker's own do not count twice, the first read to the
end is awaited once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

import msgspec

from pipeline.tenancy.budgets import SpendBook
from pipeline.tenancy.spend_topic import ReadRecord, SpendRecord, SpendSync

NOW_MS = 1_796_212_800_000


class MemoryFeed:
    def __init__(self) -> None:
        self.unread: list[ReadRecord] = []
        self.published: list[SpendRecord] = []
        self.fail_publishes = 0
        self.closed = False

    async def read(self, timeout_ms: int) -> tuple[list[ReadRecord], bool]:
        records, self.unread = self.unread, []
        await asyncio.sleep(0.001)
        return records, True

    async def publish(self, records: list[SpendRecord], at_ms: int) -> None:
        if self.fail_publishes:
            self.fail_publishes -= 1
            raise ConnectionError("broker away")
        self.published.extend(records)
        self.unread.extend((msgspec.json.encode(r), at_ms) for r in records)  # read back, like a topic

    async def close(self) -> None:
        self.closed = True


async def until(condition: Callable[[], object], timeout_s: float = 2.0) -> None:
    """Poll ``condition`` (the sync's tasks run in between) until it holds."""
    async with asyncio.timeout(timeout_s):
        for _ in itertools.count():
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_increments_are_published_on_the_interval_and_read_back_without_counting_twice() -> None:
    book, feed = SpendBook("w1"), MemoryFeed()
    sync = SpendSync(book, feed, publish_interval_s=0.02)
    sync.start()
    try:
        book.charge("acme", 1.25, NOW_MS)
        book.charge("acme", 0.75, NOW_MS)
        await until(lambda: feed.published)
        assert feed.published == [SpendRecord(tenant="acme", usd=2.0, worker="w1")]
        await until(lambda: not feed.unread)
        await asyncio.sleep(0.01)
        assert book.spent("acme", "day", NOW_MS) == 2.0
    finally:
        await sync.stop()
    assert feed.closed


async def test_the_other_workers_spend_counts() -> None:
    book, feed = SpendBook("w1"), MemoryFeed()
    feed.unread = [(msgspec.json.encode(SpendRecord(tenant="acme", usd=3.0, worker="w2")), NOW_MS), (b"{oops", NOW_MS)]
    sync = SpendSync(book, feed, publish_interval_s=0.02)
    sync.start()
    try:
        await sync.wait_caught_up()
        assert book.spent("acme", "day", NOW_MS) == 3.0
    finally:
        await sync.stop()


async def test_a_failed_publish_keeps_the_increments_for_the_next_one() -> None:
    book, feed = SpendBook("w1"), MemoryFeed()
    feed.fail_publishes = 1
    sync = SpendSync(book, feed, publish_interval_s=0.01)
    book.charge("acme", 1.0, NOW_MS)
    with contextlib.suppress(ConnectionError):
        await sync.publish_now()
    book.charge("acme", 0.5, NOW_MS)
    await sync.publish_now()
    assert feed.published == [SpendRecord(tenant="acme", usd=1.5, worker="w1")]


async def test_stop_publishes_what_is_left() -> None:
    book, feed = SpendBook("w1"), MemoryFeed()
    sync = SpendSync(book, feed, publish_interval_s=60)
    sync.start()
    book.charge("globex", 0.1, NOW_MS)
    await sync.stop()
    assert feed.published == [SpendRecord(tenant="globex", usd=0.1, worker="w1")]
