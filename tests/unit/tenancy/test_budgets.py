"""Budget accounting without I/O: days and months in UTC, the group's spend, and the overshoot bound."""

from __future__ import annotations

import datetime

import pytest

from pipeline.tenancy.budgets import (
    PUBLISH_INTERVAL_S,
    Budgets,
    SpendBook,
    SpendIncrement,
    over_budget,
    overshoot_bound,
    period_start_ms,
)
from schemas.topics import BudgetExceeded


def ms(text: str) -> int:
    """Epoch ms of an ISO time in UTC."""
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC).timestamp() * 1000)


NOON = ms("2026-12-02T12:00:00")


def test_under_its_budget_a_tenant_is_not_held() -> None:
    book = SpendBook("w1")
    book.charge("acme", 4.99, NOON)
    assert over_budget(book, Budgets(daily={"acme": 5.0}), "acme", NOON) is None


def test_a_tenant_that_spent_its_day_is_held_with_what_it_spent() -> None:
    book = SpendBook("w1")
    book.charge("acme", 3.0, NOON)
    book.charge("acme", 2.5, NOON + 1000)
    assert over_budget(book, Budgets(daily={"acme": 5.0}), "acme", NOON + 2000) == BudgetExceeded(
        tenant="acme", spent_usd=5.5, budget_usd=5.0, period="day"
    )


def test_the_day_rolls_over_at_midnight_utc() -> None:
    book = SpendBook("w1")
    budgets = Budgets(daily={"acme": 5.0})
    book.charge("acme", 6.0, ms("2026-12-02T23:59:59"))
    assert over_budget(book, budgets, "acme", ms("2026-12-02T23:59:59.999")) is not None
    assert over_budget(book, budgets, "acme", ms("2026-12-03T00:00:00")) is None


def test_the_month_adds_up_its_days_and_rolls_over_on_the_first() -> None:
    book = SpendBook("w1")
    budgets = Budgets(daily={"acme": 5.0}, monthly={"acme": 12.0})
    for day in (1, 2, 3):
        book.charge("acme", 4.0, ms(f"2026-12-0{day}T10:00:00"))
    reason = over_budget(book, budgets, "acme", ms("2026-12-04T10:00:00"))
    assert reason == BudgetExceeded(tenant="acme", spent_usd=12.0, budget_usd=12.0, period="month")
    assert book.spent("acme", "month", ms("2026-12-31T23:00:00")) == 12.0
    assert over_budget(book, budgets, "acme", ms("2027-01-01T00:00:00")) is None


def test_the_day_is_checked_before_the_month() -> None:
    book = SpendBook("w1")
    book.charge("acme", 50.0, NOON)
    reason = over_budget(book, Budgets(daily={"acme": 5.0}, monthly={"acme": 10.0}), "acme", NOON)
    assert reason is not None and reason.period == "day"


def test_the_star_budget_covers_tenants_without_their_own_and_jobs_without_a_tenant() -> None:
    budgets = Budgets(daily={"*": 1.0, "acme": 100.0})
    book = SpendBook("w1")
    for tenant in ("globex", "", "acme"):
        book.charge(tenant, 2.0, NOON)
    assert over_budget(book, budgets, "globex", NOON) is not None
    assert over_budget(book, budgets, "", NOON) is not None
    assert over_budget(book, budgets, "acme", NOON) is None


def test_a_tenant_without_a_budget_is_never_held() -> None:
    book = SpendBook("w1")
    book.charge("initech", 1e6, NOON)
    assert over_budget(book, Budgets(daily={"acme": 1.0}), "initech", NOON) is None
    assert not Budgets()


def test_spend_of_other_workers_counts_and_the_workers_own_records_are_not_counted_twice() -> None:
    book = SpendBook("w1")
    budgets = Budgets(daily={"acme": 5.0})
    book.charge("acme", 2.0, NOON)
    book.apply("acme", 2.0, NOON, worker_id="w1")  # its own record read back: already counted
    assert book.spent("acme", "day", NOON) == 2.0
    book.apply("acme", 3.0, NOON, worker_id="w2")
    assert over_budget(book, budgets, "acme", NOON) is not None


def test_unpublished_increments_are_summed_per_tenant_and_given_back_on_failure() -> None:
    book = SpendBook("w1")
    book.charge("acme", 1.0, NOON)
    book.charge("acme", 0.5, NOON)
    book.charge("globex", 2.0, NOON)
    taken = book.take_unpublished()
    assert sorted(taken, key=lambda i: i.tenant) == [SpendIncrement("acme", 1.5), SpendIncrement("globex", 2.0)]
    assert book.take_unpublished() == []
    book.give_back(taken)
    book.charge("acme", 1.0, NOON)
    assert {i.tenant: i.usd for i in book.take_unpublished()} == {"acme": 2.5, "globex": 2.0}
    assert book.spent("acme", "day", NOON) == 2.5  # giving back does not count twice


def test_a_record_is_bucketed_by_its_own_timestamp() -> None:
    book = SpendBook("w1")
    book.apply("acme", 9.0, ms("2026-12-01T23:00:00"), worker_id="w2")  # yesterday's
    assert book.spent("acme", "day", NOON) == 0.0
    assert book.spent("acme", "month", NOON) == 9.0


def test_days_before_the_month_are_forgotten() -> None:
    book = SpendBook("w1")
    book.charge("acme", 1.0, ms("2026-11-30T12:00:00"))
    book.charge("acme", 2.0, NOON)
    book.forget_before(NOON)
    assert book.spent("acme", "month", ms("2026-11-30T13:00:00")) == 0.0
    assert book.spent("acme", "day", NOON) == 2.0


def test_period_starts_are_utc_midnights() -> None:
    assert period_start_ms(NOON, "day") == ms("2026-12-02T00:00:00")
    assert period_start_ms(NOON, "month") == ms("2026-12-01T00:00:00")


def test_concurrent_calls_admitted_under_the_budget_overshoot_it_by_at_most_their_cost() -> None:
    """Calls are admitted one by one while the known spend is under the budget; those admitted before any
    returned all complete. The overshoot is at most what was in flight when the budget was crossed."""
    budgets = Budgets(daily={"acme": 1.0})
    book = SpendBook("w1")
    call_usd, in_flight_limit = 0.3, 4
    admitted = held = 0
    in_flight: list[float] = []
    for _ in range(20):
        if over_budget(book, budgets, "acme", NOON) is not None:
            held += 1
            continue
        admitted += 1
        in_flight.append(call_usd)
        if len(in_flight) == in_flight_limit:  # the oldest call returns before another is admitted
            book.charge("acme", in_flight.pop(0), NOON)
    for cost in in_flight:
        book.charge("acme", cost, NOON)
    spent = book.spent("acme", "day", NOON)
    bound = overshoot_bound(
        calls_in_flight=in_flight_limit, calls_started_per_s=0, max_call_usd=call_usd, follow_wait_s=0
    )
    assert spent > 1.0 and held > 0
    assert spent - 1.0 <= bound


def test_the_bound_counts_what_other_workers_admit_before_they_see_the_crossing() -> None:
    bound = overshoot_bound(calls_in_flight=8, calls_started_per_s=10, max_call_usd=0.01, follow_wait_s=0.2)
    assert bound == pytest.approx(0.01 * (8 + 10 * (PUBLISH_INTERVAL_S + 0.2)))
