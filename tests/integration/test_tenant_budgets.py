"""Two tenants, two workers of one group, one budget: the spend of both workers counts against it.

Every call costs the same (a price file that charges prompt tokens only, and every job has the same prompt),
so the test counts in calls. Each worker has one call slot and the simulator answers in a fixed time, so the
stated bound (:func:`~pipeline.tenancy.budgets.overshoot_bound`) is a small number of calls: a budget held
per process instead would let the two workers spend about twice the budget, beyond that bound.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipeline.kafka import KafkaSettings, ensure_topics
from pipeline.simulator.latency import parse_latency
from pipeline.tenancy.budgets import overshoot_bound
from pipeline.tenancy.spend_topic import FOLLOW_WAIT_MS
from schemas.topics import BudgetExceeded
from tests.fixtures.broker import Broker
from tests.fixtures.simulator import MakeSimulator
from tests.integration.client_support import client_for
from tests.integration.client_support import job as client_job
from tests.integration.harness import (
    Topics,
    client_config,
    collect,
    create_topics,
    job,
    publish,
    running_worker,
    wait_until,
    worker_settings,
)

PROMPT = "Write a haiku about tea."
LATENCY_S = 0.6
BUDGET_CALLS = 10
ACME_JOBS, GLOBEX_JOBS = 40, 8


async def test_a_budget_holds_across_two_workers_and_spares_the_other_tenant(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    spend_topic = f"{topic_prefix}-spend"
    await create_topics(kafka, topics, partitions=2)
    await ensure_topics(kafka, [spend_topic], 1)
    sim = await make_simulator(latency=parse_latency(f"fixed:{int(LATENCY_S * 1000)}"))

    # One dollar per prompt token, nothing for the rest: every call of PROMPT costs its prompt's token count.
    async with client_for(sim, call_timeout_s=5.0, read_timeout_s=5.0) as probe:
        measured = await probe.complete(client_job(PROMPT, job_id="probe"))
    assert measured.spent is not None
    call_usd = float(measured.spent.prompt_tokens)
    prices = tmp_path / "prices.toml"
    prices.write_text('["gpt-4o-mini"]\ninput = 1000000.0\noutput = 0.0\n')
    calls_before = sim.stats().requests

    settings = worker_settings(
        topics,
        concurrency=1,
        budgets={"acme": BUDGET_CALLS * call_usd},
        spend_topic=spend_topic,
        prices_file=str(prices),
    )
    config = client_config(sim.base_url, concurrency=1)
    async with running_worker(kafka, settings, config) as first, running_worker(kafka, settings, config) as second:
        await wait_until(lambda: len(first.worker.assignment) == 1 and len(second.worker.assignment) == 1, 30)
        # acme and globex interleaved on both partitions, so both workers serve both tenants
        records = []
        for i in range(ACME_JOBS + GLOBEX_JOBS):
            tenant = "globex" if i % 6 == 5 else "acme"
            records.append(job(f"{tenant}-{i}", PROMPT, metadata={"tenant": tenant}))
        assert sum(b"globex" in r for r in records) == GLOBEX_JOBS
        await publish(kafka, topics.input, records)
        collected = await collect(kafka, topics, len(records), timeout=60)

    results = {r.id: r for r in collected.results}
    reviews = {r.id: r for r in collected.review_records}
    assert len(results) + len(reviews) == len(records)
    globex_done = [i for i in results if i and i.startswith("globex")]
    assert len(globex_done) == GLOBEX_JOBS, "the other tenant is not held"
    acme_called = [r for i, r in results.items() if i and i.startswith("acme")]
    held = [r for i, r in reviews.items() if i and i.startswith("acme")]
    assert set(reviews) == {r.id for r in held}
    assert all(isinstance(r.reason, BudgetExceeded) for r in held)
    assert all(r.cost_usd is None and r.attempts == 0 and r.job is not None for r in held)
    assert {r.source.partition for r in acme_called} == {0, 1}, "both workers spent acme's budget"
    assert {r.source.partition for r in held} == {0, 1}, "both workers held acme's jobs"

    # every call made is on a record: the held jobs made none
    assert sim.stats().requests - calls_before == len(results)
    assert all(r.cost_usd == pytest.approx(call_usd) for r in results.values())

    # spent the budget, overshooting it by no more than the stated bound, and far less than two budgets
    calls_in_flight = 2  # one slot per worker
    bound_usd = overshoot_bound(
        calls_in_flight=calls_in_flight,
        calls_started_per_s=calls_in_flight / LATENCY_S,
        max_call_usd=call_usd,
        follow_wait_s=FOLLOW_WAIT_MS / 1000,
    )
    bound_calls = math.floor(bound_usd / call_usd)
    print(f"acme: {len(acme_called)} calls for a budget of {BUDGET_CALLS}, bound {BUDGET_CALLS + bound_calls}")
    assert BUDGET_CALLS <= len(acme_called) <= BUDGET_CALLS + bound_calls < 2 * BUDGET_CALLS
    first_held = held[0].reason
    assert isinstance(first_held, BudgetExceeded) and first_held.tenant == "acme" and first_held.period == "day"
    assert first_held.spent_usd >= first_held.budget_usd == BUDGET_CALLS * call_usd
