"""Scheduling: many jobs in flight, bounded by the concurrency limit; per-key ordering when asked for."""

from __future__ import annotations

import asyncio

from pipeline.kafka import KafkaSettings, make_producer
from pipeline.simulator.latency import parse_latency
from pipeline.worker import Worker
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
    worker_settings,
)


async def publish_keyed(kafka: KafkaSettings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def test_many_jobs_run_at_once_but_never_more_than_the_limit(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=2)
    sim = await make_simulator(latency=parse_latency("fixed:300"))
    held: list[int] = []

    async def sample(worker: Worker) -> None:
        while True:
            held.append(worker.in_flight)
            await asyncio.sleep(0.02)

    async with running_worker(kafka, worker_settings(topics, concurrency=16), client_config(sim.base_url)) as running:
        sampler = asyncio.create_task(sample(running.worker))
        await publish(kafka, topics.input, [job(f"c-{i}") for i in range(80)])
        collected = await collect(kafka, topics, 80)
        sampler.cancel()
    assert len({r.id for r in collected.results}) == 80
    peak = sim.stats().max_in_flight
    assert 8 <= peak <= 16, f"expected many calls in flight, never over the limit of 16; saw {peak}"
    # With every slot busy the worker fetches a quarter of the concurrency ahead (4 jobs), never the backlog;
    # results awaiting the broker's acknowledgement may briefly add to what it holds.
    assert 16 < max(held) <= 2 * 16, f"expected jobs fetched ahead but a bounded hold; held at most {max(held)}"


async def test_key_ordering_runs_one_job_per_key_at_a_time_in_offset_order(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    sim = await make_simulator()
    # Earlier jobs are slower: unordered they finish in reverse, ordered by key they must not.
    latencies = [500, 400, 300, 200, 100]
    records = [(b"same-key", job(f"k-{i}", f"step {i} [[sim: latency={ms}]]")) for i, ms in enumerate(latencies)]
    orders: dict[str, list[str]] = {}
    for mode in ("unordered", "key"):
        topics = Topics.named(f"{topic_prefix}-{mode}")
        await create_topics(kafka, topics, partitions=1)
        await publish_keyed(kafka, topics.input, records)
        async with running_worker(kafka, worker_settings(topics, ordering=mode), client_config(sim.base_url)):
            collected = await collect(kafka, topics, len(records))
        orders[mode] = [result.id for result in collected.results]
    assert orders["key"] == [f"k-{i}" for i in range(5)]
    assert orders["unordered"] != orders["key"], "without key ordering the fast later jobs finish first"
