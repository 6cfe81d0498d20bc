"""The Kafka proxy in front of a scripted fake broker: byte-for-byte pass-through, answers in request order,
address rewriting for a cluster of two, the wire helpers, and control from another thread."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from io import BytesIO

import pytest
from aiokafka.protocol.admin import ApiVersionResponse_v1
from aiokafka.protocol.commit import OffsetFetchRequest_v1, OffsetFetchResponse_v3
from aiokafka.protocol.coordination import FindCoordinatorResponse_v1
from aiokafka.protocol.group import HeartbeatRequest_v1, HeartbeatResponse_v1
from aiokafka.protocol.metadata import MetadataRequest_v5, MetadataResponse_v5
from aiokafka.protocol.produce import ProduceResponse_v7

from pipeline.testing import ApiKey, Delay, KafkaProxy, Match, ProtocolError, Rule, UnsupportedFault
from pipeline.testing.kafka_faults import error_code
from pipeline.testing.kafka_wire import (
    RequestHeader,
    capped_api_versions,
    error_response,
    parse_request_header,
    partition_layouts,
    produce_acks,
    read_frame,
    sized,
    with_partition_errors,
)


class FakeBroker:
    """Answers each request with the body scripted for its API key (echoing the correlation id), after a
    scripted delay; remembers the request frames it got."""

    def __init__(self) -> None:
        self.bodies: dict[int, bytes] = {}
        self.delays: dict[int, float] = {}
        self.frames: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return "127.0.0.1", int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (frame := await read_frame(reader)) is not None:
            self.frames.append(frame)
            api_key, correlation_id = struct.unpack_from(">h", frame)[0], struct.unpack_from(">i", frame, 4)[0]
            await asyncio.sleep(self.delays.get(api_key, 0.0))
            writer.write(sized(struct.pack(">i", correlation_id) + self.bodies.get(api_key, b"")))
            await writer.drain()
        writer.close()


@pytest.fixture
async def broker() -> AsyncIterator[FakeBroker]:
    fake = FakeBroker()
    fake.server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    yield fake
    fake.server.close()


@pytest.fixture
async def proxy(broker: FakeBroker) -> AsyncIterator[KafkaProxy]:
    async with KafkaProxy("{}:{}".format(*broker.address)) as running:
        yield running


def request(api_key: int, version: int, correlation_id: int, body: bytes, client_id: bytes | None = b"c") -> bytes:
    client = struct.pack(">h", -1) if client_id is None else struct.pack(">h", len(client_id)) + client_id
    return struct.pack(">hhi", api_key, version, correlation_id) + client + body


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def exchange(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, frame: bytes) -> bytes | None:
    writer.write(sized(frame))
    return await read_frame(reader)


async def test_a_request_no_rule_touches_passes_byte_for_byte(proxy: KafkaProxy, broker: FakeBroker) -> None:
    broker.bodies[99] = b"any answer at all"
    reader, writer = await connect(proxy.bootstrap_servers)
    sent = request(99, 4, 41, b"\x01\x02 opaque", client_id=None)
    assert await exchange(writer, reader, sent) == struct.pack(">i", 41) + b"any answer at all"
    assert broker.frames == [sent]
    assert [(r.api_key, r.api_version, r.client_id) for r in proxy.requests()] == [(99, 4, None)]
    writer.close()


async def test_an_answer_the_proxy_gives_itself_waits_for_the_answers_before_it(
    proxy: KafkaProxy, broker: FakeBroker
) -> None:
    broker.bodies[99], broker.delays[99] = b"slow", 0.2
    proxy.fail(ApiKey.HEARTBEAT, 27, version=1, times=1)
    reader, writer = await connect(proxy.bootstrap_servers)
    writer.write(sized(request(99, 0, 1, b"")))
    writer.write(sized(request(ApiKey.HEARTBEAT, 1, 2, HeartbeatRequest_v1("g", 1, "m").encode())))
    first, second = await read_frame(reader), await read_frame(reader)
    assert first == struct.pack(">i", 1) + b"slow"
    assert second is not None and struct.unpack_from(">i", second)[0] == 2
    assert HeartbeatResponse_v1.decode(second[4:]).error_code == 27
    assert len(broker.frames) == 1  # the heartbeat never reached the broker
    writer.close()


async def test_metadata_of_a_cluster_is_rewritten_to_a_listener_per_broker(
    proxy: KafkaProxy, broker: FakeBroker
) -> None:
    other = FakeBroker()
    other.server = await asyncio.start_server(other.serve, "127.0.0.1", 0)
    other.bodies[99] = b"from the other broker"
    (host, port), (other_host, other_port) = broker.address, other.address
    topics = [(0, "t", False, [(0, 0, 1, [1], [1], []), (0, 1, 2, [2], [2], [])])]
    brokers = [(1, host, port, None), (2, other_host, other_port, None)]
    broker.bodies[ApiKey.METADATA] = MetadataResponse_v5(0, brokers, "cluster", 1, topics).encode()
    reader, writer = await connect(proxy.bootstrap_servers)
    answer = await exchange(writer, reader, request(ApiKey.METADATA, 5, 3, MetadataRequest_v5(None, True).encode()))
    assert answer is not None
    rewritten = MetadataResponse_v5.decode(answer[4:])
    addresses = {node: f"{h}:{p}" for node, h, p, _rack in rewritten.brokers}
    assert addresses[1] == proxy.bootstrap_servers
    assert addresses[2] != addresses[1] and addresses[2].startswith("127.0.0.1:")
    assert rewritten.topics == topics  # the rest passes unchanged
    other_reader, other_writer = await connect(addresses[2])
    assert await exchange(other_writer, other_reader, request(99, 0, 4, b"")) == struct.pack(">i", 4) + (
        b"from the other broker"
    )
    assert {r.upstream for r in proxy.requests()} == {f"{host}:{port}", f"{other_host}:{other_port}"}
    writer.close()
    other_writer.close()
    other.server.close()


async def test_find_coordinator_answers_point_at_the_proxy(proxy: KafkaProxy, broker: FakeBroker) -> None:
    host, port = broker.address
    broker.bodies[ApiKey.FIND_COORDINATOR] = FindCoordinatorResponse_v1(0, 0, None, 1, host, port).encode()
    reader, writer = await connect(proxy.bootstrap_servers)
    answer = await exchange(writer, reader, request(ApiKey.FIND_COORDINATOR, 1, 5, b"\x00\x01g\x00"))
    assert answer is not None
    found = FindCoordinatorResponse_v1.decode(answer[4:])
    assert f"{found.host}:{found.port}" == proxy.bootstrap_servers
    writer.close()


async def test_a_disconnect_after_forwarding_lets_the_broker_act_and_drops_its_answer(
    proxy: KafkaProxy, broker: FakeBroker
) -> None:
    rule = proxy.disconnect(99, forward=True)
    reader, writer = await connect(proxy.bootstrap_servers)
    assert await exchange(writer, reader, request(99, 0, 6, b"do it")) is None
    assert len(broker.frames) == 1 and rule.hits == 1 and not rule.active
    writer.close()


async def test_an_unreachable_broker_closes_the_client_connection(broker: FakeBroker) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        dead_port = spare.getsockname()[1]
    async with KafkaProxy(f"127.0.0.1:{dead_port}") as proxy:
        reader, writer = await connect(proxy.bootstrap_servers)
        assert await exchange(writer, reader, request(99, 0, 7, b"")) is None
        assert proxy.take_errors() == []
        writer.close()


async def test_keeping_commit_metadata_of_an_undecodable_version_is_an_error(
    proxy: KafkaProxy, broker: FakeBroker
) -> None:
    proxy.keep_commit_metadata = True
    reader, writer = await connect(proxy.bootstrap_servers)
    assert await exchange(writer, reader, request(ApiKey.OFFSET_FETCH, 8, 8, b"")) is None
    (error,) = proxy.take_errors()
    assert isinstance(error, UnsupportedFault) and "commit metadata" in str(error)
    writer.close()


def test_the_proxy_runs_in_a_thread_and_is_scripted_from_another(broker: FakeBroker) -> None:
    host, port = broker.address
    with KafkaProxy(f"{host}:{port}").in_background() as proxy:
        rule = proxy.fail(ApiKey.OFFSET_FETCH, 16, times=1)
        proxy_host, proxy_port = proxy.bootstrap_servers.split(":")
        with socket.create_connection((proxy_host, int(proxy_port)), timeout=5) as sock:
            body = OffsetFetchRequest_v1("g", [("t", [0])]).encode()
            frame = request(ApiKey.OFFSET_FETCH, 3, 9, body)
            sock.sendall(sized(frame))
            size = struct.unpack(">i", sock.recv(4))[0]
            answer = sock.recv(size)
        assert OffsetFetchResponse_v3.decode(answer[4:]).to_object() == {
            "throttle_time_ms": 0,
            "topics": [],
            "error_code": 16,
        }
        assert rule.hits == 1
        assert [r.api for r in proxy.requests()] == ["OFFSET_FETCH"]
        proxy.refuse_connections()
        assert closed_on((proxy_host, int(proxy_port)), b"")
        proxy.accept_connections()
        assert proxy.refused == 1
        assert closed_on((proxy_host, int(proxy_port)), struct.pack(">i", -5))  # garbage
        with pytest.raises(ProtocolError, match="-5 bytes"):
            proxy.check()


def closed_on(address: tuple[str, int], sent: bytes) -> bool:
    """True when the proxy closes (or resets) a connection that sent these bytes, instead of answering."""
    try:
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(sent)
            return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# --- the wire helpers ---------------------------------------------------------------------------------------------


def test_request_headers_are_parsed_and_garbage_is_refused() -> None:
    header = parse_request_header(request(ApiKey.FETCH, 11, 12, b"body", client_id=None))
    assert header == RequestHeader(ApiKey.FETCH, 11, 12, None, 10)
    with pytest.raises(ProtocolError):
        parse_request_header(b"\x00\x01")
    with pytest.raises(ProtocolError):
        parse_request_header(struct.pack(">hhih", 1, 11, 12, 50) + b"short")


@pytest.mark.parametrize(
    ("version", "body", "acks"),
    [
        (2, struct.pack(">hi", 0, 1000), 0),
        (3, struct.pack(">hhi", -1, -1, 1000), -1),
        (7, struct.pack(">h", 2) + b"tx" + struct.pack(">hi", 1, 1000), 1),
        (9, b"\x03tx" + struct.pack(">hi", 0, 1000), 0),
    ],
)
def test_produce_acks_are_read_without_decoding_the_records(version: int, body: bytes, acks: int) -> None:
    frame = request(ApiKey.PRODUCE, version, 1, (b"\x00" if version >= 9 else b"") + body)
    assert produce_acks(frame, parse_request_header(frame)) == acks


def test_error_answers_are_empty_but_for_the_code_in_the_version_asked() -> None:
    find = error_response(ApiKey.FIND_COORDINATOR, 1, 15)
    assert find.to_object() == {
        "throttle_time_ms": 0,
        "error_code": 15,
        "error_message": None,
        "coordinator_id": -1,
        "host": "",
        "port": -1,
    }
    for api_key, version in [(ApiKey.JOIN_GROUP, 5), (ApiKey.SYNC_GROUP, 3), (ApiKey.HEARTBEAT, 1)]:
        answer = error_response(api_key, version, 14)
        assert type(answer).decode(BytesIO(answer.encode())).error_code == 14
    with pytest.raises(UnsupportedFault, match="no top-level error code"):
        error_response(ApiKey.OFFSET_FETCH, 1, 14)


def test_partition_errors_replace_or_add_entries() -> None:
    _asked, answered = partition_layouts(ApiKey.PRODUCE, 7)
    response = ProduceResponse_v7([("a", [(0, 0, 10, -1, 0)])], 0)
    edited = with_partition_errors(response, answered, {("a", 0): 29, ("b", 3): 10})
    assert edited.topics == [("a", [(0, 29, -1, -1, -1)]), ("b", [(3, 10, -1, -1, -1)])]


def test_api_versions_are_capped_to_the_newest_aiokafka_decodes() -> None:
    answer = ApiVersionResponse_v1(0, [(3, 0, 12), (0, 3, 11), (1, 12, 17), (99, 0, 3)], 0)
    assert capped_api_versions(answer).api_versions == [(3, 0, 5), (0, 3, 8), (1, 12, 17), (99, 0, 3)]


def test_rules_are_checked_when_made() -> None:
    with pytest.raises(TypeError):
        error_code(True)
    assert error_code(14) == 14
    with pytest.raises(ValueError, match="times"):
        Rule(Match(api_key=ApiKey.HEARTBEAT), Delay(seconds=1), times=0)
    with pytest.raises(ValueError, match="negative"):
        Rule(Match(api_key=ApiKey.HEARTBEAT), Delay(seconds=-1), times=None)
    assert "HEARTBEAT v1" in repr(Rule(Match(api_key=ApiKey.HEARTBEAT, version=1), Delay(seconds=1), times=2))
