"""The fault-injecting Kafka proxy (pipeline/testing/) by itself: each fault as a plain aiokafka client sees it."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    NotCoordinatorError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.commit import OffsetFetchRequest, OffsetFetchRequest_v1
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.testing import ApiKey, KafkaProxy, ProtocolError, UnsupportedFault
from tests.fixtures.broker import Broker
from tests.integration.harness import FAST_GROUP

# --- helpers ------------------------------------------------------------------------------------------------------


async def create_topic(proxy: KafkaProxy, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=proxy.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def started_producer(proxy: KafkaProxy, **options: object) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=proxy.bootstrap_servers, acks="all", **options)
    await producer.start()
    return producer


async def read_partition(bootstrap: str, tp: TopicPartition, expected: int) -> tuple[list[bytes], int | None]:
    """The values of a partition from offset 0 (assign, no group) once ``expected`` arrived, and the high watermark
    of the last fetch (the partition's log end: nothing was appended beyond what was read if they agree)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        values: list[bytes] = []
        deadline = time.monotonic() + 10
        while (len(values) < expected or consumer.highwater(tp) is None) and time.monotonic() < deadline:
            for records in (await consumer.getmany(tp, timeout_ms=200)).values():
                values.extend(r.value for r in records if r.value is not None)
        return values, consumer.highwater(tp)
    finally:
        await consumer.stop()


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait until the condition holds (polling: the proxy's counters are plain values)."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still not true after {timeout}s")


@pytest.fixture
async def admin(kafka_proxy: KafkaProxy) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_proxy.bootstrap_servers)
    await client.start()
    yield client
    await client.close()


async def commit(proxy: KafkaProxy, group: str, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=proxy.bootstrap_servers, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


# --- pass-through -------------------------------------------------------------------------------------------------


async def test_produce_consume_and_commit_pass_through_and_every_connection_goes_through_the_proxy(
    kafka_proxy: KafkaProxy, topic_prefix: str
) -> None:
    topic, tp = f"{topic_prefix}-pass", TopicPartition(f"{topic_prefix}-pass", 0)
    await create_topic(kafka_proxy, topic)
    producer = await started_producer(kafka_proxy)
    try:
        for i in range(3):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)
        # the cluster as the client sees it: only the proxy's address
        proxy_address = kafka_proxy.bootstrap_servers
        assert {f"{b.host}:{b.port}" for b in producer.client.cluster.brokers()} == {proxy_address}
    finally:
        await producer.stop()
    assert await read_partition(kafka_proxy.bootstrap_servers, tp, 3) == ([b"r0", b"r1", b"r2"], 3)
    await commit(kafka_proxy, f"{topic_prefix}-group", {tp: OffsetAndMetadata(3, "")})

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_proxy.bootstrap_servers, group_id=f"{topic_prefix}-group")
    await consumer.start()
    try:
        assert await consumer.committed(tp) == 3
    finally:
        await consumer.stop()
    seen = kafka_proxy.versions_seen()
    for api in (ApiKey.API_VERSIONS, ApiKey.METADATA, ApiKey.PRODUCE, ApiKey.FETCH, ApiKey.FIND_COORDINATOR):
        assert api in seen
    assert seen[ApiKey.OFFSET_COMMIT] == {3}
    assert seen[ApiKey.OFFSET_FETCH] == {3}  # aiokafka 0.14 sends OffsetFetch v3 (see REFERENCES.md)
    assert seen[ApiKey.PRODUCE] == {7}
    assert seen[ApiKey.FETCH] == {11}
    assert len({r.connection for r in kafka_proxy.requests(ApiKey.FETCH)}) >= 1


async def test_api_versions_are_capped_to_what_the_proxy_decodes(kafka_proxy: KafkaProxy) -> None:
    client = AIOKafkaClient(bootstrap_servers=kafka_proxy.bootstrap_servers)
    await client.bootstrap()
    try:
        conn = await client._get_conn(client.cluster.brokers().pop().nodeId)
        assert conn._versions[ApiKey.METADATA][1] <= 5
        assert conn._versions[ApiKey.FIND_COORDINATOR][1] <= 1
    finally:
        await client.close()
    # An ApiVersions request newer than aiokafka's is refused as Kafka refuses one: UNSUPPORTED_VERSION, v0 body.
    answer = await raw_exchange(kafka_proxy, api_key=ApiKey.API_VERSIONS, version=3, body=b"\x00\x00\x00")
    assert answer is not None
    error_code, count, api_key, low, high = struct.unpack(">hihhh", answer[4:])
    assert (error_code, count, api_key, low, high) == (35, 1, ApiKey.API_VERSIONS, 0, 2)


# --- top-level errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [CoordinatorLoadInProgressError, CoordinatorNotAvailableError, NotCoordinatorError],
    ids=lambda e: e.__name__,
)
async def test_a_group_level_offset_fetch_error_makes_aiokafka_admin_see_no_offsets(
    kafka_proxy: KafkaProxy, admin: AIOKafkaAdminClient, topic_prefix: str, error: type[KafkaError]
) -> None:
    group, tp = f"{topic_prefix}-group", TopicPartition(f"{topic_prefix}-offsets", 0)
    await create_topic(kafka_proxy, tp.topic)
    await commit(kafka_proxy, group, {tp: OffsetAndMetadata(5, "")})
    assert (await admin.list_consumer_group_offsets(group, partitions=[tp]))[tp].offset == 5

    rule = kafka_proxy.fail(ApiKey.OFFSET_FETCH, error, times=1)
    # aiokafka checks only the per-partition codes: the group-level error reads as "nothing committed"
    assert await admin.list_consumer_group_offsets(group, partitions=[tp]) == {}
    assert rule.hits == 1

    # what was on the wire: the top-level error code and no topics, as a real broker answers
    kafka_proxy.fail(ApiKey.OFFSET_FETCH, error, times=1)
    client = AIOKafkaClient(bootstrap_servers=kafka_proxy.bootstrap_servers)
    await client.bootstrap()
    try:
        node = await admin.find_coordinator(group)
        failed = await client.send(node, OffsetFetchRequest(group, [(tp.topic, [tp.partition])]))
        assert (failed.API_VERSION, failed.error_code, failed.topics) == (3, error.errno, [])
        answered = await client.send(node, OffsetFetchRequest(group, [(tp.topic, [tp.partition])]))
        assert answered.error_code == 0
        assert answered.topics == [(tp.topic, [(0, 5, "", 0)])]
    finally:
        await client.close()


async def test_coordinator_and_group_errors_are_survived_by_a_group_consumer(
    kafka_proxy: KafkaProxy, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}-group-faults"
    await create_topic(kafka_proxy, topic)
    find = kafka_proxy.fail(ApiKey.FIND_COORDINATOR, CoordinatorNotAvailableError, times=1)
    join = kafka_proxy.fail(ApiKey.JOIN_GROUP, CoordinatorLoadInProgressError, times=1)
    producer = await started_producer(kafka_proxy)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_proxy.bootstrap_servers,
        group_id=f"{topic_prefix}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **FAST_GROUP,
    )
    try:
        await producer.send_and_wait(topic, b"first", partition=0)
        await consumer.start()
        first = await asyncio.wait_for(consumer.getone(), 30)
        assert first.value == b"first"
        assert (find.hits, join.hits) == (1, 1)

        heartbeat = kafka_proxy.fail(ApiKey.HEARTBEAT, NotCoordinatorError, times=1)
        lookups = len(kafka_proxy.requests(ApiKey.FIND_COORDINATOR))
        await until(lambda: heartbeat.hits == 1)
        await producer.send_and_wait(topic, b"second", partition=0)
        second = await asyncio.wait_for(consumer.getone(), 30)
        assert second.value == b"second"
        assert len(kafka_proxy.requests(ApiKey.FIND_COORDINATOR)) > lookups  # it looked the coordinator up again
    finally:
        await consumer.stop()
        await producer.stop()


# --- per-partition errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [TopicAuthorizationFailedError, MessageSizeTooLargeError, RecordListTooLargeError],
    ids=lambda e: e.__name__,
)
async def test_a_refused_produce_raises_the_matching_error_and_appends_nothing(
    kafka_proxy: KafkaProxy, topic_prefix: str, error: type[KafkaError]
) -> None:
    topic, tp = f"{topic_prefix}-refused", TopicPartition(f"{topic_prefix}-refused", 0)
    await create_topic(kafka_proxy, topic)
    producer = await started_producer(kafka_proxy)
    try:
        rule = kafka_proxy.fail_partitions(ApiKey.PRODUCE, error, topics={topic}, times=1)
        with pytest.raises(error):
            await producer.send_and_wait(topic, b"refused", partition=0)
        assert rule.hits == 1
        await producer.send_and_wait(topic, b"accepted", partition=0)
    finally:
        await producer.stop()
    assert await read_partition(kafka_proxy.bootstrap_servers, tp, 1) == ([b"accepted"], 1)


async def test_only_the_chosen_partition_of_a_produce_request_is_refused(
    kafka_proxy: KafkaProxy, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}-split"
    await create_topic(kafka_proxy, topic, partitions=2)
    producer = await started_producer(kafka_proxy)
    try:
        # aiokafka keeps one Produce request in flight per broker: while a slow one is out, the next two records
        # wait, and go out in one request
        kafka_proxy.delay(ApiKey.PRODUCE, 0.5, times=1)
        first = await producer.send(topic, b"first", partition=1)
        await until(lambda: len(kafka_proxy.requests(ApiKey.PRODUCE)) == 1)
        kafka_proxy.fail_partitions(ApiKey.PRODUCE, TopicAuthorizationFailedError, partitions={0}, times=1)
        refused = await producer.send(topic, b"to-0", partition=0)
        accepted = await producer.send(topic, b"to-1", partition=1)
        assert (await first).offset == 0
        with pytest.raises(TopicAuthorizationFailedError):
            await refused
        assert (await accepted).offset == 1
    finally:
        await producer.stop()
    assert len(kafka_proxy.requests(ApiKey.PRODUCE)) == 2
    bootstrap = kafka_proxy.bootstrap_servers
    assert await read_partition(bootstrap, TopicPartition(topic, 1), 2) == ([b"first", b"to-1"], 2)
    assert await read_partition(bootstrap, TopicPartition(topic, 0), 0) == ([], 0)


async def test_a_forwarded_produce_error_is_a_lost_acknowledgement(kafka_proxy: KafkaProxy, topic_prefix: str) -> None:
    topic, tp = f"{topic_prefix}-lost-ack", TopicPartition(f"{topic_prefix}-lost-ack", 0)
    await create_topic(kafka_proxy, topic)
    producer = await started_producer(kafka_proxy)
    try:
        kafka_proxy.fail_partitions(ApiKey.PRODUCE, TopicAuthorizationFailedError, forward=True, times=1)
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(topic, b"appended anyway", partition=0)
    finally:
        await producer.stop()
    assert await read_partition(kafka_proxy.bootstrap_servers, tp, 1) == ([b"appended anyway"], 1)


async def test_a_refused_offset_commit_raises_and_the_broker_keeps_the_old_offset(
    kafka_proxy: KafkaProxy, topic_prefix: str
) -> None:
    group, tp = f"{topic_prefix}-group", TopicPartition(f"{topic_prefix}-commits", 0)
    await create_topic(kafka_proxy, tp.topic)
    await commit(kafka_proxy, group, {tp: OffsetAndMetadata(2, "")})
    rule = kafka_proxy.fail_partitions(ApiKey.OFFSET_COMMIT, TopicAuthorizationFailedError, topics={tp.topic}, times=1)
    with pytest.raises(TopicAuthorizationFailedError):
        await commit(kafka_proxy, group, {tp: OffsetAndMetadata(7, "")})
    assert rule.hits == 1
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_proxy.bootstrap_servers, group_id=group)
    await consumer.start()
    try:
        assert await consumer.committed(tp) == 2
    finally:
        await consumer.stop()


async def test_fetch_partition_errors_reach_the_consumer_or_are_recovered(
    kafka_proxy: KafkaProxy, topic_prefix: str
) -> None:
    topic, tp = f"{topic_prefix}-fetch", TopicPartition(f"{topic_prefix}-fetch", 0)
    await create_topic(kafka_proxy, topic)
    producer = await started_producer(kafka_proxy)
    try:
        await producer.send_and_wait(topic, b"record", partition=0)
    finally:
        await producer.stop()
    kafka_proxy.fail_partitions(ApiKey.FETCH, TopicAuthorizationFailedError, topics={topic}, times=1)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_proxy.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, 0)
        with pytest.raises(TopicAuthorizationFailedError):
            await consumer.getmany(tp, timeout_ms=5000)
    finally:
        await consumer.stop()
    # a retriable one: aiokafka refreshes its metadata and fetches again
    rule = kafka_proxy.fail_partitions(ApiKey.FETCH, NotLeaderForPartitionError, topics={topic}, times=1)
    assert await read_partition(kafka_proxy.bootstrap_servers, tp, 1) == ([b"record"], 1)
    assert rule.hits == 1


# --- delays, closed and refused connections -----------------------------------------------------------------------


async def test_a_delayed_response_is_observed(kafka_proxy: KafkaProxy, topic_prefix: str) -> None:
    topic = f"{topic_prefix}-delay"
    await create_topic(kafka_proxy, topic)
    producer = await started_producer(kafka_proxy)
    try:
        rule = kafka_proxy.delay(ApiKey.PRODUCE, 0.6, times=1)
        started = time.monotonic()
        await producer.send_and_wait(topic, b"late", partition=0)
        assert time.monotonic() - started >= 0.6
        assert rule.hits == 1 and not rule.active
    finally:
        await producer.stop()


async def test_closed_connections_are_recovered_by_the_client(kafka_proxy: KafkaProxy, topic_prefix: str) -> None:
    topic, tp = f"{topic_prefix}-closed", TopicPartition(f"{topic_prefix}-closed", 0)
    await create_topic(kafka_proxy, topic)
    producer = await started_producer(kafka_proxy)
    try:
        await producer.send_and_wait(topic, b"before", partition=0)
        assert kafka_proxy.close_connections() >= 1
        await producer.send_and_wait(topic, b"after a close", partition=0)
        # closed on a request, before the broker saw it: the producer retries on a new connection
        rule = kafka_proxy.disconnect(ApiKey.PRODUCE, times=1)
        await producer.send_and_wait(topic, b"after a dropped request", partition=0)
        assert rule.hits == 1
    finally:
        await producer.stop()
    produce_connections = {r.connection for r in kafka_proxy.requests(ApiKey.PRODUCE)}
    assert len(produce_connections) == 3
    records = [b"before", b"after a close", b"after a dropped request"]
    assert await read_partition(kafka_proxy.bootstrap_servers, tp, 3) == (records, 3)


async def test_refused_connections_fail_a_bootstrap_then_recover(kafka_proxy: KafkaProxy, topic_prefix: str) -> None:
    kafka_proxy.refuse_connections()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_proxy.bootstrap_servers)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    assert kafka_proxy.refused >= 1
    kafka_proxy.accept_connections()

    topic = f"{topic_prefix}-refused-for-a-while"
    await create_topic(kafka_proxy, topic)
    producer = await started_producer(kafka_proxy)
    try:
        await producer.send_and_wait(topic, b"first", partition=0)
        refused_before = kafka_proxy.refused
        kafka_proxy.refuse_connections(0.5)
        kafka_proxy.close_connections()
        started = time.monotonic()
        await producer.send_and_wait(topic, b"after the refusal", partition=0)
        assert time.monotonic() - started >= 0.3
        assert kafka_proxy.refused > refused_before
    finally:
        await producer.stop()


# --- commit metadata ----------------------------------------------------------------------------------------------


async def test_commit_metadata_is_kept_and_served_back_when_switched_on(
    kafka_proxy: KafkaProxy, admin: AIOKafkaAdminClient, kafka_broker: Broker, topic_prefix: str
) -> None:
    group, tp = f"{topic_prefix}-group", TopicPartition(f"{topic_prefix}-meta", 0)
    await create_topic(kafka_proxy, tp.topic)
    await commit(kafka_proxy, group, {tp: OffsetAndMetadata(5, "pc1:xyz")})
    broker_reads_back = "" if kafka_broker.kind == "embedded" else "pc1:xyz"
    assert (await admin.list_consumer_group_offsets(group, partitions=[tp]))[tp] == (5, broker_reads_back)

    kafka_proxy.keep_commit_metadata = True
    await commit(kafka_proxy, group, {tp: OffsetAndMetadata(5, "pc1:xyz")})
    assert (await admin.list_consumer_group_offsets(group, partitions=[tp]))[tp] == (5, "pc1:xyz")
    # a refused commit is not kept: the broker's offset and the kept metadata stay
    kafka_proxy.fail_partitions(ApiKey.OFFSET_COMMIT, TopicAuthorizationFailedError, times=1)
    with pytest.raises(TopicAuthorizationFailedError):
        await commit(kafka_proxy, group, {tp: OffsetAndMetadata(9, "pc1:other")})
    assert (await admin.list_consumer_group_offsets(group, partitions=[tp]))[tp] == (5, "pc1:xyz")

    kafka_proxy.keep_commit_metadata = False
    assert (await admin.list_consumer_group_offsets(group, partitions=[tp]))[tp] == (5, broker_reads_back)


# --- rules that cannot apply, and clients that misbehave ----------------------------------------------------------


def test_a_fault_with_no_place_in_the_answer_is_refused_when_added(kafka_proxy: KafkaProxy) -> None:
    with pytest.raises(UnsupportedFault, match="top-level error"):
        kafka_proxy.fail(ApiKey.PRODUCE, TopicAuthorizationFailedError)  # Produce errors are per partition
    with pytest.raises(UnsupportedFault, match="OFFSET_FETCH v1"):
        kafka_proxy.fail(ApiKey.OFFSET_FETCH, NotCoordinatorError, version=1)  # v2 added the group-level code
    with pytest.raises(UnsupportedFault, match="per-partition"):
        kafka_proxy.fail_partitions(ApiKey.HEARTBEAT, NotCoordinatorError)
    with pytest.raises(UnsupportedFault, match="no protocol class"):
        kafka_proxy.fail(ApiKey.OFFSET_FETCH, NotCoordinatorError, version=8)
    with pytest.raises(TypeError):
        kafka_proxy.fail(ApiKey.HEARTBEAT, KafkaError)  # no errno


async def test_a_request_in_a_version_a_rule_cannot_apply_to_is_an_error_not_a_pass_through(
    kafka_proxy: KafkaProxy,
) -> None:
    kafka_proxy.fail(ApiKey.OFFSET_FETCH, NotCoordinatorError)  # fine for v2+, not for v1
    body = OffsetFetchRequest_v1("g", [("t", [0])]).encode()
    assert await raw_exchange(kafka_proxy, ApiKey.OFFSET_FETCH, 1, body) is None  # the connection is closed
    errors = kafka_proxy.take_errors()
    assert len(errors) == 1 and isinstance(errors[0], UnsupportedFault)
    assert "OFFSET_FETCH v1" in str(errors[0])


async def test_clients_that_vanish_or_send_garbage_do_not_stop_the_proxy(
    kafka_proxy: KafkaProxy, topic_prefix: str
) -> None:
    host, port = kafka_proxy.bootstrap_servers.split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    writer.write(struct.pack(">i", 100) + b"half a frame")  # then gone
    writer.close()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(struct.pack(">i", -5))
    assert await reader.read() == b""  # garbage: the proxy closes that connection
    writer.close()
    errors = kafka_proxy.take_errors()
    assert [type(e) for e in errors] == [ProtocolError]

    await create_topic(kafka_proxy, f"{topic_prefix}-still-serving")
    producer = await started_producer(kafka_proxy)
    try:
        await producer.send_and_wait(f"{topic_prefix}-still-serving", b"ok", partition=0)
    finally:
        await producer.stop()


async def raw_exchange(proxy: KafkaProxy, api_key: int, version: int, body: bytes) -> bytes | None:
    """Send one request frame by hand; its answer frame, or None when the connection was closed instead."""
    host, port = proxy.bootstrap_servers.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        client_id = b"raw"
        frame = struct.pack(">hhih", api_key, version, 7, len(client_id)) + client_id + body
        writer.write(struct.pack(">i", len(frame)) + frame)
        try:
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            return await reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
    finally:
        writer.close()
