"""What the worker does when Kafka or its own code fails, on in-memory fakes (deterministic, no broker).

An error that passes is waited out; a record the broker refuses as too large is routed, never left blocking
its partition; an error that will not pass stops the worker with one clear cause instead of leaving a zombie;
a job whose processing raises goes to review and its partition moves on; a committed-offset read that fails
is never taken for "no commit".
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    NotCoordinatorError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import OffsetAndMetadata, TopicPartition

import pipeline.worker.intake as intake_module
import pipeline.worker.starts as starts_module
from pipeline.backoff import Backoff
from pipeline.worker import WorkerFailed
from schemas import UserMessage
from schemas.topics import ApiFailure, Job, Review
from tests.unit.worker.fakes import INPUT, Rig, rig, start, until

TP0 = TopicPartition(INPUT, 0)


def job(job_id: str, text: str = "hello") -> bytes:
    return msgspec.json.encode(Job(id=job_id, messages=[UserMessage(content=text)]))


def publish(rig: Rig, ids: list[str], tp: TopicPartition = TP0) -> None:
    for job_id in ids:
        rig.consumer.append(tp, job(job_id))


def reviews(rig: Rig) -> list[Review]:
    return [msgspec.json.decode(value, type=Review) for topic, _, value, _ in rig.producer.sent if topic == "review"]


def value(metric: object) -> float:
    """A metric's value as a scrape reads it (gauges set by a function included)."""
    return float(metric.collect()[0].samples[0].value)  # type: ignore[attr-defined]


async def failed_with(rig: Rig) -> str:
    assert rig.task is not None
    with pytest.raises(WorkerFailed) as raised:
        await asyncio.wait_for(rig.task, timeout=10)
    rig.task = None
    return str(raised.value)


@pytest.fixture
def quick_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Committed-offset reads retried at once, and given up on in the rebalance callback after 50 ms."""
    monkeypatch.setattr(starts_module, "READ_IN_CALLBACK_S", 0.05)
    monkeypatch.setattr(starts_module, "READ_BACKOFF", Backoff(0.0, 0.0))


async def test_a_job_whose_processing_raises_goes_to_review_and_its_partition_moves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with rig(concurrency=2) as r:
        real_process = r.worker._processor.process

        async def process(raw: bytes, source: object, *rest: object) -> object:
            if b"poison" in raw:
                raise ZeroDivisionError("a bug")
            return await real_process(raw, source, *rest)  # type: ignore[arg-type]

        monkeypatch.setattr(r.worker._processor, "process", process)
        r.client.open()
        r.consumer.append(TP0, job("bad", "poison"))
        publish(r, ["fine-1", "fine-2"])
        await start(r)
        await until(lambda: r.consumer.committed_offset(TP0) == 3, "the commit passes the broken job")
        [review] = reviews(r)
        assert review.id == "bad" and isinstance(review.reason, ApiFailure)
        assert review.reason.failure == "internal" and "ZeroDivisionError" in review.reason.message
        assert review.job is not None, "the job is kept, so replay can send it again once the bug is fixed"
        assert value(r.worker.metrics.job_failures) == 1 and r.worker.alive


async def test_a_result_that_cannot_be_encoded_goes_to_review_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig() as r:
        real_deliver = r.worker._sink.deliver
        broken = {"first": True}

        async def deliver(routed: object, record: object) -> object:
            if broken.pop("first", False):
                raise TypeError("cannot encode")
            return await real_deliver(routed, record)  # type: ignore[arg-type]

        monkeypatch.setattr(r.worker._sink, "deliver", deliver)
        r.client.open()
        publish(r, ["j"])
        await start(r)
        await until(lambda: r.consumer.committed_offset(TP0) == 1, "committed")
        assert [x.reason.failure for x in reviews(r)] == ["internal"]  # type: ignore[union-attr]


async def test_an_authorization_error_on_produce_stops_the_worker_with_its_cause() -> None:
    async with rig() as r:
        r.client.open()
        r.producer.failures_to_come = 1
        r.producer.failure = TopicAuthorizationFailedError()
        publish(r, ["j"])
        await start(r)
        cause = await failed_with(r)
        assert "TopicAuthorizationFailedError" in cause and "producing to completions" in cause
        assert r.consumer.stopped, "it left the group"
        assert r.consumer.committed_offset(TP0) == 0, "the job it could not deliver is not committed"
        assert value(r.worker.metrics.worker_failures.labels("delivering a result")) == 1


async def test_a_record_the_broker_refuses_as_too_large_is_routed_as_oversize_not_retried_for_ever() -> None:
    async with rig() as r:
        r.client.open()
        r.producer.max_value_bytes = 300  # a topic whose max.message.bytes is below our record limit
        publish(r, ["big"])
        await start(r)
        await until(lambda: r.consumer.committed_offset(TP0) == 1, "committed")
        [review] = reviews(r)
        assert review.id == "big" and review.reason.failure == "oversize"  # type: ignore[union-attr]
        assert "refused" in review.reason.message  # type: ignore[union-attr]


async def test_an_error_that_will_not_pass_on_fetch_stops_the_worker() -> None:
    async with rig() as r:
        await start(r)
        r.consumer.fetch_error = TopicAuthorizationFailedError()
        cause = await failed_with(r)
        assert "fetching" in cause and "TopicAuthorizationFailedError" in cause


async def test_a_commit_refused_for_good_stops_the_worker_but_one_that_passes_is_retried() -> None:
    async with rig() as r:
        r.client.open()
        r.consumer.commit_error = NotCoordinatorError()
        publish(r, ["j"])
        await start(r)
        await until(lambda: value(r.worker.metrics.commit_failures) >= 2, "commits failing and retried")
        r.consumer.commit_error = None
        await until(lambda: r.consumer.committed_offset(TP0) == 1, "committed once the coordinator is back")
        r.consumer.commit_error = GroupAuthorizationFailedError()
        publish(r, ["k"])
        cause = await failed_with(r)
        assert "committing offsets" in cause and "GroupAuthorizationFailedError" in cause


async def test_a_bug_in_a_rebalance_callback_stops_the_worker_instead_of_being_swallowed() -> None:
    async with rig() as r:
        r.admin.committed_errors = [RuntimeError("a bug reading offsets")]
        r.task = asyncio.create_task(r.worker.run(r.stop))
        cause = await failed_with(r)
        assert "assigning partitions" in cause and "a bug reading offsets" in cause


@pytest.mark.usefixtures("quick_reads")
async def test_a_coordinator_that_does_not_answer_never_restarts_a_partition_at_zero() -> None:
    """The critical defect: a group-level OffsetFetch error used to read as "no commit", so the partition
    restarted at offset 0 and the whole retained topic was paid for again. Now it is held until the read
    answers, then starts at the committed offset."""
    async with rig() as r:
        r.client.open()
        publish(r, [f"j-{i}" for i in range(8)])
        r.consumer.committed[TP0] = OffsetAndMetadata(5, "")  # a previous owner handled 0..4
        r.admin.committed_errors = [CoordinatorLoadInProgressError()] * 3
        r.task = asyncio.create_task(r.worker.run(r.stop))
        await until(lambda: r.consumer.committed_offset(TP0) == 8, "the rest done")
        assert sorted(r.client.started) == ["j-5", "j-6", "j-7"], "nothing before the commit ran again"
        assert all(commit[TP0].offset >= 5 for commit in r.consumer.commits), "no commit moved backwards"
        assert value(r.worker.metrics.committed_read_failures) == 3


@pytest.mark.usefixtures("quick_reads")
async def test_a_partition_waiting_for_its_committed_offset_is_not_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    async with rig() as r:
        r.client.open()
        publish(r, ["j-0"])
        gate = asyncio.Event()
        real = r.admin.committed
        calls = 0

        async def slow_committed(group: str, partitions: object) -> dict[TopicPartition, OffsetAndMetadata]:
            nonlocal calls
            calls += 1
            if calls > 1:
                await gate.wait()
                return await real(group, partitions)
            raise CoordinatorLoadInProgressError()

        monkeypatch.setattr(r.admin, "committed", slow_committed)
        r.task = asyncio.create_task(r.worker.run(r.stop))
        await until(lambda: calls == 2, "reading again in the background")
        assert TP0 in r.consumer.paused() and r.client.started == []
        assert value(r.worker.metrics.partitions_not_started) == 1 and r.worker.ready is False
        gate.set()
        await until(lambda: r.consumer.committed_offset(TP0) == 1, "started once the read answered")


async def test_an_authorization_error_reading_committed_offsets_stops_the_worker() -> None:
    async with rig() as r:
        r.admin.committed_errors = [GroupAuthorizationFailedError()]
        r.task = asyncio.create_task(r.worker.run(r.stop))
        assert "GroupAuthorizationFailedError" in await failed_with(r)


async def test_reset_none_leaves_a_partition_without_commit_unstarted_and_says_so() -> None:
    async with rig(auto_offset_reset="none") as r:
        r.client.open()
        publish(r, ["j-0"])
        r.task = asyncio.create_task(r.worker.run(r.stop))
        await until(lambda: value(r.worker.metrics.partitions_not_started) == 1, "not started")
        assert TP0 in r.consumer.paused() and r.client.started == [] and r.worker.assignment == []


async def test_reset_latest_starts_a_partition_without_commit_at_the_log_end() -> None:
    async with rig(auto_offset_reset="latest") as r:
        r.client.open()
        publish(r, ["old-0", "old-1"])
        await start(r)
        publish(r, ["new"])
        await until(lambda: r.consumer.committed_offset(TP0) == 3, "the new job done")
        assert r.client.started == ["new"]


async def test_a_job_held_too_long_makes_the_worker_not_alive() -> None:
    async with rig(stuck_job_s=0.05) as r:
        publish(r, ["stuck"])
        await start(r)
        await until(lambda: "stuck" in r.client.calls, "calling")
        assert r.worker.alive
        await until(lambda: value(r.worker.metrics.oldest_job_seconds) > 0.05, "held past the bound")
        assert r.worker.alive is False


async def test_a_fetch_loop_held_by_a_rebalance_does_not_fail_liveness() -> None:
    async with rig() as r:
        await start(r)
        r.worker._intake.last_turn = time.monotonic() - 3600
        r.worker._intake.rebalancing = True
        assert r.worker.alive, "a rebalance holds getmany: a restart would only rebalance again"
        r.worker._intake.rebalancing = False
        assert r.worker.alive is False, "a fetch loop stalled outside a rebalance is not alive"


async def test_a_partition_far_behind_a_stuck_head_stops_fetching_until_the_head_moves() -> None:
    async with rig(concurrency=4) as r:
        r.worker._span_limit = 6  # MAX_SPAN_BEHIND_HEAD, small enough to reach here
        r.consumer.append(TP0, job("stuck"))
        publish(r, [f"j-{i}" for i in range(30)])
        await start(r)
        await until(lambda: "stuck" in r.client.calls, "the head calling")
        r.client.release_all = True  # every later call returns at once; the head stays stuck
        r.client.release(*[i for i in r.client.calls if i != "stuck"])
        await until(lambda: TP0 in r.consumer.paused() and r.worker.scheduler.held == 1, "held behind the head")
        fetched = r.worker.metrics.jobs_consumed._value.get()
        assert 6 < fetched < 31, "fetching stopped a little past the limit, not at the end of the log"
        r.client.release("stuck")
        await until(lambda: r.consumer.committed_offset(TP0) == 31, "fetching resumed once the head moved")


async def test_fetches_that_keep_failing_with_a_passing_error_stop_the_worker_in_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake_module, "FETCH_BACKOFF", Backoff(0.01, 0.01))
    monkeypatch.setattr(intake_module, "FETCH_FAILING_FOR_S", 2.0)
    async with rig() as r:
        r.client.open()
        await start(r)
        r.consumer.fetch_error = KafkaConnectionError("broker away")
        await until(lambda: r.consumer.fetch_failures >= 3, "a few failed fetches")
        r.consumer.fetch_error = None  # a short outage passes
        publish(r, ["after-the-outage"])
        await until(lambda: r.consumer.committed_offset(TP0) == 1, "fetching again")
        r.consumer.fetch_error = KafkaConnectionError("broker away for good")
        assert "fetching" in await failed_with(r)


async def test_while_the_provider_refuses_every_call_nothing_is_fetched_and_the_worker_is_not_ready() -> None:
    async with rig(max_poll_interval_ms=4000, revoke_timeout_s=1.0) as r:  # a keep-alive poll every second
        r.client.open()
        await start(r)
        r.client.provider_available = False  # its breaker opened: a bad key, no quota…
        await until(lambda: TP0 in r.consumer.paused(), "fetching paused")
        assert r.worker.ready is False and r.worker.alive
        publish(r, ["waits"])
        polls = r.consumer.fetch_calls
        await until(lambda: r.consumer.fetch_calls > polls, "the consumer still polled (it stays in its group)")
        assert r.client.started == [], "nothing fetched for a provider that refuses every call"
        r.client.provider_available = True
        await until(lambda: r.consumer.committed_offset(TP0) == 1, "resumed once the provider answers")
        assert r.worker.ready
