"""The worker's promises on an in-memory consumer, producer and provider: deterministic, no broker, no sleeps.

Revocation mid-flight, the epoch guard, the revoke timeout, backpressure, drain and readiness — each driven
step by step (the test decides when the group rebalances and when calls and acks return).
"""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec
import pytest
from aiokafka.structs import TopicPartition

import pipeline.worker.sink as sink_module
from pipeline.backoff import Backoff
from pipeline.metrics import HealthServer
from schemas import UserMessage
from schemas.topics import Job
from tests.unit.worker.fakes import INPUT, Rig, rig, start, until

TP0 = TopicPartition(INPUT, 0)
TP1 = TopicPartition(INPUT, 1)


def job(job_id: str) -> bytes:
    return msgspec.json.encode(Job(id=job_id, messages=[UserMessage(content="hello")]))


def publish(rig: Rig, tp: TopicPartition, ids: list[str], key: bytes | None = None) -> None:
    for job_id in ids:
        rig.consumer.append(tp, job(job_id), key)


def value(metric: object) -> float:
    return float(metric._value.get())  # type: ignore[attr-defined]


async def test_every_job_is_delivered_and_the_commit_follows_the_acknowledgements() -> None:
    async with rig() as r:
        r.client.open()
        publish(r, TP0, [f"j-{i}" for i in range(10)])
        await start(r)
        await until(lambda: r.consumer.committed_offset(TP0) == 10, "all ten committed")
        assert sorted(r.producer.job_ids("completions")) == sorted(f"j-{i}" for i in range(10))
        assert r.worker.scheduler.held == 0 and r.worker.scheduler.violations() == []


async def test_a_slow_job_holds_the_commit_back_while_later_ones_finish() -> None:
    async with rig() as r:
        publish(r, TP0, ["slow", "a", "b", "c"])
        await start(r)
        await until(lambda: len(r.client.calls) == 4, "four calls in flight")
        r.client.release("a", "b", "c")
        await until(lambda: len(r.producer.sent) == 3, "three results acknowledged")
        await until(lambda: r.consumer.commits != [], "a commit")
        assert r.consumer.committed_offset(TP0) == 0, "offset 0 is not done: nothing beyond it is committed"
        r.client.release("slow")
        await until(lambda: r.consumer.committed_offset(TP0) == 4, "all four committed")


async def test_with_every_slot_busy_it_fetches_a_quarter_ahead_then_pauses() -> None:
    async with rig(concurrency=8) as r:
        publish(r, TP0, [f"j-{i}" for i in range(100)])
        await start(r)
        await until(lambda: TP0 in r.consumer.paused(), "fetching paused")
        scheduler = r.worker.scheduler
        assert len(r.client.calls) == 8 == scheduler.calling, "never more calls than slots"
        assert scheduler.ready == 2, "a quarter of the concurrency is fetched ahead"
        assert r.worker.in_flight == 10
        r.client.release("j-0", "j-1", "j-2")
        await until(lambda: len(r.client.started) == 11, "the freed slots went to the next jobs")
        await until(lambda: scheduler.ready == 2, "the read-ahead filled again")
        assert scheduler.calling == 8 and TP0 in r.consumer.paused()
        assert scheduler.violations() == []


async def test_a_slow_broker_never_lets_the_held_jobs_pass_twice_the_concurrency() -> None:
    async with rig(concurrency=4) as r:
        r.producer.ack_gate.clear()
        r.client.open()
        publish(r, TP0, [f"j-{i}" for i in range(50)])
        await start(r)
        await until(lambda: TP0 in r.consumer.paused(), "fetching paused")
        await until(lambda: r.worker.scheduler.calling == 0, "every call returned")
        assert r.worker.in_flight == 8, "the results awaiting acks hold the cap"
        assert len(r.client.started) == 8
        r.producer.ack_gate.set()
        await until(lambda: r.consumer.committed_offset(TP0) == 50, "the rest flows once acks come")


async def test_revocation_mid_flight_gives_running_jobs_time_and_drops_what_waits() -> None:
    async with rig(partitions=2, concurrency=2) as r:
        publish(r, TP0, ["a-0", "a-1", "a-2"])
        publish(r, TP1, ["b-0"])
        await start(r)
        await until(lambda: len(r.client.calls) == 2, "two calls in flight")
        held_before = set(r.client.calls)
        revoking = asyncio.create_task(r.consumer.rebalance(revoke=[TP0], assign=[]))
        await until(lambda: r.worker.scheduler.waiting(TP0) == 0, "the jobs fetched ahead of TP0 are dropped")
        assert not revoking.done(), "the revocation waits for the running jobs"
        r.client.release(*[i for i in held_before if i.startswith("a-")])
        await revoking
        assert r.worker.assignment == [TP1]
        assert r.consumer.committed_offset(TP0) == len([i for i in held_before if i.startswith("a-")])
        assert "a-2" not in r.client.started, "a job of a revoked partition does not start"
        r.client.open()
        await until(lambda: r.consumer.committed_offset(TP1) == 1, "the other partition goes on")
        assert r.worker.scheduler.violations() == []


async def test_jobs_still_running_at_the_revoke_timeout_are_cancelled_and_left_uncommitted() -> None:
    async with rig(partitions=1, concurrency=2, revoke_timeout_s=0.0) as r:
        publish(r, TP0, ["stuck-0", "stuck-1"])
        await start(r)
        await until(lambda: len(r.client.calls) == 2, "two calls in flight")
        await r.consumer.rebalance(revoke=[TP0], assign=[])
        assert sorted(r.client.cancelled) == ["stuck-0", "stuck-1"]
        assert r.producer.sent == [] and r.consumer.committed_offset(TP0) == 0, "nothing past the start"
        assert r.worker.scheduler.held == 0 and r.worker.scheduler.calling == 0
        assert r.worker.ready is False, "no partitions: not ready"


async def test_a_completion_after_its_partition_was_revoked_is_never_committed() -> None:
    """The epoch guard: the job finishes while its partition's final commit is on its way; the partition is
    then assigned again (a new epoch). The late completion must count for neither ledger."""
    async with rig(partitions=1, concurrency=2, revoke_timeout_s=0.0, commit_interval_ms=600_000) as r:
        publish(r, TP0, ["first", "late"])
        await start(r)
        await until(lambda: len(r.client.calls) == 2, "both calls in flight")
        r.client.release("first")
        await until(lambda: len(r.producer.sent) == 1, "'first' acknowledged")
        r.consumer.commit_gate.clear()
        revoking = asyncio.create_task(r.consumer.rebalance(revoke=[TP0], assign=[]))
        await until(r.consumer.commit_waiting.is_set, "the revocation's final commit on its way")
        assert r.worker.assignment == [], "the ledger is released before the final commit"
        r.client.release("late")  # finishes while the revocation commits
        await until(lambda: value(r.worker.metrics.stale_completions) == 1, "the late completion seen stale")
        r.consumer.commit_gate.set()
        await revoking
        assert r.consumer.committed_offset(TP0) == 1, "'first' committed, the late job not"
        r.client.open()
        await r.consumer.rebalance(revoke=[], assign=[TP0])
        await until(lambda: r.client.started.count("late") == 2, "assigned again, the late job is done again")
        assert r.client.started.count("first") == 1, "the committed one is not"


async def test_a_stop_drains_the_running_jobs_drops_the_read_ahead_and_commits_before_returning() -> None:
    async with rig(concurrency=2) as r:
        publish(r, TP0, ["a", "b", "c", "d"])
        await start(r)
        await until(lambda: len(r.client.calls) == 2 and r.worker.scheduler.ready == 1, "busy with read-ahead")
        r.stop.set()
        await until(lambda: r.worker.scheduler.draining, "draining")
        assert r.worker.ready is False, "a draining worker is not ready"
        assert r.worker.alive is True, "but it is alive"
        r.client.release("a", "b")
        assert r.task is not None
        await r.task
        assert sorted(r.producer.job_ids("completions")) == ["a", "b"]
        assert r.consumer.committed_offset(TP0) == 2, "the drained jobs are committed, the dropped ones are not"
        assert r.client.started == ["a", "b"] and r.consumer.stopped
        assert r.producer.flushed == 1


async def test_jobs_still_running_at_the_drain_deadline_are_cancelled() -> None:
    async with rig(concurrency=2, drain_timeout_s=0.0) as r:
        publish(r, TP0, ["a", "b"])
        await start(r)
        await until(lambda: len(r.client.calls) == 2, "both calls in flight")
        r.stop.set()
        assert r.task is not None
        await r.task
        assert sorted(r.client.cancelled) == ["a", "b"] and r.producer.sent == []
        assert r.consumer.committed_offset(TP0) == 0, "nothing past the start"


async def test_key_order_holds_through_the_worker_whatever_order_calls_return_in() -> None:
    async with rig(concurrency=4, ordering="key") as r:
        publish(r, TP0, ["k-0", "k-1", "k-2"], key=b"same")
        publish(r, TP0, ["other"], key=b"else")
        await start(r)
        await until(lambda: set(r.client.calls) == {"k-0", "other"}, "one job per key calling")
        r.client.release("other")
        r.client.release("k-0")
        await until(lambda: "k-1" in r.client.calls, "k-1 starts after k-0 is acknowledged")
        r.client.open()
        await until(lambda: r.consumer.committed_offset(TP0) == 4, "all committed")
        keyed = [i for i in r.producer.job_ids("completions") if i.startswith("k-")]
        assert keyed == ["k-0", "k-1", "k-2"]


async def test_a_failed_produce_is_retried_with_the_delivery_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_module, "DELIVERY_BACKOFF", Backoff(0.0, 0.0))
    async with rig() as r:
        r.client.open()
        r.producer.failures_to_come = 3
        publish(r, TP0, ["j"])
        await start(r)
        await until(lambda: r.consumer.committed_offset(TP0) == 1, "committed after the retries")
        assert value(r.worker.metrics.produce_retries) == 3 and r.producer.job_ids("completions") == ["j"]


async def test_readyz_answers_503_until_partitions_are_owned_and_again_once_draining() -> None:
    async with rig(concurrency=1) as r:
        health = HealthServer(r.worker.metrics, alive=lambda: r.worker.alive, ready=lambda: r.worker.ready)
        await health.start("127.0.0.1", 0)
        try:
            async with aiohttp.ClientSession() as http:

                async def readyz() -> int:
                    async with http.get(f"http://127.0.0.1:{health.port}/readyz") as answer:
                        return answer.status

                assert await readyz() == 503, "not started"
                publish(r, TP0, ["held"])
                await start(r)
                assert await readyz() == 200
                await until(lambda: "held" in r.client.calls, "the job calling")
                r.stop.set()
                await until(lambda: r.worker.scheduler.draining, "draining")
                assert await readyz() == 503, "draining"
                r.client.release("held")
                assert r.task is not None
                await r.task
                assert await readyz() == 503, "stopped"
        finally:
            await health.stop()
