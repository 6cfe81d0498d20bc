"""Delivery under change: out-of-order completion, restarts, group changes, SIGTERM, a frozen broker."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.kafka import KafkaSettings
from pipeline.simulator import SimulatorConfig
from pipeline.simulator.latency import parse_latency
from tests.fixtures.broker import Broker
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import (
    Topics,
    client_config,
    collect,
    committed,
    create_topics,
    job,
    log_lines,
    publish,
    publish_racing,
    running_worker,
    wait_until,
    worker_env,
    worker_process,
    worker_settings,
)


async def test_a_slow_record_holds_the_commit_back_and_fast_ones_do_not_jump_it(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    values = [job("slow", "Take your time [[sim: latency=4000]]")] + [job(f"fast-{i}") for i in range(20)]
    sim = await make_simulator()
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)):
        await publish(kafka, topics.input, values, partition=0)
        fast_done = await collect(kafka, topics, 20, timeout=30)
        assert {r.id for r in fast_done.results} >= {f"fast-{i}" for i in range(20)}
        assert "slow" not in {r.id for r in fast_done.results}
        await asyncio.sleep(0.5)  # several commit intervals pass with the fast ones done
        assert (await committed(kafka, topics.group, topics.input, 1)).get(0) in (None, 0)
        await collect(kafka, topics, 21, timeout=30)
        await asyncio.sleep(0.5)
        assert (await committed(kafka, topics.group, topics.input, 1)) == {0: 21}


async def test_a_restart_resumes_without_loss(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=2)
    first, second = [job(f"a-{i}") for i in range(30)], [job(f"b-{i}") for i in range(30)]
    sim = await make_simulator()
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)):
        await publish(kafka, topics.input, first)
        await collect(kafka, topics, 30)
    await publish(kafka, topics.input, second)  # published while no worker runs
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)):
        collected = await collect(kafka, topics, 60)
    stats = sim.stats()
    ids = [r.id for r in collected.results]
    assert sorted(set(ids)) == sorted([f"a-{i}" for i in range(30)] + [f"b-{i}" for i in range(30)])
    assert len(ids) == 60, "a graceful stop commits everything: nothing is processed twice"
    assert stats.duplicate_successes == {}


async def test_records_fetched_before_the_partition_ledger_exists_are_fetched_again(
    kafka_broker: Broker, topic_prefix: str, monkeypatch: pytest.MonkeyPatch, make_simulator: MakeSimulator
) -> None:
    """aiokafka may hand over a new partition's records before ``on_partitions_assigned`` has read the
    committed offsets; slowing that read makes the race certain. The partition is held (paused) until the
    read answers, and a batch that still arrives first is fetched again: none may be skipped or committed
    past."""
    import pipeline.worker.ports as worker_module

    real_read = worker_module.committed_with_metadata

    async def slow_read(*args: Any) -> Any:
        await asyncio.sleep(1.5)
        return await real_read(*args)

    monkeypatch.setattr(worker_module, "committed_with_metadata", slow_read)
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    await publish(kafka, topics.input, [job(f"r-{i}") for i in range(20)], partition=0)
    sim = await make_simulator()
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)) as running:
        collected = await collect(kafka, topics, 20, timeout=30)
        assert running.worker.metrics.jobs_consumed._value.get() == 20, "each record taken once"
    assert {r.id for r in collected.results} == {f"r-{i}" for i in range(20)}
    assert (await committed(kafka, topics.group, topics.input, 1)) == {0: 20}


async def test_a_new_group_starts_at_the_first_record_however_the_first_batches_were_written(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    """A partition without a commit starts at offset 0, not at the broker's ListOffsets(earliest), which
    on the embedded broker can skip a first batch written while another producer wrote too."""
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    partitions = 60
    await create_topics(kafka, topics, partitions=partitions)
    ids = [[f"p{p}-{n}" for n in range(3)] for p in range(partitions)]
    await publish_racing(kafka, topics.input, [[job(i) for i in row] for row in ids])
    sim = await make_simulator()
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)):
        collected = await collect(kafka, topics, partitions * 3, timeout=60)
    assert {r.id for r in collected.results} == {i for row in ids for i in row}


async def test_two_workers_split_the_work_and_a_third_joining_loses_nothing(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=6)
    config = SimulatorConfig(latency=parse_latency("fixed:200"))
    sim = await make_simulator(config)
    settings = worker_settings(topics, concurrency=4)
    async with (
        running_worker(kafka, settings, client_config(sim.base_url)) as one,
        running_worker(kafka, settings, client_config(sim.base_url)) as two,
    ):
        await wait_until(lambda: len(one.worker.assignment) + len(two.worker.assignment) == 6)
        assert one.worker.assignment and two.worker.assignment
        await publish(kafka, topics.input, [job(f"j-{i}") for i in range(300)])
        async with running_worker(kafka, settings, client_config(sim.base_url)) as three:
            await wait_until(lambda: bool(three.worker.assignment), timeout=40)
            assert sim.stats().requests < 300, "the third worker joined while work remained"
            collected = await collect(kafka, topics, 300, timeout=90)
    stats = sim.stats()
    ids = [r.id for r in collected.results]
    assert set(ids) == {f"j-{i}" for i in range(300)}
    assert stats.duplicate_successes == {}, "revoked partitions finish and commit their in-flight jobs"


async def test_sigterm_drains_in_flight_jobs_then_exits_zero(
    kafka_broker: Broker, topic_prefix: str, tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=2)
    sim = await make_simulator(SimulatorConfig(latency=parse_latency("fixed:1500")))
    log = tmp_path / "worker.log"
    with worker_process(worker_env(kafka, topics, sim.base_url), log) as process:
        await publish(kafka, topics.input, [job(f"d-{i}") for i in range(20)])
        await wait_until(lambda: sim.stats().in_flight >= 10, timeout=30)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
    assert code == 0
    collected = await collect(kafka, topics, 20, timeout=5)
    assert {r.id for r in collected.results} == {f"d-{i}" for i in range(20)}
    assert sum((await committed(kafka, topics.group, topics.input, 2)).values()) == 20
    messages = [line.get("msg") for line in log_lines(log)]
    assert "draining" in messages and "worker stopped" in messages


async def test_a_frozen_broker_loses_nothing(
    own_embedded_broker: EmbeddedBroker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=own_embedded_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=2)
    sim = await make_simulator(SimulatorConfig(latency=parse_latency("fixed:20")))
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)) as running:
        await wait_until(lambda: len(running.worker.assignment) == 2, timeout=30)
        await publish(kafka, topics.input, [job(f"s-{i}") for i in range(40)])
        own_embedded_broker.pause()
        await asyncio.sleep(8)  # longer than the 6 s session timeout
        own_embedded_broker.resume()
        await publish(kafka, topics.input, [job(f"t-{i}") for i in range(40)])
        collected = await collect(kafka, topics, 80, timeout=90)
        assert running.worker.alive
    ids = {r.id for r in collected.results}
    assert ids == {f"s-{i}" for i in range(40)} | {f"t-{i}" for i in range(40)}
