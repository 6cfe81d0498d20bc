"""Crash: SIGKILL the worker at random moments while thousands of jobs flow, restart it, lose nothing.

At-least-once, measured: a job whose result was acknowledged but whose offset was not yet committed when
the worker died is processed again by the next instance. Right after each kill (no worker alive, so
nobody commits) the test reads the committed offsets and counts the results already on the topics beyond
them: that is the window this kill can duplicate. Every duplicate must come from such a window, and there
are at most as many as the in-flight limit per kill (the simulator's latency is above the commit interval,
so the finished-but-uncommitted share stays below it).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.kafka import KafkaSettings
from pipeline.simulator.latency import parse_latency
from tests.fixtures.broker import Broker
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import Topics, create_topics, job, publish, worker_env
from tests.reliability.support import (
    QUICK_EVICTION,
    Outputs,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    record,
    size_of,
    tally,
    until_assigned,
    until_committed,
    workers,
)


@dataclass(frozen=True)
class Size:
    jobs: int
    kills: int
    concurrency: int
    partitions: int = 4


SIZES = [
    pytest.param(Size(jobs=2000, kills=2, concurrency=64), id="ci"),
    pytest.param(
        Size(jobs=20_000, kills=12, concurrency=64), id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(1800)]
    ),
]


@pytest.mark.parametrize("size", SIZES)
async def test_sigkill_at_random_moments_loses_nothing(
    size: Size,
    request: pytest.FixtureRequest,
    kafka_broker: Broker,
    topic_prefix: str,
    tmp_path: Path,
    make_simulator: MakeSimulator,
) -> None:
    started = time.monotonic()
    seed = random.randrange(2**32)
    print(f"crash schedule seed {seed}")
    rng = random.Random(seed)
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=size.partitions)
    sim = await make_simulator(latency=parse_latency("uniform:250-400"), random_seed=seed)
    env = worker_env(kafka, topics, sim.base_url, PIPELINE_CONCURRENCY=str(size.concurrency), **QUICK_EVICTION)
    ids = [f"c-{i}" for i in range(size.jobs)]
    expected = set(ids)
    windows: list[set[str]] = []

    async with Outputs(kafka, topics) as outputs:
        with workers() as started_workers:
            worker = WorkerProcess(env, tmp_path / "worker-0.log")
            started_workers.append(worker)
            acks = await publish(kafka, topics.input, [job(i) for i in ids])
            for kill in range(size.kills):
                # a random moment within this kill's share of the run, once jobs flow again
                share = (kill + rng.uniform(0.2, 0.8)) / (size.kills + 1)
                await outputs.until(lambda o, s=share: len(o.distinct()) >= s * size.jobs, 120, f"{share:.0%} done")
                await asyncio.sleep(rng.uniform(0, 0.3))
                worker.kill()
                committed = await committed_offsets(kafka, topics.group, topics.input, size.partitions)
                await outputs.settle(0.5)
                window = {
                    s.key for s in outputs.seen if s.offset >= committed.get(s.partition, 0) and s.key in expected
                }
                windows.append(window)
                print(f"kill {kill + 1}: {len(outputs.distinct())} done, {len(window)} acknowledged beyond the commit")
                worker = WorkerProcess(env, tmp_path / f"worker-{kill + 1}.log")
                started_workers.append(worker)
                await until_assigned(worker, timeout=60)
            await outputs.until_all(expected, timeout=180)
            await until_committed(kafka, topics.group, topics.input, end_offsets(acks), timeout=60)
            worker.terminate()
            assert await worker.wait(60) == 0
        await outputs.settle()

    stats = sim.stats()
    figures = record(
        tally(
            "crash",
            size_of(request),
            expected,
            outputs.seen,
            faults=size.kills,
            kills=size.kills,
            concurrency=size.concurrency,
            uncommitted_at_kills=[len(w) for w in windows],
            paid_twice=len(stats.duplicate_successes),
            seed=seed,
        ),
        started,
    )
    assert figures.lost == 0
    counts = Counter(s.key for s in outputs.seen)
    duplicated = {key for key, n in counts.items() if n > 1}
    assert duplicated <= set().union(*windows), "every duplicate was acknowledged but uncommitted at a kill"
    assert figures.duplicates <= size.kills * size.concurrency
    committed = await committed_offsets(kafka, topics.group, topics.input, size.partitions)
    assert committed == end_offsets(acks), "a graceful stop keeps everything committed"
