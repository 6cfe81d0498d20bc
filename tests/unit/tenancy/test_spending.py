"""The processor with tenancy: the budget check before a call (``budget_exceeded``, no call made), the cost of
every outcome on its record, and the tokens and cost counted by model and bounded tenant label."""

from __future__ import annotations

import logging

import msgspec
import pytest

from pipeline.metrics import Metrics
from pipeline.outcomes import Failed, Outcome, Spend
from pipeline.routing import NO_THRESHOLDS, ToOutput, ToReview
from pipeline.tenancy.budgets import Budgets, SpendBook
from pipeline.tenancy.pricing import default_prices
from pipeline.tenancy.spending import TenantSpending
from pipeline.tenancy.tenants import TenantLabels, tenant_of
from pipeline.worker.processor import Processor
from schemas.chat import UserMessage
from schemas.topics import ApiFailure, BudgetExceeded, Job, Source
from tests.unit.worker.fakes import clean_completion

NOW_S = 1_796_212_800.0  # 2026-12-02T12:00:00Z
SOURCE = Source(topic="prompts", partition=0, offset=7)
#: gpt-4o-mini: 1M prompt tokens cost $0.15, 1M completion tokens $0.60.
SPENT = Spend(model="gpt-4o-mini-2024-07-18", prompt_tokens=1_000_000, completion_tokens=1_000_000, paid_attempts=1)


def job(job_id: str, tenant: str | None) -> Job:
    metadata = None if tenant is None else {"tenant": tenant}
    return Job(id=job_id, messages=[UserMessage(content="hi")], metadata=metadata)


class Client:
    """Answers every job with ``outcome``; counts the calls."""

    provider_available = True
    takes_new_jobs = True

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.calls: list[str] = []

    async def complete(self, job: Job) -> Outcome:
        self.calls.append(job.id)
        return self.outcome

    async def aclose(self) -> None:
        pass


def spending(budgets: Budgets | None = None, metrics: Metrics | None = None, **kw: object) -> TenantSpending:
    return TenantSpending(
        default_prices(),
        budgets=budgets or Budgets(),
        book=SpendBook("w1"),
        metrics=metrics,
        wall_clock=lambda: NOW_S,
        **kw,  # type: ignore[arg-type]
    )


async def process(processor: Processor, job: Job) -> ToOutput | ToReview:
    return await processor.process(msgspec.json.encode(job), SOURCE)


async def test_a_clean_result_carries_the_cost_of_every_paid_attempt() -> None:
    outcome = msgspec.structs.replace(clean_completion(), spent=SPENT)
    processor = Processor(Client(outcome), NO_THRESHOLDS, max_job_bytes=1 << 20, spending=spending())
    routed = await process(processor, job("j1", "acme"))
    assert isinstance(routed, ToOutput)
    assert routed.result.cost_usd == pytest.approx(0.75)


async def test_a_failed_call_that_was_paid_carries_its_cost_on_the_review() -> None:
    outcome = Failed(failure="decode", message="bad body", attempts=1, latency_ms=1.0, spent=SPENT)
    processor = Processor(Client(outcome), NO_THRESHOLDS, max_job_bytes=1 << 20, spending=spending())
    routed = await process(processor, job("j1", "acme"))
    assert isinstance(routed, ToReview) and isinstance(routed.review.reason, ApiFailure)
    assert routed.review.cost_usd == pytest.approx(0.75)


async def test_nothing_paid_or_an_unknown_model_leaves_the_cost_null_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    unpaid = Processor(Client(clean_completion()), NO_THRESHOLDS, max_job_bytes=1 << 20, spending=spending())
    routed = await process(unpaid, job("j0", "acme"))
    assert isinstance(routed, ToOutput) and routed.result.cost_usd is None
    unknown = msgspec.structs.replace(clean_completion(), spent=msgspec.structs.replace(SPENT, model="gpt-99"))
    processor = Processor(Client(unknown), NO_THRESHOLDS, max_job_bytes=1 << 20, spending=spending(metrics=metrics))
    with caplog.at_level(logging.WARNING, logger="pipeline.tenancy"):
        for n in range(3):
            routed = await process(processor, job(f"j{n}", "acme"))
            assert isinstance(routed, ToOutput) and routed.result.cost_usd is None
    assert [r.detail for r in caplog.records] == ["gpt-99"]  # type: ignore[attr-defined]
    assert metrics.registry.get_sample_value("pipeline_cost_unpriced_total") == 3


async def test_a_tenant_over_its_budget_goes_to_review_uncalled_and_the_others_are_called() -> None:
    outcome = msgspec.structs.replace(clean_completion(), spent=SPENT)
    client = Client(outcome)
    tenancy = spending(Budgets(daily={"acme": 1.0}))
    processor = Processor(client, NO_THRESHOLDS, max_job_bytes=1 << 20, spending=tenancy)
    first, second = await process(processor, job("a1", "acme")), await process(processor, job("a2", "acme"))
    assert isinstance(first, ToOutput) and isinstance(second, ToOutput)  # 0.75, then 1.50: crossed
    held = await process(processor, job("a3", "acme"))
    assert isinstance(held, ToReview)
    assert held.review.reason == BudgetExceeded(tenant="acme", spent_usd=1.5, budget_usd=1.0, period="day")
    assert held.review.job == job("a3", "acme") and held.review.attempts == 0, "replay can send it again"
    assert held.review.cost_usd is None
    other = await process(processor, job("g1", "globex"))
    assert isinstance(other, ToOutput)
    assert client.calls == ["a1", "a2", "g1"]


async def test_tokens_and_cost_are_counted_by_model_and_tenant() -> None:
    metrics = Metrics()
    details = msgspec.structs.replace(SPENT, cached_tokens=400_000)
    outcome = msgspec.structs.replace(clean_completion(), spent=details)
    processor = Processor(Client(outcome), NO_THRESHOLDS, max_job_bytes=1 << 20, spending=spending(metrics=metrics))
    await process(processor, job("a1", "acme"))
    await process(processor, job("n1", None))
    sample = metrics.registry.get_sample_value
    cost = 0.6 * 0.15 + 0.4 * 0.075 + 0.60
    assert sample("pipeline_cost_usd_total", {"model": SPENT.model, "tenant": "acme"}) == pytest.approx(cost)
    assert sample("pipeline_cost_usd_total", {"model": SPENT.model, "tenant": "none"}) == pytest.approx(cost)
    assert sample("pipeline_tenant_tokens_total", {"tenant": "acme", "kind": "prompt"}) == 1_000_000
    assert sample("pipeline_tenant_tokens_total", {"tenant": "acme", "kind": "cached"}) == 400_000
    assert sample("pipeline_tenant_tokens_total", {"tenant": "acme", "kind": "completion"}) == 1_000_000


async def test_the_tenant_field_is_a_setting() -> None:
    client = Client(msgspec.structs.replace(clean_completion(), spent=SPENT))
    tenancy = spending(Budgets(daily={"acme": 0.0}), tenant_field="customer")
    processor = Processor(client, NO_THRESHOLDS, max_job_bytes=1 << 20, spending=tenancy)
    customer = Job(id="c1", messages=[UserMessage(content="hi")], metadata={"customer": "acme"})
    routed = await process(processor, customer)
    assert isinstance(routed, ToReview) and isinstance(routed.review.reason, BudgetExceeded)
    assert tenant_of({"tenant": "acme"}, "customer") == ""


def test_tenant_labels_are_bounded() -> None:
    labels = TenantLabels(max_tenants=2)
    assert [labels.label(t) for t in ("a", "b", "c", "a", "", "d")] == ["a", "b", "other", "a", "none", "other"]
    assert TenantLabels(5).label("none") == "other", "a tenant named like the no-tenant label is not merged with it"
