"""Soak (``make soak`` only): steady load with provider faults for ``PIPELINE_SOAK_MINUTES`` (default 10).

One worker process takes jobs published at a steady rate from a simulator process that injects a mix of
faults. Its resident set and open file descriptors are sampled every few seconds; after a warm-up they must
stay flat (least-squares slope under a small bound, reported either way). Nothing may be lost, nothing
routed twice, nothing unhandled logged.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from pipeline.kafka import KafkaSettings
from tests.fixtures.broker import Broker
from tests.fixtures.env import run_setting
from tests.fixtures.simulator import MakeSimulatorProcess
from tests.integration.harness import Topics, create_topics, job, worker_env
from tests.reliability.support import (
    QUICK_EVICTION,
    Outputs,
    WorkerProcess,
    log_problems,
    publish_steadily,
    record,
    simulator_faults,
    slope_per_minute,
    tally,
    until_assigned,
    workers,
)

MINUTES = float(run_setting("PIPELINE_SOAK_MINUTES") or "10")
PER_SECOND = 40
SAMPLE_EVERY_S = 2.0
CONCURRENCY = 64
WARM_UP_SHARE = 0.2
SERVER_FAULTS = "500@0.03,429@0.03,503@0.01,reset@0.01,hang@0.005,truncated@0.01,malformed_json@0.003"
SERVER_FAULTS += ",moderation_error_output@0.01,moderation_missing@0.005"
#: "Flat": what the slopes after the warm-up may not exceed. Descriptors go up and down with the connections
#: in use (resets and hangs close some), so they also get a ceiling: the pool's size plus a margin.
RSS_SLOPE_BOUND_MIB_PER_MIN = 1.0
FD_SLOPE_BOUND_PER_MIN = 1.0
FD_CEILING = CONCURRENCY + 40
PROMPTS = [
    "Write a haiku about tea.",
    "Describe a walk by the sea at dawn.",
    "Summarise the plot of a quiet novel about gardens.",
    "I will murder them and stab the witness.",
]


@pytest.mark.soak
@pytest.mark.timeout(int(MINUTES * 60) + 600)
async def test_steady_load_with_faults_keeps_memory_and_descriptors_flat(
    kafka_broker: Broker, topic_prefix: str, tmp_path: Path, make_simulator_process: MakeSimulatorProcess
) -> None:
    started = time.monotonic()
    rng = random.Random(0)
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=4)
    sim = make_simulator_process(
        ["--latency", "uniform:50-500", "--faults", SERVER_FAULTS, "--hang-s", "5", "--random-seed", "7"]
    )
    env = worker_env(
        kafka,
        topics,
        sim.base_url,
        PIPELINE_CONCURRENCY=str(CONCURRENCY),
        PIPELINE_MAX_ATTEMPTS="4",
        PIPELINE_READ_TIMEOUT_S="2",
        PIPELINE_CALL_TIMEOUT_S="2",
        **QUICK_EVICTION,
    )
    count = int(MINUTES * 60 * PER_SECOND)
    ids = [f"soak-{i}" for i in range(count)]
    samples: list[tuple[float, int, int]] = []  # (seconds, RSS KiB, open fds)

    async with Outputs(kafka, topics, keep_records=False) as outputs:
        with workers() as started_workers:
            worker = WorkerProcess(env, tmp_path / "worker.log")
            started_workers.append(worker)
            await until_assigned(worker)
            publisher = asyncio.create_task(
                publish_steadily(kafka, topics.input, [job(i, rng.choice(PROMPTS)) for i in ids], PER_SECOND)
            )
            begun = time.monotonic()
            while not publisher.done():
                samples.append((time.monotonic() - begun, worker.rss_kib(), worker.open_fds()))
                await outputs.poll()
                await asyncio.sleep(SAMPLE_EVERY_S)
            await publisher
            await outputs.until_all(set(ids), timeout=120)
            assert worker.running
            worker.terminate()
            assert await worker.wait(60) == 0
        await outputs.settle()

    steady = [s for s in samples if s[0] >= WARM_UP_SHARE * MINUTES * 60]
    rss_slope = slope_per_minute([(t, rss / 1024) for t, rss, _ in steady])
    fd_slope = slope_per_minute([(t, float(fds)) for t, _, fds in steady])
    stats = sim.stats()
    figures = record(
        tally(
            "soak",
            "soak",
            set(ids),
            outputs.seen,
            faults=simulator_faults(stats.by_fault),
            minutes=MINUTES,
            rss_mib_first_last=f"{samples[0][1] / 1024:.1f}->{samples[-1][1] / 1024:.1f}",
            rss_slope_mib_per_min=round(rss_slope, 3),
            fds_first_max_last=f"{samples[0][2]}/{max(s[2] for s in samples)}/{samples[-1][2]}",
            fd_slope_per_min=round(fd_slope, 3),
            samples=len(samples),
        ),
        started,
    )
    assert figures.lost == 0
    assert figures.duplicates == 0
    assert log_problems(worker.lines()) == []
    assert rss_slope <= RSS_SLOPE_BOUND_MIB_PER_MIN, f"RSS grows {rss_slope:.2f} MiB/min"
    assert abs(fd_slope) <= FD_SLOPE_BOUND_PER_MIN, f"open descriptors change by {fd_slope:.2f}/min"
    assert max(fds for _, _, fds in samples) <= FD_CEILING
