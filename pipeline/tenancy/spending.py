"""The tenants' spending as the processor meets it: the budget check before a call, the charge after it.

:meth:`TenantSpending.over_budget` is asked before a job is handed to the provider client: a tenant over its
day's or month's budget has the job routed to review as ``budget_exceeded`` (:func:`route_over_budget`), with
no call made. :meth:`TenantSpending.charge` is told every outcome: it prices the tokens the job was billed for
over all its attempts (:class:`~pipeline.outcomes.Spend`), counts them by model and tenant in the metrics,
books the cost against the tenant's budget (and queues it for the spend topic), and returns the cost that
:func:`with_cost` writes on the job's record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from pipeline.metrics import Metrics
from pipeline.outcomes import Outcome
from pipeline.routing import Route, ToOutput, ToReview
from pipeline.tenancy.budgets import Budgets, SpendBook, over_budget
from pipeline.tenancy.pricing import PriceTable
from pipeline.tenancy.tenants import TenantLabels, tenant_of
from schemas.topics import BudgetExceeded, Job, Review, Source

log = logging.getLogger("pipeline.tenancy")


class TenantSpending:
    """Prices, metrics and budgets of one worker; see the module docstring. ``wall_clock`` is epoch seconds."""

    def __init__(
        self,
        prices: PriceTable,
        *,
        budgets: Budgets,
        book: SpendBook,
        metrics: Metrics | None = None,
        tenant_field: str = "tenant",
        max_tenant_labels: int = 100,
        wall_clock: Callable[[], float] = time.time,
        caught_up: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.prices = prices
        self.budgets = budgets
        self.book = book
        self._metrics = metrics
        self._tenant_field = tenant_field
        self._labels = TenantLabels(max_tenant_labels)
        self._wall_clock = wall_clock
        self._unpriced: set[str] = set()
        #: Waits for the group's spend to be read at start (see :mod:`~pipeline.tenancy.spend_topic`).
        self._caught_up = caught_up

    def tenant(self, job: Job) -> str:
        return tenant_of(job.metadata, self._tenant_field)

    async def over_budget(self, job: Job) -> BudgetExceeded | None:
        """The reason to hold ``job`` uncalled, when its tenant has spent a budget; None to call it."""
        tenant = self.tenant(job)
        if self.budgets.limit(tenant, "day") is None and self.budgets.limit(tenant, "month") is None:
            return None
        if self._caught_up is not None:
            await self._caught_up()
        now_ms = self._now_ms()
        self.book.forget_before(now_ms)
        return over_budget(self.book, self.budgets, tenant, now_ms)

    def charge(self, job: Job, outcome: Outcome) -> float | None:
        """Price what ``outcome`` was billed for and book it; the cost in USD, or None when unknown."""
        spent = outcome.spent
        if spent is None:
            return None
        tenant = self.tenant(job)
        cost = self.prices.cost(spent)
        if cost is None and spent.model not in self._unpriced:
            self._unpriced.add(spent.model)
            log.warning(
                "no price for a model: its jobs' cost is unknown (add it to PIPELINE_PRICES_FILE)",
                extra={"detail": spent.model},
            )
        if self._metrics is not None:
            self._count(tenant, spent.model, spent.prompt_tokens, spent.cached_tokens, spent.completion_tokens, cost)
        if cost is not None:
            self.book.charge(tenant, cost, self._now_ms())
        return cost

    def _count(self, tenant: str, model: str, prompt: int, cached: int, completion: int, cost: float | None) -> None:
        assert self._metrics is not None
        label = self._labels.label(tenant)
        tokens = self._metrics.tenant_tokens
        tokens.labels(label, "prompt").inc(prompt)
        tokens.labels(label, "cached").inc(cached)
        tokens.labels(label, "completion").inc(completion)
        if cost is None:
            self._metrics.cost_unpriced.inc()
        else:
            self._metrics.cost_usd.labels(model, label).inc(cost)

    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)


def route_over_budget(job: Job, source: Source, reason: BudgetExceeded) -> ToReview:
    """The review record for a job held because its tenant is over budget (no call was made, so
    ``pipeline replay --reason budget_exceeded`` can send it once the budget allows)."""
    return ToReview(Review(id=job.id, reason=reason, source=source, job=job, metadata=job.metadata, attempts=0))


def with_cost(routed: Route, cost_usd: float | None) -> Route:
    """``routed`` with its record's ``cost_usd`` set."""
    if cost_usd is None:
        return routed
    cost = round(cost_usd, 9)
    if isinstance(routed, ToOutput):
        return ToOutput(msgspec.structs.replace(routed.result, cost_usd=cost))
    return ToReview(msgspec.structs.replace(routed.review, cost_usd=cost))
