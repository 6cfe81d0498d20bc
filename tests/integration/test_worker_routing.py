"""End to end through a real broker and the simulator: every route, headers, poison records, commits."""

from __future__ import annotations

import json

from pipeline.kafka import KafkaSettings
from schemas.topics import (
    HEADER_JOB_ID,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TOPIC,
    HEADER_REASON_KIND,
    ApiFailure,
    Flagged,
    InvalidJob,
)
from tests.fixtures.broker import Broker
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
    worker_settings,
)

ROUTED_JOBS = {
    "clean": (job("clean", "Write a haiku about tea."), "output"),
    "flagged-input": (job("flagged-input", "I will murder them and stab the witness."), "flagged"),
    "flagged-output": (job("flagged-output", "Write a poem. [[sim: flag_output=violence]]"), "flagged"),
    "mod-error-in": (job("mod-error-in", "Hello [[sim: moderation_error_input]]"), "moderation_error"),
    "mod-error-out": (job("mod-error-out", "Hello [[sim: moderation_error_output]]"), "moderation_error"),
    "mod-missing": (job("mod-missing", "Hello [[sim: moderation_missing]]"), "moderation_missing"),
    "unknown-tag": (job("unknown-tag", "Hello [[sim: moderation_unknown_type]]"), "api_error"),
    "http-500": (job("http-500", "Hello [[sim: 500]]"), "api_error"),
    "quota": (job("quota", "Hello [[sim: insufficient_quota]]"), "api_error"),
    "retried-ok": (job("retried-ok", "Hello [[sim: 503*2]]"), "output"),
    "truncated": (job("truncated", "Hello [[sim: truncated]]"), "api_error"),
    "malformed": (job("malformed", "Hello [[sim: malformed_json]]"), "api_error"),
    "bad-job": (b'{"id": "bad-job", "messages": []}', "invalid_job"),
}
POISON = [
    b"",
    None,
    b"\xff\xfe\x00garbage",
    b"[" * 100_000,
    b'{"id": 1, "messages": "nope"}',
    b'{"id": "x", "messages": [{"role": "user", "content": "hi"}], "params": {"temperature": "hot"}}',
    b'"just a string"',
    b"{" + b'"a":' * 5000 + b"1" + b"}" * 5000,
]


async def test_every_outcome_lands_on_its_route_with_headers(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=3)
    await publish(kafka, topics.input, [value for value, _ in ROUTED_JOBS.values()])
    sim = await make_simulator()
    config = client_config(sim.base_url, max_attempts=3)
    async with running_worker(kafka, worker_settings(topics), config):
        collected = await collect(kafka, topics, len(ROUTED_JOBS))
    stats = sim.stats()
    routes = collected.reasons()
    assert routes == {job_id: route for job_id, (_, route) in ROUTED_JOBS.items()}

    by_id = {r.id: r for r in collected.review_records}
    assert isinstance(by_id["flagged-input"].reason, Flagged) and by_id["flagged-input"].reason.side == "input"
    assert isinstance(by_id["flagged-output"].reason, Flagged) and by_id["flagged-output"].reason.side == "output"
    http_500 = by_id["http-500"].reason
    assert isinstance(http_500, ApiFailure) and (http_500.status, http_500.attempts) == (500, 3)
    quota = by_id["quota"].reason
    assert isinstance(quota, ApiFailure) and quota.attempts == 1, "insufficient_quota must not be retried"
    assert isinstance(by_id["bad-job"].reason, InvalidJob)
    assert by_id["bad-job"].job is None
    assert next(r for r in collected.results if r.id == "retried-ok").attempts == 3

    for record in collected.outputs + collected.reviews:
        headers = dict(record.headers)
        assert headers[HEADER_ORIGINAL_TOPIC] == topics.input.encode()
        assert int(headers[HEADER_ORIGINAL_PARTITION]) in range(3)
        assert int(headers[HEADER_ORIGINAL_OFFSET]) >= 0
        assert record.key == headers[HEADER_JOB_ID]
    for record in collected.reviews:
        kind = json.loads(record.value or b"{}")["reason"]["kind"]
        assert dict(record.headers)[HEADER_REASON_KIND] == kind.encode()
    # retried-ok took three attempts and succeeded once: no job was completed twice
    assert stats.duplicate_successes == {}

    offsets = await committed(kafka, topics.group, topics.input, 3)
    assert sum(offsets.values()) == len(ROUTED_JOBS), "every record's offset committed after a graceful stop"


async def test_poison_records_go_to_review_and_the_worker_stays_up(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    values = [*POISON, job("after-the-poison")]
    sim = await make_simulator()
    async with running_worker(kafka, worker_settings(topics), client_config(sim.base_url)) as running:
        await publish(kafka, topics.input, values)
        collected = await collect(kafka, topics, len(values))
        assert running.worker.alive
    invalid = [r for r in collected.review_records if isinstance(r.reason, InvalidJob)]
    assert sorted(r.source.offset for r in invalid) == list(range(len(POISON)))
    assert [r.id for r in collected.results] == ["after-the-poison"]
    for review in invalid:
        assert isinstance(review.reason, InvalidJob)
        assert review.reason.source == review.source
        assert review.reason.source.topic == topics.input
