"""Two tenants, two workers of one group: one budget held across both workers (the spend of both counts against
it), and the call slots shared fairly between a flood and a small tenant.

Every call costs the same (a price file that charges prompt tokens only, and every job has the same prompt),
so the test counts in calls. Each worker has one call slot and the simulator answers in a fixed time, so the
stated bound (:func:`~pipeline.tenancy.budgets.overshoot_bound`) is a small number of calls: a budget held
per process instead would let the two workers spend about twice the budget, beyond that bound.
"""

from __future__ import annotations

import asyncio
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
    Collected,
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


FLOOD_PER_PARTITION, SMALL_JOBS, SLOTS = 300, 12, 8


async def test_two_workers_share_their_slots_fairly_between_a_flood_and_a_small_tenant(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    """Tenant acme floods partitions 0, 1 and 2, tenant globex publishes a few jobs on partition 3 once the workers are
    busy. Whichever worker owns partition 3 also owns a flooded one; with its slots shared between the
    partitions that have work, globex's jobs take a couple of call rounds, not acme's backlog. Counted in
    results, not seconds: while globex's jobs run, that worker finishes about as many acme jobs as globex
    ones, a small part of what acme still has waiting."""
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=4)
    sim = await make_simulator(latency=parse_latency("fixed:100"))
    settings = worker_settings(topics, concurrency=SLOTS)
    config = client_config(sim.base_url, concurrency=SLOTS)
    async with running_worker(kafka, settings, config) as first, running_worker(kafka, settings, config) as second:
        await wait_until(lambda: len(first.worker.assignment) == 2 and len(second.worker.assignment) == 2, 30)
        for partition in (0, 1, 2):
            flood = [
                job(f"acme-{partition}-{i}", PROMPT, metadata={"tenant": "acme"}) for i in range(FLOOD_PER_PARTITION)
            ]
            await publish(kafka, topics.input, flood, partition=partition)
        await collect(kafka, topics, 4 * SLOTS, timeout=30)  # both workers are busy with the flood
        small = [job(f"globex-{i}", PROMPT, metadata={"tenant": "globex"}) for i in range(SMALL_JOBS)]
        await publish(kafka, topics.input, small, partition=3)
        collected = await _until_done(kafka, topics, "globex-", SMALL_JOBS)

        owner = first if any(tp.partition == 3 for tp in first.worker.assignment) else second
        neighbour = next(tp.partition for tp in owner.worker.assignment if tp.partition != 3)
    records = sorted(collected.outputs, key=lambda r: (r.timestamp, r.offset))
    ids = [(r.key or b"").decode() for r in records]
    first_small = next(i for i, key in enumerate(ids) if key.startswith("globex-"))
    last_small = max(i for i, key in enumerate(ids) if key.startswith("globex-"))
    done_before = sum(1 for key in ids[:first_small] if key.startswith(f"acme-{neighbour}-"))
    beside = sum(1 for key in ids[first_small : last_small + 1] if key.startswith(f"acme-{neighbour}-"))
    waiting = FLOOD_PER_PARTITION - done_before
    print(f"acme-{neighbour}: {done_before} done before globex started, {beside} beside globex's {SMALL_JOBS}")
    assert beside <= 3 * SMALL_JOBS < waiting / 2, "globex waited behind the flood of its worker's other partition"


async def _until_done(kafka: KafkaSettings, topics: Topics, prefix: str, count: int) -> Collected:
    """Output and review read from the start until ``count`` results whose key starts with ``prefix`` are in."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        collected = await collect(kafka, topics, 10**9, timeout=1.0)  # everything there is, read for a second
        done = sum(1 for r in collected.outputs if (r.key or b"").decode().startswith(prefix))
        if done >= count or asyncio.get_running_loop().time() > deadline:
            assert done >= count, f"only {done} of {count} {prefix} jobs done"
            return collected
