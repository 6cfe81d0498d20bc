"""The worker's aiokafka clients as they are made: static membership and the rebalance timeout reach the
consumer, and the producer is idempotent exactly where the brokers grant producer ids."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiokafka.errors import UnknownError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from pipeline.config import WorkerSettings
from pipeline.kafka import KafkaSettings, grants_producer_ids, make_admin
from pipeline.worker.ports import AiokafkaAdmin, AiokafkaProducer, KafkaClients
from tests.fixtures.broker import Broker


async def test_the_consumer_carries_the_instance_id_and_a_rebalance_timeout_above_the_revoke_timeout() -> None:
    settings = WorkerSettings(group_instance_id="worker-0", max_poll_interval_ms=120_000, revoke_timeout_s=60)
    clients = KafkaClients.connect(KafkaSettings(), settings)
    coordinator_settings: Any = clients.consumer
    assert coordinator_settings._group_instance_id == "worker-0"
    assert coordinator_settings._rebalance_timeout_ms == 120_000 > settings.revoke_timeout_s * 1000


class Grants:
    def __init__(self, grants: bool) -> None:
        self.grants = grants
        self.asked = 0

    async def grants_producer_ids(self) -> bool:
        self.asked += 1
        return self.grants

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def list_topics(self) -> list[str]:
        return []

    async def committed(self, group_id: str, partitions: Any) -> dict[TopicPartition, OffsetAndMetadata]:
        return {}


@pytest.mark.parametrize(
    ("setting", "grants", "idempotent", "asked"),
    [("auto", True, True, 1), ("auto", False, False, 1), ("on", False, True, 0), ("off", True, False, 0)],
)
async def test_the_producer_is_idempotent_where_the_setting_and_the_brokers_allow(
    setting: str, grants: bool, idempotent: bool, asked: int
) -> None:
    admin = Grants(grants)
    producer = AiokafkaProducer(KafkaSettings(idempotence=setting), admin)  # type: ignore[arg-type]
    assert await producer.choose_idempotence() is idempotent and admin.asked == asked


async def test_on_the_embedded_broker_auto_starts_a_plain_producer_and_on_fails_the_start(kafka_broker: Broker) -> None:
    if kafka_broker.kind != "embedded":
        pytest.skip("a property of the embedded broker")
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    admin = AiokafkaAdmin(kafka)
    await admin.start()
    try:
        plain = AiokafkaProducer(kafka, admin)
        await plain.start()
        assert plain.idempotent is False
        await plain.stop()
        insisting = AiokafkaProducer(msgspec.structs.replace(kafka, idempotence="on"), admin)
        with pytest.raises(UnknownError):
            await insisting.start()
        await insisting.stop()
    finally:
        await admin.close()


async def test_the_embedded_broker_grants_no_producer_ids(kafka_broker: Broker) -> None:
    if kafka_broker.kind != "embedded":
        pytest.skip("a property of the embedded broker")
    admin = make_admin(KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers))
    await admin.start()
    try:
        assert await grants_producer_ids(admin) is False
    finally:
        await admin.close()
