"""Batches end to end: a Batch API file in through `pipeline batch submit`, a real worker and the simulator,
the Batch API's output and errors files out in input order; resubmission, status, cancel and replay."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka.structs import TopicPartition
from openai.types.chat import ChatCompletion as SdkChatCompletion

from pipeline.batch import SubmitRequest, create_batches_topic, read_manifest, submit_batch
from pipeline.batch import Topics as BatchTopics
from pipeline.batch import submit as submit_module
from pipeline.batch.reading import TopicReader, topic_ends
from pipeline.batch.submit import NoProgress
from pipeline.kafka import KafkaSettings, make_admin
from pipeline.simulator import Simulator
from pipeline.worker.cancellations import AiokafkaBatchesFeed
from schemas.topics import Review
from tests.fixtures.broker import Broker
from tests.fixtures.env import child_env
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import (
    Topics,
    client_config,
    create_topics,
    running_worker,
    wait_until,
    worker_settings,
)


@dataclass(frozen=True)
class Setup:
    kafka: KafkaSettings
    topics: Topics
    batches: str

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "PIPELINE_BATCHES_TOPIC": self.batches,
            "PIPELINE_SESSION_TIMEOUT_MS": "6000",
            "PIPELINE_HEARTBEAT_INTERVAL_MS": "2000",
            **self.topics.env(),
        }


async def setup(broker: Broker, prefix: str) -> Setup:
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
    topics = Topics.named(prefix)
    await create_topics(kafka, topics, partitions=3)
    batches = f"{prefix}-batches"
    assert await create_batches_topic(kafka, batches)
    return Setup(kafka, topics, batches)


async def pipeline(args: Sequence[str], setup: Setup) -> subprocess.CompletedProcess[str]:
    """``pipeline ARGS`` in a child process, off the event loop (the worker in this process keeps running)."""
    command = [sys.executable, "-m", "pipeline.cli", *args]
    env = child_env(setup.env())
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=120, env=env)


def request(custom_id: str, text: str, **body: Any) -> str:
    messages = [{"role": "user", "content": text}]
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": messages, **body},
    }
    return json.dumps(line)


#: custom_id → what the line becomes (output, or the review reason kind); None for lines left out at submit.
MIXED = [
    (request("clean-1", "Write a haiku about tea.", metadata={"tenant": "acme"}), "output"),
    (request("flagged-in", "I will murder them and stab the witness."), "flagged"),
    ('{"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}}', None),
    (request("clean-2", "Name a colour.", max_completion_tokens=16), "output"),
    (request("too-long", "Hello [[sim: context_length_exceeded]]"), "api_error"),
    ("this is not json", None),
    (json.dumps({"id": "own-job", "messages": [{"role": "user", "content": "Count to three."}]}), "output"),
    (request("flagged-out", "Write a poem. [[sim: flag_output=violence]]"), "flagged"),
    (request("clean-1", "A repeated custom id."), None),
    (request("clean-3", "Say hi."), "output"),
]


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def input_records(setup: Setup) -> int:
    ends = await topic_ends(setup.kafka, [setup.topics.input])
    return sum(ends[setup.topics.input].offsets)


async def test_a_batch_api_file_becomes_output_and_errors_files_in_input_order(
    kafka_broker: Broker, topic_prefix: str, simulator: Simulator, tmp_path: Path
) -> None:
    s = await setup(kafka_broker, topic_prefix)
    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join(line for line, _ in MIXED) + "\n")
    batch_id = f"{topic_prefix}-mixed"

    refused = await pipeline(["batch", "submit", str(source), "--id", batch_id], s)
    assert refused.returncode == 1
    assert "line 3: url '/v1/embeddings' is not supported" in refused.stderr
    assert "line 6: not valid JSON" in refused.stderr
    assert "line 9: custom_id 'clean-1' repeats line 1" in refused.stderr
    assert "3 invalid line(s); nothing published" in refused.stderr
    assert await input_records(s) == 0

    submit = ["batch", "submit", str(source), "--id", batch_id]
    submitted = await pipeline([*submit, "--skip-invalid", "--metadata", "a=b"], s)
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == batch_id
    assert "7 jobs published" in submitted.stderr and "3 invalid line(s) left out" in submitted.stderr
    assert await input_records(s) == 7

    before = json.loads((await pipeline(["batch", "status", batch_id, "--json"], s)).stdout)
    assert before["status"] == "in_progress" and before["remaining"] == 7 and before["metadata"] == {"a": "b"}

    output, errors, reviews = tmp_path / "out.jsonl", tmp_path / "errors.jsonl", tmp_path / "review.jsonl"
    settings = worker_settings(s.topics, batches_topic=s.batches)
    async with running_worker(s.kafka, settings, client_config(simulator.base_url)):
        files = ["--output", str(output), "--errors", str(errors), "--review", str(reviews)]
        done = await pipeline(["batch", "results", batch_id, *files, "--wait"], s)
    assert done.returncode == 0, done.stderr

    expected = [(json.loads(line).get("custom_id") or "own-job", route) for line, route in MIXED if route]
    clean = [custom_id for custom_id, route in expected if route == "output"]
    reviewed = [(custom_id, route) for custom_id, route in expected if route != "output"]
    outputs = jsonl(output)
    assert [line["custom_id"] for line in outputs] == clean, "input order"
    for line in outputs:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = SdkChatCompletion.model_validate(line["response"]["body"])
        assert body.choices[0].message.content
        assert line["response"]["body"]["moderation"]["input"]["type"] == "moderation_results"
    error_lines = jsonl(errors)
    assert [(line["custom_id"], line["error"]["code"]) for line in error_lines] == reviewed
    by_id = {line["custom_id"]: line for line in error_lines}
    assert by_id["flagged-out"]["response"]["status_code"] == 200, "the completion comes along"
    assert by_id["too-long"]["response"]["status_code"] == 400
    review_records = [msgspec.json.decode(line, type=Review) for line in reviews.read_bytes().splitlines()]
    assert [r.id for r in review_records] == [f"{batch_id}:{custom_id}" for custom_id, _ in reviewed]
    assert review_records[0].metadata == {"batch_id": batch_id, "custom_id": "flagged-in", "batch_line": "2"}

    status = json.loads((await pipeline(["batch", "status", batch_id, "--json"], s)).stdout)
    assert status["status"] == "completed" and status["remaining"] == 0
    assert status["request_counts"] == {"total": 7, "completed": 4, "failed": 1}
    assert status["in_review"] == {"flagged": 2} and status["skipped_lines"] == 3

    again = await pipeline([*submit, "--skip-invalid"], s)
    assert again.returncode == 0 and "already submitted" in again.stderr
    assert await input_records(s) == 7, "a second submit publishes nothing"
    listed = await pipeline(["batch", "list"], s)
    assert batch_id in listed.stdout and "requests.jsonl" in listed.stdout
    late = await pipeline(["batch", "cancel", batch_id], s)
    assert late.returncode == 1 and "is completed: every request has a result" in late.stderr


async def test_cancel_routes_jobs_not_yet_called_to_review_and_a_replay_of_one_runs(
    kafka_broker: Broker, topic_prefix: str, make_simulator: MakeSimulator, tmp_path: Path
) -> None:
    s = await setup(kafka_broker, topic_prefix)
    sim = await make_simulator()
    total = 24
    source = tmp_path / "slow.jsonl"
    source.write_text("\n".join(request(f"r-{i}", f"Story {i} [[sim: latency=1000]]") for i in range(total)) + "\n")
    submitted = await pipeline(["batch", "submit", str(source)], s)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert batch_id.startswith("batch_")

    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    settings = worker_settings(s.topics, batches_topic=s.batches, concurrency=2)
    async with running_worker(s.kafka, settings, client_config(sim.base_url)):
        await wait_until(lambda: sim.stats().requests >= 2)  # the first calls are in flight
        cancelled = await pipeline(["batch", "cancel", batch_id], s)
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
        results = ["batch", "results", batch_id, "--output", str(output), "--errors", str(errors), "--wait"]
        assert (await pipeline(results, s)).returncode == 0

        called = set(sim.stats().attempts_by_job)
        completed = [line["custom_id"] for line in jsonl(output)]
        cancelled_ids = [line["custom_id"] for line in jsonl(errors) if line["error"]["code"] == "cancelled"]
        assert len(completed) + len(cancelled_ids) == total, "every call in flight finished; the rest were cancelled"
        assert len(completed) >= 2 and cancelled_ids
        assert called == {f"{batch_id}:{custom_id}" for custom_id in completed}, "no call for a cancelled job"

        status = json.loads((await pipeline(["batch", "status", batch_id, "--json"], s)).stdout)
        assert status["status"] == "cancelled" and status["in_review"] == {"cancelled": len(cancelled_ids)}

        replayed = await pipeline(["replay", "--reason", "cancelled", "--limit", "1"], s)
        assert replayed.returncode == 0, replayed.stderr
        done = await pipeline(["batch", "results", batch_id, "--output", str(output), "--wait"], s)
        while len(jsonl(output)) == len(completed):  # the replayed job was published after the cancel: it runs
            await asyncio.sleep(0.2)
            done = await pipeline(["batch", "results", batch_id, "--output", str(output), "--wait"], s)
        assert done.returncode == 0
    assert len(jsonl(output)) == len(completed) + 1


class Crash(Exception):
    pass


class CrashAfterFirstWindow(NoProgress):
    """A submit that dies once its first window of jobs is acknowledged."""

    def published(self, count: int) -> None:
        raise Crash


async def test_a_submit_that_stopped_half_way_resumes_without_publishing_a_job_twice(
    kafka_broker: Broker, topic_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await setup(kafka_broker, topic_prefix)
    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join(request(f"r-{i}", f"Say {i}.") for i in range(20)) + "\n")
    topics = BatchTopics(s.topics.input, s.topics.output, s.topics.review, s.batches)
    submit = SubmitRequest(path=source, topics=topics, max_job_bytes=1 << 20, batch_id="resumable")
    monkeypatch.setattr(submit_module, "WINDOW", 7)

    with pytest.raises(Crash):
        await submit_batch(s.kafka, submit, progress=CrashAfterFirstWindow())
    stopped = await read_manifest(s.kafka, s.batches, "resumable")
    assert stopped is not None and stopped.status == "submitting"
    assert await input_records(s) == 7
    refused = await pipeline(["batch", "results", "resumable", "--output", str(tmp_path / "out.jsonl")], s)
    assert refused.returncode == 1 and "was not fully submitted" in refused.stderr

    resumed = await submit_batch(s.kafka, submit)
    assert (resumed.outcome, resumed.found_published, resumed.published) == ("resumed", 7, 13)
    assert resumed.manifest.status == "submitted" and resumed.manifest.created_ms == stopped.created_ms
    keys = await input_keys(s)
    assert len(keys) == 20 and len(set(keys)) == 20, "every job once"
    again = await submit_batch(s.kafka, submit)
    assert (again.outcome, again.published) == ("already_submitted", 0)
    assert await input_records(s) == 20


async def input_keys(setup: Setup) -> list[bytes]:
    ends = (await topic_ends(setup.kafka, [setup.topics.input]))[setup.topics.input]
    async with TopicReader(setup.kafka) as reader:
        reader.assign({TopicPartition(setup.topics.input, p): 0 for p in range(len(ends.offsets))})
        return [record.key for record in await reader.read_to_end()]


async def test_a_worker_without_a_batches_topic_cancels_nothing_and_creates_no_topic(
    kafka_broker: Broker, topic_prefix: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    missing = f"{topic_prefix}-no-batches"
    feed = AiokafkaBatchesFeed(kafka, missing)
    try:
        assert await feed.read(100) == ([], True), "nothing to follow: at its end at once"
    finally:
        await feed.close()
    admin = make_admin(kafka)
    await admin.start()
    try:
        assert missing not in await admin.list_topics(), "never created (it would not be compacted)"
    finally:
        await admin.close()
