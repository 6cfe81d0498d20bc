"""A provider-wide failure is not the jobs' fault: the worker holds them, stops fetching, says it is not ready,
and resumes when the provider answers again; nothing goes to review for it."""

from __future__ import annotations

import pytest

from pipeline.kafka import KafkaSettings
from pipeline.simulator.outage import Outage
from tests.fixtures.broker import Broker
from tests.fixtures.simulator import MakeSimulator
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


@pytest.mark.parametrize("error", ["invalid_api_key", "insufficient_quota"])
async def test_an_expired_key_or_a_billing_lapse_sends_nothing_to_review(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator, error: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=2)
    sim = await make_simulator()
    async with running_worker(kafka, worker_settings(topics, concurrency=8), client_config(sim.base_url)) as running:
        await wait_until(lambda: running.worker.ready, timeout=30)
        sim.app.outage.start(Outage(error=error, seconds=2.0))  # type: ignore[arg-type]
        await publish(kafka, topics.input, [job(f"held-{i}") for i in range(30)])
        await wait_until(lambda: not running.worker.ready, timeout=30)
        blocked = running.worker.metrics.provider_blocked
        cause = "unauthorized" if error == "invalid_api_key" else "insufficient_quota"
        assert blocked.labels(cause)._value.get() == 1
        collected = await collect(kafka, topics, 30, timeout=60)
        await wait_until(lambda: running.worker.ready, timeout=30)
        assert blocked.labels(cause)._value.get() == 0
    assert {r.id for r in collected.results} == {f"held-{i}" for i in range(30)}
    assert collected.reviews == [], "no job was blamed for the provider's refusal"
    refused = sim.stats().by_fault.get(f"outage_{error}", 0)
    assert 1 <= refused < 30, "held jobs were not each sent into the outage: only probes (and calls in flight)"
