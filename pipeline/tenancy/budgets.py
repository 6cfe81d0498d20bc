"""Budget accounting, pure (no I/O, no clock of its own): what each tenant spent per UTC day and month, and
whether a tenant is over its budget.

Budgets come from the configuration as USD per tenant: ``PIPELINE_BUDGETS="acme=5,globex=20"`` per UTC day,
``PIPELINE_BUDGETS_MONTHLY`` per UTC month; the tenant ``*`` is the budget of every tenant without one of its
own (jobs that name no tenant included). A tenant with no budget (and no ``*``) is never held.

Every worker keeps one :class:`SpendBook`. Its own spend goes in when a call returns (:meth:`SpendBook.charge`,
which also queues the increment for publishing); the other workers' spend comes in from the spend topic
(:meth:`SpendBook.apply`, skipping the worker's own records, already counted). Spend is bucketed by the UTC
day of its timestamp, so a day's budget starts afresh at midnight UTC, and the book forgets days before the
current month.

How far a tenant can overshoot (``budget_exceeded`` is decided before each call, from what this worker
knows): a call is admitted while the known spend is under the budget, so the spend can reach the budget
plus the cost of

- the calls already admitted when the true spend crossed the budget (in flight anywhere in the group: at
  most the sum of the workers' ``PIPELINE_CONCURRENCY``), and
- the calls other workers admit before they see the crossing: a worker's increments go out at least every
  :data:`PUBLISH_INTERVAL_S` and the others read them within one fetch wait (``FOLLOW_WAIT_MS``).

:func:`overshoot_bound` states that bound as a number.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Final, Literal

from schemas.topics import BudgetExceeded

Period = Literal["day", "month"]
#: The budget of every tenant without one of its own.
ANY_TENANT: Final = "*"
#: How often a worker publishes its spend increments (at most this much of its spend is unseen by others).
PUBLISH_INTERVAL_S: Final = 1.0
_MS_PER_DAY: Final = 86_400_000


def utc_day(at_ms: int) -> datetime.date:
    return datetime.datetime.fromtimestamp(at_ms / 1000, tz=datetime.UTC).date()


def period_start_ms(at_ms: int, period: Period) -> int:
    """Epoch ms of the start of the UTC day or month holding ``at_ms``."""
    day = utc_day(at_ms)
    if period == "month":
        day = day.replace(day=1)
    start = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return int(start.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Budgets:
    """USD per tenant per UTC day and per UTC month; see the module docstring."""

    daily: dict[str, float] = field(default_factory=dict)
    monthly: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.daily or self.monthly)

    def limit(self, tenant: str, period: Period) -> float | None:
        table = self.daily if period == "day" else self.monthly
        return table.get(tenant, table.get(ANY_TENANT))

    @property
    def earliest_period(self) -> Period:
        """The longest period a budget is kept for: how far back spend must be read."""
        return "month" if self.monthly else "day"


@dataclass(frozen=True, slots=True)
class SpendIncrement:
    """Spend of one tenant that one worker has not yet published."""

    tenant: str
    usd: float


class SpendBook:
    """Spend per tenant per UTC day (this month's days only), and the increments this worker has not yet
    published. ``worker_id`` names this worker's own records on the spend topic."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self._days: defaultdict[str, dict[datetime.date, float]] = defaultdict(dict)
        self._unpublished: defaultdict[str, float] = defaultdict(float)
        self._month_start_ms = 0

    def charge(self, tenant: str, usd: float, at_ms: int) -> None:
        """This worker's call for ``tenant`` cost ``usd``: counted now, and queued for publishing."""
        if usd <= 0:
            return
        self._add(tenant, usd, at_ms)
        self._unpublished[tenant] += usd

    def apply(self, tenant: str, usd: float, at_ms: int, worker_id: str) -> None:
        """A record of the spend topic; this worker's own are skipped (counted when charged)."""
        if worker_id != self.worker_id and usd > 0:
            self._add(tenant, usd, at_ms)

    def take_unpublished(self) -> list[SpendIncrement]:
        """The increments to publish now (the caller gives back those it could not publish)."""
        taken = [SpendIncrement(tenant, usd) for tenant, usd in self._unpublished.items()]
        self._unpublished.clear()
        return taken

    def give_back(self, increments: list[SpendIncrement]) -> None:
        """Increments that could not be published: they go out with the next ones (not counted again)."""
        for increment in increments:
            self._unpublished[increment.tenant] += increment.usd

    def spent(self, tenant: str, period: Period, now_ms: int) -> float:
        days = self._days.get(tenant)
        if not days:
            return 0.0
        today = utc_day(now_ms)
        if period == "day":
            return days.get(today, 0.0)
        return sum(usd for day, usd in days.items() if (day.year, day.month) == (today.year, today.month))

    def forget_before(self, now_ms: int) -> None:
        """Drop the days before the current UTC month (no budget looks at them again)."""
        month_start = period_start_ms(now_ms, "month")
        if month_start == self._month_start_ms:
            return
        self._month_start_ms = month_start
        first = utc_day(month_start)
        for tenant in list(self._days):
            days = {day: usd for day, usd in self._days[tenant].items() if day >= first}
            if days:
                self._days[tenant] = days
            else:
                del self._days[tenant]

    def _add(self, tenant: str, usd: float, at_ms: int) -> None:
        days = self._days[tenant]
        day = utc_day(at_ms)
        days[day] = days.get(day, 0.0) + usd


def over_budget(book: SpendBook, budgets: Budgets, tenant: str, now_ms: int) -> BudgetExceeded | None:
    """The ``budget_exceeded`` reason when ``tenant`` has spent its day's (else its month's) budget."""
    for period in ("day", "month"):
        budget = budgets.limit(tenant, period)
        if budget is None:
            continue
        spent = book.spent(tenant, period, now_ms)
        if spent >= budget:
            return BudgetExceeded(tenant=tenant, spent_usd=round(spent, 6), budget_usd=budget, period=period)
    return None


def overshoot_bound(
    *, calls_in_flight: int, calls_started_per_s: float, max_call_usd: float, follow_wait_s: float
) -> float:
    """The most a tenant's spend can pass its budget by, in USD: every call admitted after the tenant's true
    spend crossed the budget was either already in flight then (``calls_in_flight``, at most the sum of the
    workers' ``PIPELINE_CONCURRENCY``) or admitted by a worker that had not yet seen the crossing, which takes
    at most a publish interval plus one fetch wait (at the tenant's group-wide ``calls_started_per_s``); each
    costs at most ``max_call_usd``."""
    unseen_window_s = PUBLISH_INTERVAL_S + follow_wait_s
    return max_call_usd * (calls_in_flight + calls_started_per_s * unseen_window_s)
