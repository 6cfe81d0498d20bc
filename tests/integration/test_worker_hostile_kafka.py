"""The worker against Kafka as production clusters behave: the real broker behind the fault-injecting proxy.

Each test reproduces a defect that only a real cluster triggers (the embedded broker never answers with a
coordinator error, keeps no commit metadata, has no ACLs and no size limits) and shows what the worker does
now: a coordinator that does not answer never restarts a partition at offset 0, a refused record is routed
instead of blocking its partition, an error that will not pass stops the worker with its cause, and the done
map skips finished work end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import pytest
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import TopicPartition

import pipeline.commands.replay as replay_module
from pipeline.client import ChatClient
from pipeline.kafka import KafkaSettings, committed_with_metadata, make_admin
from pipeline.ledger import decode_done_map
from pipeline.metrics import Metrics
from pipeline.testing import ApiKey, KafkaProxy
from pipeline.worker import Worker, WorkerFailed
from schemas.topics import ApiFailure
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import (
    Topics,
    client_config,
    collect,
    committed,
    create_topics,
    job,
    publish,
    running_worker,
    wait_until,
    worker_env,
    worker_process,
    worker_settings,
)


def through(proxy: KafkaProxy) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=proxy.bootstrap_servers)


async def run_until_failed(kafka: KafkaSettings, topics: Topics, base_url: str, timeout: float = 60) -> str:
    """Run a worker that is expected to stop by itself with :class:`WorkerFailed`; its message."""
    client = ChatClient(client_config(base_url))
    worker = Worker(worker_settings(topics), kafka, client, Metrics())
    try:
        with pytest.raises(WorkerFailed) as failed:
            await asyncio.wait_for(worker.run(asyncio.Event()), timeout=timeout)
    finally:
        await client.aclose()
    return str(failed.value)


async def test_a_coordinator_that_does_not_answer_for_committed_offsets_never_restarts_the_group_at_zero(
    kafka_proxy: KafkaProxy, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    """OffsetFetch v3 answered with COORDINATOR_LOAD_IN_PROGRESS for the whole group (a broker restarting):
    aiokafka reads that as "no commits"; the worker used to seek every partition to 0 and pay again for the
    whole retained topic. Now it waits for an answer and starts at the committed offset."""
    kafka = through(kafka_proxy)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    sim = await make_simulator()
    await publish(kafka, topics.input, [job(f"old-{i}") for i in range(10)], partition=0)
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)):
        await collect(kafka, topics, 10)
    assert await committed(kafka, topics.group, topics.input, 1) == {0: 10}
    await publish(kafka, topics.input, [job(f"new-{i}") for i in range(5)], partition=0)
    sim.reset_stats()
    loading = kafka_proxy.fail(ApiKey.OFFSET_FETCH, CoordinatorLoadInProgressError)
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)) as running:
        await wait_until(lambda: loading.hits >= 3, timeout=60)
        kafka_proxy.remove(loading)  # the coordinator has loaded
        await wait_until(lambda: sim.stats().requests >= 5, timeout=60)
        await wait_until(lambda: running.worker.scheduler.held == 0, timeout=30)
    assert sim.stats().requests == 5, "only the new jobs were called; none of the ten already done"
    assert running.worker.metrics.committed_read_failures._value.get() >= 1
    assert await committed(kafka, topics.group, topics.input, 1) == {0: 15}


async def test_a_record_the_broker_refuses_as_too_large_goes_to_review_and_the_partition_moves_on(
    kafka_proxy: KafkaProxy, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    """A topic whose max.message.bytes is below KAFKA_MAX_RECORD_BYTES refuses the result: the worker used to
    retry it for ever, pinning its partition's commit."""
    kafka = through(kafka_proxy)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    sim = await make_simulator()
    refused = kafka_proxy.fail_partitions(ApiKey.PRODUCE, MessageSizeTooLargeError, topics={topics.output})
    await publish(kafka, topics.input, [job("big"), job("after")], partition=0)
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)):
        collected = await collect(kafka, topics, 2, timeout=60)
    assert refused.hits >= 2, "the results were refused (each sent again once, then replaced)"
    reviews = {r.id: r for r in collected.review_records}
    assert set(reviews) == {"big", "after"} and collected.results == []
    assert all(isinstance(r.reason, ApiFailure) and r.reason.failure == "oversize" for r in reviews.values())
    assert await committed(kafka, topics.group, topics.input, 1) == {0: 2}, "the partition moved on"


async def test_an_authorization_error_on_the_output_topic_stops_the_worker_with_its_cause(
    kafka_proxy: KafkaProxy, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    """TOPIC_AUTHORIZATION_FAILED on produce: the worker used to retry for ever, alive and doing nothing."""
    kafka = through(kafka_proxy)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    sim = await make_simulator()
    kafka_proxy.fail_partitions(ApiKey.PRODUCE, TopicAuthorizationFailedError, topics={topics.output})
    await publish(kafka, topics.input, [job("denied")], partition=0)
    cause = await run_until_failed(kafka, topics, sim.base_url)
    assert "TopicAuthorizationFailedError" in cause and topics.output in cause
    assert await committed(kafka, topics.group, topics.input, 1) in ({}, {0: 0}), "nothing committed past it"


async def test_an_authorization_error_on_fetch_stops_the_worker(
    kafka_proxy: KafkaProxy, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = through(kafka_proxy)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    sim = await make_simulator()
    kafka_proxy.fail_partitions(ApiKey.FETCH, TopicAuthorizationFailedError, topics={topics.input})
    cause = await run_until_failed(kafka, topics, sim.base_url)
    assert "fetching" in cause and "TopicAuthorizationFailedError" in cause


async def test_pipeline_run_exits_1_with_one_line_naming_a_fatal_kafka_error(
    kafka_proxy: KafkaProxy, topic_prefix: str, make_simulator: MakeSimulator, tmp_path: Path
) -> None:
    kafka = through(kafka_proxy)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    sim = await make_simulator()
    kafka_proxy.fail_partitions(ApiKey.PRODUCE, TopicAuthorizationFailedError, topics={topics.review})
    await publish(kafka, topics.input, [b"not a job"], partition=0)
    log = tmp_path / "worker.log"
    with worker_process(worker_env(kafka, topics, sim.base_url), log) as process:
        code = await asyncio.to_thread(process.wait, 60)
    assert code == 1
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("pipeline run: worker stopped: producing to "), last
    assert "TopicAuthorizationFailedError" in last and topics.review in last


async def test_the_done_map_skips_finished_work_after_a_worker_is_killed(
    kafka_proxy: KafkaProxy, topic_prefix: str, make_simulator: MakeSimulator, tmp_path: Path
) -> None:
    """With commit metadata kept (as Apache Kafka keeps it; the proxy does it for the embedded broker): a
    worker killed while a slow job holds its partition's commit at offset 0 has committed the map of the 20
    jobs it finished beyond it; the next owner calls the provider for the slow job only."""
    kafka_proxy.keep_commit_metadata = True
    kafka = through(kafka_proxy)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    sim = await make_simulator()
    values = [job("slow", "Take your time [[sim: latency=60000]]")] + [job(f"fast-{i}") for i in range(20)]
    await publish(kafka, topics.input, values, partition=0)
    log = tmp_path / "worker.log"
    partition = TopicPartition(topics.input, 0)
    with worker_process(worker_env(kafka, topics, sim.base_url), log) as process:
        await collect(kafka, topics, 20, timeout=60)
        for _ in range(100):  # the commit after the last result carries the map of all 20
            done = decode_done_map(0, (await committed_metadata(kafka, topics.group, partition)))
            if len([o for o in range(1, 21) if o in done]) == 20:
                break
            await asyncio.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert await committed(kafka, topics.group, topics.input, 1) == {0: 0}, "the slow head holds the commit"
    sim.reset_stats()
    settings = worker_settings(topics, drain_timeout_s=0.5)
    async with running_worker(kafka, settings, client_config(sim.base_url)) as again:
        metrics = again.worker.metrics
        await wait_until(lambda: sim.stats().requests >= 1, timeout=60)
        await wait_until(lambda: metrics.jobs_skipped._value.get() >= 20, timeout=30)
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: sim.stats().requests > 1, timeout=1.0)
    assert sim.stats().requests == 1, "only the unfinished slow job is sent again"
    assert metrics.jobs_skipped._value.get() == 20


async def test_without_kept_metadata_the_worker_learns_it_and_writes_no_more_maps(
    kafka_proxy: KafkaProxy, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    """The embedded broker reads commit metadata back empty: the first commit that carries a map is read back
    in the worker's own group (no probe group to authorise), and maps stop."""
    kafka = through(kafka_proxy)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    sim = await make_simulator()
    values = [job("slow", "Take your time [[sim: latency=3000]]")] + [job(f"fast-{i}") for i in range(3)]
    await publish(kafka, topics.input, values, partition=0)
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)) as running:
        await collect(kafka, topics, 3, timeout=60)
        await wait_until(lambda: running.worker.offsets.keeps_metadata is False, timeout=30)
        assert running.worker.metrics.commit_metadata_supported._value.get() == 0


async def committed_metadata(kafka: KafkaSettings, group: str, partition: TopicPartition) -> str:
    admin = make_admin(kafka)
    await admin.start()
    try:
        stored = await committed_with_metadata(admin, group, [partition])
    finally:
        await admin.close()
    return stored[partition].metadata if partition in stored else ""


async def test_a_replay_cursor_that_cannot_be_read_stops_the_run_instead_of_replaying_everything(
    kafka_proxy: KafkaProxy, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pipeline replay`` keeps a cursor per reason in a consumer group; read as "no cursor", a group-level
    OffsetFetch error would send every review record of that reason again."""
    monkeypatch.setattr(replay_module, "CURSOR_READ_WITHIN_S", 1.0)
    kafka = through(kafka_proxy)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    review = TopicPartition(topics.review, 0)
    await replay_module.move_cursors(kafka, topics.group, {"api_error": {}}, {review: 7})
    assert await replay_module.read_cursors(kafka, topics.group, {"api_error"}, [review]) == {"api_error": {review: 7}}
    loading = kafka_proxy.fail(ApiKey.OFFSET_FETCH, CoordinatorLoadInProgressError, times=2)
    assert await replay_module.read_cursors(kafka, topics.group, {"api_error"}, [review]) == {"api_error": {review: 7}}
    assert loading.hits == 2, "read again until the coordinator answered"
    kafka_proxy.fail(ApiKey.OFFSET_FETCH, CoordinatorLoadInProgressError)
    with pytest.raises(CoordinatorLoadInProgressError):
        await replay_module.read_cursors(kafka, topics.group, {"api_error"}, [review])
