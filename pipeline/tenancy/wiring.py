"""A worker's tenancy parts, built from its settings: the prices, the budgets, the spend book and, when any
budget is set, the sync of the book with the spend topic (no budget: nothing to follow, spend is only priced).
"""

from __future__ import annotations

import uuid

from pipeline.config import WorkerSettings
from pipeline.kafka import KafkaSettings
from pipeline.metrics import Metrics
from pipeline.tenancy.budgets import Budgets, SpendBook
from pipeline.tenancy.pricing import load_prices
from pipeline.tenancy.spend_topic import AiokafkaSpendFeed, SpendSync
from pipeline.tenancy.spending import TenantSpending


def worker_spending(
    settings: WorkerSettings, kafka: KafkaSettings, metrics: Metrics
) -> tuple[TenantSpending, SpendSync | None]:
    budgets = Budgets(daily=dict(settings.budgets), monthly=dict(settings.budgets_monthly))
    # A fresh id per process: a restarted worker reads its own earlier records back as anyone else's.
    book = SpendBook(worker_id=uuid.uuid4().hex)
    sync = None
    if budgets:
        feed = AiokafkaSpendFeed(kafka, settings.spend_topic, budgets.earliest_period)
        sync = SpendSync(book, feed)
    spending = TenantSpending(
        load_prices(settings.prices_file),
        budgets=budgets,
        book=book,
        metrics=metrics,
        tenant_field=settings.tenant_field,
        max_tenant_labels=settings.tenant_labels_max,
        caught_up=None if sync is None else sync.wait_caught_up,
    )
    return spending, sync
