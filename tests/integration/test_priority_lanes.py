"""Priority lanes on the real broker: two input topics weighted 4 to 1 share the call slots 4 to 1 while both
have work, and the bulk lane takes every slot once the interactive lane has none."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from aiokafka.structs import TopicPartition

from pipeline.kafka import KafkaSettings, ensure_topics, make_consumer, seek_to_log_start
from pipeline.simulator.latency import parse_latency
from pipeline.worker import Worker
from pipeline.worker.scheduler import JobState
from tests.fixtures.broker import Broker
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import Topics, client_config, job, publish, running_worker, worker_settings

CONCURRENCY = 10


async def finished(kafka: KafkaSettings, topics: Topics, ids: set[str], timeout: float = 60.0) -> set[str]:
    """Read output and review until every job of ``ids`` has a result (the harness's ``collect`` counts
    sources by partition and offset, which two input topics share)."""
    seen: set[str] = set()
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.output, 0), TopicPartition(topics.review, 0)]
        consumer.assign(partitions)
        seek_to_log_start(consumer, partitions)
        deadline = time.monotonic() + timeout
        while not ids <= seen and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.update(r.key.decode() for r in records if r.key is not None)
    finally:
        await consumer.stop()
    return seen


async def test_under_load_the_slots_follow_the_lane_weights_and_an_idle_lane_lends_its_share(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)  # its input topic is the bulk lane (weight 1)
    interactive = f"{topic_prefix}-interactive"
    await ensure_topics(kafka, [topics.input, interactive, topics.output, topics.review], 1)
    # Returns spread out, as a provider's do: at a fixed latency whole waves return at once, and the slots go
    # to whatever the next fetch brings first, beyond the read-ahead the weights can choose from.
    sim = await make_simulator(latency=parse_latency("lognormal:150,600"))
    await publish(kafka, topics.input, [job(f"bulk-{i}") for i in range(160)])
    await publish(kafka, interactive, [job(f"interactive-{i}") for i in range(80)])
    both: list[Counter[str]] = []
    bulk_alone: list[int] = []

    def calls(worker: Worker) -> Counter[str]:
        return Counter(t.tp.topic for t in worker.scheduler.tickets(lambda t: t.state is JobState.CALLING))

    async def sample(worker: Worker) -> None:
        bulk_tp, interactive_tp = TopicPartition(topics.input, 0), TopicPartition(interactive, 0)
        while True:
            scheduler, now = worker.scheduler, calls(worker)
            if scheduler.waiting(bulk_tp) and scheduler.waiting(interactive_tp):
                both.append(now)
            elif scheduler.waiting(bulk_tp) and not now[interactive] and not scheduler.waiting(interactive_tp):
                bulk_alone.append(now[topics.input])
            await asyncio.sleep(0.01)

    settings = worker_settings(topics, concurrency=CONCURRENCY, input_topics={interactive: 4})
    async with running_worker(kafka, settings, client_config(sim.base_url)) as running:
        sampler = asyncio.create_task(sample(running.worker))
        ids = {f"bulk-{i}" for i in range(160)} | {f"interactive-{i}" for i in range(80)}
        assert await finished(kafka, topics, ids) >= ids
        sampler.cancel()
    assert len(both) >= 40, "the lanes were sampled while both had work"
    steady = both[len(both) // 4 :]  # running calls are not interrupted: bulk's head start takes a latency to go
    share = sum(c[interactive] for c in steady) / sum(sum(c.values()) for c in steady)
    assert 0.75 <= share <= 0.85, f"weights 4:1 give the interactive lane 80% of the calls; it had {share:.0%}"
    assert bulk_alone and max(bulk_alone) == CONCURRENCY, "with the interactive lane idle, bulk takes every slot"
