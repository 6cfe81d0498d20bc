"""Provider storms: 30% of the jobs carry a fault for the simulator (429 with retry-after, 5xx, hangs,
resets, malformed and truncated bodies, mid-stream errors, moderation error variants, missing moderation,
unknown union tags), and on top of that every attempt meets a transient server-wide fault with some
probability. Every job must end where the routing rules say, and the worker's log must show nothing
unhandled. A JSON worker and a streaming worker weather their storms side by side.

Each job's directive fixes its expected route. The server-wide layer only adds retriable failures, so the
one deviation allowed is a job that was going to succeed ending as ``api_error`` after *all* its attempts
failed with retriable failures (the retry budget was spent; that is the rule too).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from pipeline.broker import free_port
from pipeline.client import ChatClient, ClientConfig
from pipeline.kafka import KafkaSettings
from pipeline.outcomes import Failed
from pipeline.secret import Secret
from pipeline.simulator import Simulator
from pipeline.simulator.directives import parse_rules
from pipeline.simulator.latency import parse_latency
from schemas import UserMessage
from schemas.topics import ApiFailure, Job, Review
from tests.fixtures.broker import Broker
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import Topics, create_topics, job, publish, worker_env
from tests.reliability.support import (
    QUICK_EVICTION,
    Outputs,
    Seen,
    WorkerProcess,
    log_problems,
    record,
    simulator_faults,
    size_of,
    tally,
    until_assigned,
    workers,
)

MAX_ATTEMPTS = 4
#: A share of the jobs gets one of these directives; the rest are plain (clean, or flagged by their text).
FAULTY_SHARE = 0.3
SERVER_FAULTS = "500@0.03,429@0.03,reset@0.02,hang@0.01,truncated@0.02,502@0.02"
RETRIABLE_FAILURES = {"http_status", "transport", "timeout", "stream"}


@dataclass(frozen=True)
class Expect:
    route: str
    #: for api_error: the failure kind, or the error code, the review must carry (None: any)
    failure: str | None = None
    code: str | None = None
    #: for api_error: every attempt was spent
    exhausted: bool = False


DIRECTIVES: dict[str, Expect] = {
    "429*2": Expect("output"),
    "500*2": Expect("output"),
    "502*1": Expect("output"),
    "503*3": Expect("output"),
    "hang*1": Expect("output"),
    "reset*2": Expect("output"),
    "truncated*1": Expect("output"),
    "stream_error*1": Expect("output"),
    "moderation_before_content": Expect("output"),
    "500": Expect("api_error", exhausted=True),
    "truncated": Expect("api_error", exhausted=True),
    "stream_error": Expect("api_error", exhausted=True),
    "insufficient_quota*1": Expect("output"),  # provider-wide: held by the breaker, not the job's failure
    "context_length_exceeded": Expect("api_error", code="context_length_exceeded"),
    "malformed_json*1": Expect("api_error", failure="decode"),
    "moderation_unknown_type": Expect("api_error", failure="decode"),
    "moderation_error_input": Expect("moderation_error"),
    "moderation_error_output": Expect("moderation_error"),
    "moderation_error_input,moderation_error_output": Expect("moderation_error"),
    "moderation_missing": Expect("moderation_missing"),
    "flag_output=violence": Expect("flagged"),
    "flag_input=harassment": Expect("flagged"),
    "429*1,moderation_missing": Expect("moderation_missing"),
    "reset*1,flag_output=self-harm": Expect("flagged"),
}
PLAIN: dict[str, Expect] = {
    "Write a haiku about tea.": Expect("output"),
    "Summarise the plot of a quiet novel about gardens.": Expect("output"),
    "I will murder them and stab the witness.": Expect("flagged"),
}


@dataclass(frozen=True)
class Size:
    jobs: int
    concurrency: int = 64
    partitions: int = 3


SIZES = [
    pytest.param(Size(jobs=400), id="ci"),
    pytest.param(Size(jobs=10_000, concurrency=128), id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(1800)]),
]


def _plan(count: int, rng: random.Random) -> dict[str, tuple[str, Expect]]:
    """Job id → (prompt, expected outcome)."""
    plan: dict[str, tuple[str, Expect]] = {}
    directives = list(DIRECTIVES)
    for index in range(count):
        if rng.random() < FAULTY_SHARE:
            directive = rng.choice(directives)
            plan[f"p-{index}"] = (f"Tell me about rivers. [[sim: {directive}]]", DIRECTIVES[directive])
        else:
            text = rng.choice(list(PLAIN))
            plan[f"p-{index}"] = (text, PLAIN[text])
    return plan


def _mismatch(expect: Expect, route: str, value: bytes) -> str | None:
    """Why a record breaks the routing rules for its job, or None."""
    review = msgspec.json.decode(value, type=Review) if route != "output" else None
    failure = review.reason if review is not None and isinstance(review.reason, ApiFailure) else None
    spent = failure is not None and failure.attempts == MAX_ATTEMPTS and failure.failure in RETRIABLE_FAILURES
    if route != expect.route:
        return None if route == "api_error" and spent else f"expected {expect.route}, got {route}"
    if failure is None or (spent and expect.code is None):
        return None
    if expect.exhausted and failure.attempts != MAX_ATTEMPTS:
        return f"api_error after {failure.attempts} attempts, expected all {MAX_ATTEMPTS}"
    if expect.failure is not None and failure.failure != expect.failure:
        return f"api_error {failure.failure}, expected {expect.failure}"
    if expect.code is not None and failure.code != expect.code:
        return f"api_error code {failure.code}, expected {expect.code}"
    return None


@dataclass
class Run:
    """One mode's storm: what was planned, what came out, what the simulator and the worker saw."""

    stream: bool
    plan: dict[str, tuple[str, Expect]]
    seen: list[Seen]
    by_fault: dict[str, int]
    requests: int
    paid_twice: int
    log: list[dict[str, Any]]


async def _storm(
    stream: bool, size: Size, seed: int, kafka: KafkaSettings, topics: Topics, sim: Simulator, log_base: Path
) -> Run:
    plan = _plan(size.jobs, random.Random(seed))
    await create_topics(kafka, topics, partitions=size.partitions)
    env = worker_env(
        kafka,
        topics,
        sim.base_url,
        PIPELINE_CONCURRENCY=str(size.concurrency),
        PIPELINE_STREAM="true" if stream else "false",
        PIPELINE_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        PIPELINE_READ_TIMEOUT_S="1",
        PIPELINE_CALL_TIMEOUT_S="1",
        **QUICK_EVICTION,
    )
    async with Outputs(kafka, topics) as outputs:
        with workers() as started_workers:
            worker = WorkerProcess(env, log_base.with_suffix(".log"))
            started_workers.append(worker)
            await until_assigned(worker)
            await publish(kafka, topics.input, [job(job_id, text) for job_id, (text, _) in plan.items()])
            await outputs.until_all(set(plan), timeout=100 + size.jobs / 20)
            assert worker.running
            worker.terminate()
            assert await worker.wait(60) == 0
        await outputs.settle(0.5)
    stats = sim.stats()
    return Run(
        stream, plan, outputs.seen, stats.by_fault, stats.requests, len(stats.duplicate_successes), worker.lines()
    )


@pytest.mark.parametrize("size", SIZES)
async def test_every_job_ends_where_the_routing_rules_say_under_a_fault_storm(
    size: Size,
    request: pytest.FixtureRequest,
    kafka_broker: Broker,
    topic_prefix: str,
    tmp_path: Path,
    make_simulator: MakeSimulator,
) -> None:
    """Both modes at once, each with its own topics, worker process and simulator."""
    started = time.monotonic()
    seed = random.randrange(2**32)
    print(f"storm plan seed {seed}")
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    modes = ((False, "json"), (True, "stream"))
    latency, faults = parse_latency("uniform:20-200"), parse_rules(SERVER_FAULTS)
    sims = [await make_simulator(latency=latency, faults=faults, random_seed=seed) for _ in modes]
    runs = await asyncio.gather(
        *(
            _storm(stream, size, seed + stream, kafka, Topics.named(f"{topic_prefix}-{mode}"), sim, tmp_path / mode)
            for (stream, mode), sim in zip(modes, sims, strict=True)
        )
    )
    for run in runs:
        wrong = {
            s.key: problem for s in run.seen if (problem := _mismatch(run.plan[s.key][1], s.route, s.value)) is not None
        }
        spent = sum(1 for s in run.seen if s.route == "api_error" and run.plan[s.key][1].route != "api_error")
        figures = record(
            tally(
                f"provider-storm[{'stream' if run.stream else 'json'}]",
                size_of(request),
                set(run.plan),
                run.seen,
                faults=simulator_faults(run.by_fault),
                faulty_jobs=sum(1 for text, _ in run.plan.values() if "[[sim:" in text),
                retries_spent_by_server_faults=spent,
                attempts=run.requests,
                paid_twice=run.paid_twice,
                seed=seed + run.stream,
            ),
            started,
        )
        assert figures.lost == 0
        assert wrong == {}
        assert log_problems(run.log) == []
        assert figures.duplicates == 0, "one worker, stopped gracefully: each job is routed once"


# --------------------------------------------------------------------------------------------------
# Bytes that are not UTF-8: the simulator never sends them, a broken proxy or provider may
# --------------------------------------------------------------------------------------------------

_CHUNK = (
    b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"x\xff"}}]}'
)
_GARBLED = {
    "completion": (
        200,
        "application/json",
        b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"bad \xff byte"},"finish_reason":"stop"}]}',
    ),
    "error-body": (500, "application/json", b'{"error":{"message":"bad \xff byte","type":"server_error"}}'),
    "stream-chunk": (200, "text/event-stream", b"data: " + _CHUNK + b"\n\n"),
}


@pytest.mark.parametrize("garbled", sorted(_GARBLED))
async def test_a_response_that_is_not_utf8_is_a_failure_not_an_exception(garbled: str) -> None:
    """The client's promise (an outcome, never an exception) holds for bytes msgspec refuses as UTF-8."""
    status, content_type, body = _GARBLED[garbled]

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = ClientConfig(
        api_key=Secret("sk-test-garbled"),
        base_url=f"http://127.0.0.1:{port}/v1",
        max_attempts=1,
        stream=content_type == "text/event-stream",
    )
    try:
        async with ChatClient(config) as client:
            outcome = await client.complete(Job(id="garbled", messages=[UserMessage(content="Hello")]))
    finally:
        await runner.cleanup()
    assert isinstance(outcome, Failed), outcome
    assert outcome.failure == ("http_status" if status != 200 else "decode"), outcome
