"""Broker stall: SIGSTOP the broker for longer than the session timeout while two worker processes are busy
and jobs keep being published, then SIGCONT. The workers recover by themselves (same processes, no
restart), the group owns every partition again, nothing is lost, and a graceful stop commits everything.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.kafka import KafkaSettings
from pipeline.simulator.latency import parse_latency
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import Topics, create_topics, job, worker_env
from tests.reliability.support import (
    QUICK_EVICTION,
    Outputs,
    WorkerProcess,
    committed_offsets,
    end_offsets,
    log_problems,
    publish_steadily,
    record,
    size_of,
    tally,
    until_assigned,
    until_committed,
    workers,
)

COMMIT_INTERVAL_S = 0.1  # harness.worker_env's PIPELINE_COMMIT_INTERVAL_MS
SESSION_TIMEOUT_S = int(QUICK_EVICTION["PIPELINE_SESSION_TIMEOUT_MS"]) / 1000


@dataclass(frozen=True)
class Size:
    jobs: int
    per_second: float
    stalls: int
    stall_s: float
    concurrency: int = 32
    partitions: int = 4


SIZES = [
    pytest.param(Size(jobs=800, per_second=100, stalls=1, stall_s=SESSION_TIMEOUT_S + 3), id="ci"),
    pytest.param(
        Size(jobs=12_000, per_second=80, stalls=4, stall_s=3 * SESSION_TIMEOUT_S),
        id="soak",
        marks=[pytest.mark.soak, pytest.mark.timeout(1800)],
    ),
]


def _owned_at_end(worker: WorkerProcess) -> set[str]:
    owned: set[str] = set()
    for line in worker.lines():
        if line.get("msg") == "partitions assigned":
            owned |= set(line.get("partitions") or [])
        elif line.get("msg") == "partitions revoked":
            owned -= set(line.get("partitions") or [])
    return owned


@pytest.mark.parametrize("size", SIZES)
async def test_a_frozen_broker_heals_without_restarting_anything(
    size: Size,
    request: pytest.FixtureRequest,
    own_embedded_broker: EmbeddedBroker,
    topic_prefix: str,
    tmp_path: Path,
    make_simulator: MakeSimulator,
) -> None:
    started = time.monotonic()
    kafka = KafkaSettings(bootstrap_servers=own_embedded_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=size.partitions)
    sim = await make_simulator(latency=parse_latency("uniform:50-400"))
    env = worker_env(kafka, topics, sim.base_url, PIPELINE_CONCURRENCY=str(size.concurrency), **QUICK_EVICTION)
    ids = [f"s-{i}" for i in range(size.jobs)]
    expected = set(ids)
    frozen_s = 0.0

    async with Outputs(kafka, topics) as outputs:
        with workers() as pair:
            pair.extend(WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in range(2))
            pids = [worker.pid for worker in pair]
            for worker in pair:
                await until_assigned(worker)
            publisher = asyncio.create_task(
                publish_steadily(kafka, topics.input, [job(i) for i in ids], size.per_second)
            )
            run_s = size.jobs / size.per_second
            for stall in range(size.stalls):
                # evenly spread over the publishing, so jobs are in flight and arriving at every stall
                await outputs.until(
                    lambda o, n=stall: len(o.distinct()) >= (n + 0.5) * size.jobs / (size.stalls + 1),
                    run_s + 60,
                    "jobs flowing before the stall",
                )
                own_embedded_broker.pause()
                await asyncio.sleep(size.stall_s)
                own_embedded_broker.resume()
                frozen_s += size.stall_s
                print(f"stall {stall + 1}: broker frozen {size.stall_s:g}s with {len(outputs.distinct())} jobs done")
            acks = await publisher
            await outputs.until_all(expected, timeout=120 + 2 * size.stall_s)
            await until_committed(kafka, topics.group, topics.input, end_offsets(acks), timeout=60)
            assert [worker.pid for worker in pair] == pids and all(worker.running for worker in pair)
            owned = [_owned_at_end(worker) for worker in pair]
            for worker in pair:
                worker.terminate()
            codes = [await worker.wait(60) for worker in pair]
        await outputs.settle()

    figures = record(
        tally(
            "broker-stall",
            size_of(request),
            expected,
            outputs.seen,
            faults=size.stalls,
            frozen_s=frozen_s,
            session_timeout_s=SESSION_TIMEOUT_S,
            rebalances=sum(worker.messages().count("partitions assigned") for worker in pair),
            commit_failures=sum(worker.messages().count("commit failed; will retry") for worker in pair),
        ),
        started,
    )
    assert figures.lost == 0
    assert codes == [0, 0]
    assert owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == size.partitions, "the group healed"
    assert [log_problems(worker.lines()) for worker in pair] == [[], []]
    committed = await committed_offsets(kafka, topics.group, topics.input, size.partitions)
    assert committed == end_offsets(acks)
    # a stall can cost each worker what it had in flight (its session dies, its commits fail) plus what it
    # finished in the commit interval before the freeze
    window = size.concurrency + size.per_second * COMMIT_INTERVAL_S
    assert figures.duplicates <= 2 * size.stalls * window
