"""Outage and replay: the provider goes away (connection refused), comes back failing (503 on everything),
then recovers. Jobs published during the outage go to review as ``api_error`` after the bounded number of
attempts; ``pipeline replay --reason api_error`` after the recovery sends them through again, and every job
finally lands on output or on review for a content reason. The worker runs throughout, never restarted.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from pipeline.broker import free_port
from pipeline.kafka import KafkaSettings
from schemas.topics import HEADER_REPLAY_COUNT, ApiFailure, Review
from tests.fixtures.broker import Broker
from tests.fixtures.env import child_env
from tests.fixtures.simulator import MakeSimulatorProcess
from tests.integration.harness import Topics, create_topics, job, publish, worker_env
from tests.reliability.support import (
    QUICK_EVICTION,
    ROOT,
    Outputs,
    Seen,
    WorkerProcess,
    log_problems,
    record,
    size_of,
    tally,
    until_assigned,
    workers,
)

MAX_ATTEMPTS = 3
CONTENT = {
    "Write a haiku about tea.": "output",
    "Describe a walk by the sea at dawn.": "output",
    "I will murder them and stab the witness.": "flagged",
}
FINAL_ROUTES = {"output", "flagged", "moderation_error", "moderation_missing", "content_filter"}


@dataclass(frozen=True)
class Size:
    per_phase: int
    concurrency: int = 64
    partitions: int = 3


SIZES = [
    pytest.param(Size(per_phase=100), id="ci"),
    pytest.param(Size(per_phase=3000, concurrency=128), id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(1800)]),
]


def _review(seen: Seen) -> Review:
    return msgspec.json.decode(seen.value, type=Review)


def _attempts_failed(seen: list[Seen], keys: set[str], check: Callable[[ApiFailure], bool]) -> list[str]:
    bad = []
    for s in seen:
        if s.key in keys and s.route == "api_error":
            reason = _review(s).reason
            if not (isinstance(reason, ApiFailure) and reason.attempts == MAX_ATTEMPTS and check(reason)):
                bad.append(f"{s.key}: {reason}")
    return bad


@pytest.mark.parametrize("size", SIZES)
async def test_an_outage_goes_to_review_and_a_replay_after_recovery_sends_everything_through(
    size: Size,
    request: pytest.FixtureRequest,
    kafka_broker: Broker,
    topic_prefix: str,
    tmp_path: Path,
    make_simulator_process: MakeSimulatorProcess,
) -> None:
    started = time.monotonic()
    rng = random.Random(size.per_phase)
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=size.partitions)
    port = free_port()
    latency = ["--latency", "uniform:20-150"]
    sim = make_simulator_process(latency, port=port)
    env = worker_env(
        kafka,
        topics,
        sim.base_url,
        PIPELINE_CONCURRENCY=str(size.concurrency),
        PIPELINE_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        **QUICK_EVICTION,
    )
    phases = ("before", "down", "failing", "after")
    plan = {
        f"{phase}-{i}": rng.choice(list(CONTENT)) for phase in phases for i in range(size.per_phase)
    }  # job id → prompt
    keys = {phase: {key for key in plan if key.startswith(phase + "-")} for phase in phases}

    async def run_phase(phase: str) -> None:
        begun = time.monotonic()
        await publish(kafka, topics.input, [job(key, plan[key]) for key in sorted(keys[phase])])
        await outputs.until_all(keys[phase], timeout=60 + size.per_phase / 10)
        print(f"phase {phase}: {len(keys[phase])} jobs handled in {time.monotonic() - begun:.1f}s")

    async with Outputs(kafka, topics) as outputs:
        with workers() as started_workers:
            worker = WorkerProcess(env, tmp_path / "worker.log")
            started_workers.append(worker)
            await until_assigned(worker)
            await run_phase("before")
            sim.stop()  # down: connection refused
            await run_phase("down")
            # up again but answering 503 to everything, quickly (the client's adaptive limit drops to its floor)
            sim = make_simulator_process(["--latency", "fixed:5", "--faults", "503"], port=port)
            await run_phase("failing")
            sim.stop()
            sim = make_simulator_process(latency, port=port)  # recovered
            await run_phase("after")
            outage = keys["down"] | keys["failing"]
            before_replay = list(outputs.seen)
            replay = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "pipeline.cli", "replay", "--reason", "api_error"],
                env=child_env(topics.env(), {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers}),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert replay.returncode == 0, replay.stderr
            await outputs.until(
                lambda o: outage <= {s.key for s in o.seen if s.route in FINAL_ROUTES},
                60 + size.per_phase / 10,
                "the replayed jobs",
            )
            assert worker.running
            worker.terminate()
            assert await worker.wait(60) == 0
        await outputs.settle(0.5)

    final = [s for s in outputs.seen if s.route in FINAL_ROUTES]
    api_errors = [s for s in before_replay if s.route == "api_error"]
    figures = record(
        tally(
            "outage-replay",
            size_of(request),
            set(plan),
            final,
            faults=sum(_review(s).reason.attempts for s in api_errors),  # type: ignore[union-attr]
            api_error_before_replay=len(api_errors),
            replay_output=replay.stdout.strip(),
        ),
        started,
    )
    assert figures.lost == 0, "every job finally on output or on review for a content reason"
    assert figures.duplicates == 0
    assert {s.key for s in api_errors} == outage, "exactly the outage's jobs went to api_error, each once"
    assert len(api_errors) == len(outage)
    assert _attempts_failed(before_replay, keys["down"], lambda r: r.failure == "transport") == []
    assert _attempts_failed(before_replay, keys["failing"], lambda r: r.status == 503) == []
    assert {s.key: s.route for s in final} == {key: CONTENT[text] for key, text in plan.items()}
    replayed = [s for s in final if s.key in outage]
    assert all(dict(s.headers).get(HEADER_REPLAY_COUNT) == b"1" for s in replayed)
    assert log_problems(worker.lines()) == []
