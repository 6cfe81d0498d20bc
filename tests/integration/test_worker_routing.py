"""End to end through a real broker and the simulator: every route, headers, poison records, commits."""

from __future__ import annotations

import json

from pipeline.config import load_worker_settings
from pipeline.kafka import KafkaSettings
from schemas import JobParams
from schemas.topics import (
    HEADER_JOB_ID,
    HEADER_ORIGINAL_OFFSET,
    HEADER_ORIGINAL_PARTITION,
    HEADER_ORIGINAL_TOPIC,
    HEADER_REASON_KIND,
    ApiFailure,
    ChoiceFinish,
    ContentFiltered,
    Flagged,
    InvalidJob,
    UnknownFinishReason,
)
from tests.fixtures.broker import Broker
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import (
    FAST_GROUP_ENV,
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
    "mod-short": (
        job("mod-short", "Hello [[sim: moderation_results_short]]", params=JobParams(n=2)),
        "moderation_missing",
    ),
    "content-filter": (job("content-filter", "Hello [[sim: finish_reason=content_filter]]"), "content_filter"),
    "new-finish": (job("new-finish", "Hello [[sim: finish_reason=safety_stop]]"), "unknown_finish_reason"),
    "new-values": (job("new-values", "Hello [[sim: service_tier=priority_plus, annotation=file_citation]]"), "output"),
    "unknown-tag": (job("unknown-tag", "Hello [[sim: moderation_unknown_type]]"), "api_error"),
    "http-500": (job("http-500", "Hello [[sim: 500]]"), "api_error"),
    "too-long": (job("too-long", "Hello [[sim: context_length_exceeded]]"), "api_error"),
    # a job whose own request fails is blamed; a provider-wide refusal (a bad key, no quota) holds every job
    # instead: tests/integration/test_worker_provider_outage.py
    "quota-once": (job("quota-once", "Hello [[sim: insufficient_quota*1]]"), "output"),
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
    too_long = by_id["too-long"].reason
    assert isinstance(too_long, ApiFailure) and (too_long.status, too_long.attempts) == (400, 1), "never retried"
    assert isinstance(by_id["bad-job"].reason, InvalidJob)
    assert by_id["bad-job"].job is None
    assert by_id["content-filter"].reason == ContentFiltered(choices=[0])
    new_finish = by_id["new-finish"]
    assert new_finish.reason == UnknownFinishReason(choices=[ChoiceFinish(index=0, finish_reason="safety_stop")])
    assert new_finish.attempts == 1, "an answer with a new finish_reason is neither a decode failure nor retried"
    assert new_finish.completion is not None and new_finish.completion.choices[0].message.content, "the paid answer"
    new_values = next(r for r in collected.results if r.id == "new-values")
    assert (new_values.finish_reason, new_values.attempts) == ("stop", 1)
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


async def test_review_thresholds_from_the_environment_flag_what_the_provider_did_not(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    # The provider flags violence and illicit only at 0.9; these prompts score 0.6 (assault, lockpick) and
    # 0.8 (counterfeit), so nothing here is flagged by the provider.
    sim = await make_simulator(thresholds={"violence": 0.9, "illicit": 0.9})
    jobs = {
        "assault": (job("assault", "A film scene with an assault in it."), "flagged"),
        "lockpick": (job("lockpick", "A story about a lockpick."), "output"),
        "counterfeit": (job("counterfeit", "A story about a counterfeit coin."), "flagged"),
        "calm": (job("calm", "A story about a calm lake."), "output"),
    }
    env = {
        **topics.env(),
        **FAST_GROUP_ENV,
        "PIPELINE_COMMIT_INTERVAL_MS": "100",
        "PIPELINE_METRICS_PORT": "0",
        "PIPELINE_REVIEW_THRESHOLD": "0.7",
        "PIPELINE_REVIEW_THRESHOLDS": "violence=0.5",
    }
    async with running_worker(kafka, load_worker_settings(env), client_config(sim.base_url)):
        await publish(kafka, topics.input, [value for value, _ in jobs.values()])
        collected = await collect(kafka, topics, len(jobs))
    assert collected.reasons() == {job_id: route for job_id, (_, route) in jobs.items()}
    by_id = {r.id: r.reason for r in collected.review_records}
    for job_id, category, low in (("assault", "violence", 0.5), ("counterfeit", "illicit", 0.7)):
        reason = by_id[job_id]
        assert isinstance(reason, Flagged) and reason.side == "input"
        assert [(c.category, c.source) for c in reason.categories] == [(category, "threshold")]
        assert low <= reason.categories[0].score < 0.9
