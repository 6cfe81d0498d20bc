"""The review console's Prometheus metrics (names are a public contract, like :mod:`pipeline.metrics`).

- ``pipeline_review_decisions_total{decision}``: decisions this console wrote that the log accepted.
- ``pipeline_review_applied_total{decision}``: approve and rerun decisions this process carried out.
- ``pipeline_review_queue_items{reason,state}`` and ``pipeline_review_oldest_undecided_age_seconds{reason}``:
  read from the book when scraped (every console reports the whole queue: aggregate with ``max``).

Collection reads the book without a lock: serve ``exposition()`` from the event loop that folds the logs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from pipeline.review.state import ITEM_STATES, ReviewBook
from schemas.decisions import DECISION_KINDS
from schemas.topics import REASON_KINDS

QUEUE_ITEMS: Final = "pipeline_review_queue_items"
OLDEST_AGE: Final = "pipeline_review_oldest_undecided_age_seconds"


class _QueueCollector:
    """The queue's gauges, computed from the book at scrape time."""

    def __init__(self, book: ReviewBook, clock: Callable[[], int]) -> None:
        self._book = book
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        items, oldest = self._families()
        stats = self._book.queue_stats()
        now = self._clock()
        for reason in sorted({*REASON_KINDS, *(reason for reason, _ in stats.items)}):
            for state in ITEM_STATES:
                items.add_metric([reason, state], stats.items.get((reason, state), 0))
            arrived = stats.oldest_undecided_at.get(reason)
            oldest.add_metric([reason], max(0.0, (now - arrived) / 1000) if arrived is not None else 0.0)
        return [items, oldest]

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(QUEUE_ITEMS, "Review items by reason kind and state", labels=["reason", "state"]),
            GaugeMetricFamily(
                OLDEST_AGE, "Age of the oldest undecided (open or escalated) review item, by reason", labels=["reason"]
            ),
        ]


class ReviewMetrics:
    """Every metric of the review console; its own registry unless one is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "pipeline_review_decisions", "Decisions written by this console and accepted", ["decision"], registry=r
        )
        self.applied = Counter(
            "pipeline_review_applied", "Approve and rerun decisions carried out (published)", ["decision"], registry=r
        )
        for kind in DECISION_KINDS:
            self.decisions.labels(kind)
        for kind in ("approve", "rerun"):
            self.applied.labels(kind)
        self._queue: _QueueCollector | None = None

    def watch(self, book: ReviewBook, clock: Callable[[], int]) -> None:
        """Report this book's queue (the latest book watched, when called again)."""
        if self._queue is not None:
            self.registry.unregister(self._queue)
        self._queue = _QueueCollector(book, clock)
        self.registry.register(self._queue)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
