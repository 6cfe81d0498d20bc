"""The `pipeline` command as a user meets it: real processes, a real broker, the text on the screen."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest

from pipeline.cli import main
from pipeline.commands.common import partitions_of
from pipeline.kafka import KafkaSettings, make_consumer, make_producer, seek_to_log_start
from schemas import UserMessage
from schemas.chat import ChatCompletion, ChatCompletionMessage, Choice
from schemas.topics import (
    HEADER_REPLAY_COUNT,
    ApiFailure,
    Flagged,
    FlaggedCategory,
    Job,
    Result,
    Review,
    Source,
)
from tests.fixtures.broker import Broker
from tests.fixtures.env import child_env
from tests.integration.harness import Topics, create_topics, job


def pipeline(
    args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(env or {}),
    )


def topic_env(broker: Broker, topics: Topics) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, **topics.env()}


async def read_all(
    kafka: KafkaSettings, topic: str, expected: int
) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    consumer = make_consumer(kafka, None)
    await consumer.start()
    partitions = await partitions_of(kafka, topic)
    consumer.assign(partitions)
    seek_to_log_start(consumer, partitions)
    found: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
    try:
        for _ in range(100):
            for records in (await consumer.getmany(timeout_ms=100)).values():
                found.extend((r.key, r.value or b"", dict(r.headers)) for r in records)
            if len(found) >= expected:
                break
    finally:
        await consumer.stop()
    return found


async def put(
    kafka: KafkaSettings, topic: str, records: Sequence[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


def test_demo_json_handles_every_route_of_the_sample_set() -> None:
    done = pipeline(["demo", "--jobs", "60", "--json"], timeout=240)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["handled"] == report["jobs"] == 60
    assert report["matches_expected"] is True
    assert report["by_reason"] == report["expected_by_reason"]
    assert set(report["by_reason"]) == {
        "flagged",
        "moderation_error",
        "moderation_missing",
        "content_filter",
        "api_error",
        "invalid_job",
    }
    assert report["by_destination"]["output"] == report["expected_output"] > 0
    assert report["throughput_jobs_per_s"] > 0
    assert report["tokens"]["prompt"] > 0
    assert report["cost_usd"] > 0 and report["unpriced_records"] == 0  # the simulator's models are all priced


async def test_produce_publishes_valid_lines_and_reports_invalid_ones(
    kafka_broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=2)
    lines = [
        job("p-1").decode(),
        "not json at all",
        job("p-2").decode(),
        "",
        '{"id": "p-3", "messages": []}',
        job("p-1").decode(),
        job("p-4").decode(),
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = await asyncio.to_thread(pipeline, ["produce", str(path)], topic_env(kafka_broker, topics))
    assert done.returncode == 1
    assert "published 3 jobs" in done.stdout and "3 invalid lines not published" in done.stdout
    assert "line 2: not valid JSON" in done.stderr
    assert "line 5: Expected `array` of length >= 1 - at `$.messages`" in done.stderr
    assert "line 6: duplicate id 'p-1' (first on line 1)" in done.stderr
    published = await read_all(kafka, topics.input, 3)
    assert sorted(key for key, _, _ in published) == [b"p-1", b"p-2", b"p-4"]

    strict = await asyncio.to_thread(pipeline, ["produce", str(path), "--strict"], topic_env(kafka_broker, topics))
    assert strict.returncode == 1
    assert "published 1 jobs" in strict.stdout and "--strict" in strict.stdout


async def test_produce_refuses_a_line_the_worker_would_refuse(
    kafka_broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    """A job whose JSON names a key twice decodes (the last value wins), but the worker refuses it as
    ambiguous: produce reports it with its line number instead of publishing it."""
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics)
    repeated = '{"id": "r-2", "id": "r-3", "messages": [{"role": "user", "content": "Hi"}]}'
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join([job("r-1").decode(), repeated, job("r-4").decode()]) + "\n")
    done = await asyncio.to_thread(pipeline, ["produce", str(path)], topic_env(kafka_broker, topics))
    assert done.returncode == 1
    assert "published 2 jobs" in done.stdout and "1 invalid lines not published" in done.stdout
    assert "line 2: an object names the key 'id' twice" in done.stderr
    published = await read_all(kafka, topics.input, 2)
    assert sorted(key or b"" for key, _, _ in published) == [b"r-1", b"r-4"]


def on_a_terminal(args: Sequence[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``pipeline ARGS`` with stderr on a pseudo-terminal of 100 columns: the exit code, what it showed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    shown = bytearray()
    with subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=child_env(env),
    ) as process:
        os.close(terminal)
        with contextlib.suppress(OSError):  # EIO once the child has exited and closed the terminal
            while chunk := os.read(controller, 4096):
                shown += chunk
        code = process.wait(timeout=120)
    os.close(controller)
    return code, shown.decode(errors="replace")


async def test_produce_draws_a_progress_bar_on_a_terminal_only(
    kafka_broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"\n".join(job(f"bar-{n}") for n in range(50)) + b"\n")

    code, shown = await asyncio.to_thread(on_a_terminal, ["produce", str(path)], topic_env(kafka_broker, topics))
    assert code == 0
    assert "100%|" in shown and "B/s" in shown

    piped = await asyncio.to_thread(pipeline, ["produce", str(path)], topic_env(kafka_broker, topics))
    assert piped.returncode == 0
    assert piped.stderr == ""


def review(job_id: str, reason: ApiFailure | Flagged, offset: int) -> bytes:
    job = Job(id=job_id, messages=[UserMessage(content=f"prompt of {job_id}")], metadata={"team": "qa"})
    completion = ChatCompletion(
        id="c",
        object="chat.completion",
        created=0,
        model="m",
        choices=[Choice(index=0, finish_reason="stop", message=ChatCompletionMessage(role="assistant", content="x"))],
    )
    source = Source(topic="prompts", partition=0, offset=offset)
    flagged = isinstance(reason, Flagged)
    return msgspec.json.encode(
        Review(id=job_id, reason=reason, source=source, job=job, completion=completion if flagged else None)
    )


API_ERROR = ApiFailure(failure="http_status", message="HTTP 503", attempts=5, status=503)
FLAGGED = Flagged(
    side="input", categories=[FlaggedCategory(side="input", category="violence", score=0.9, source="provider")]
)


async def test_tail_prints_routes_and_filters_review_reasons(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    result = Result(
        id="ok-1",
        model="m",
        content="A calm cup of tea",
        finish_reason="stop",
        usage=None,
        moderation=None,
        metadata=None,
        attempts=1,
        latency_ms=5.0,
        completion_id="c",
        source=Source(topic=topics.input, partition=0, offset=0),
    )
    await put(kafka, topics.output, [(b"ok-1", msgspec.json.encode(result), [])])
    await put(
        kafka, topics.review, [(b"r-1", review("r-1", API_ERROR, 1), []), (b"r-2", review("r-2", FLAGGED, 2), [])]
    )
    env = topic_env(kafka_broker, topics)

    completions = await asyncio.to_thread(pipeline, ["tail", "completions", "--from-beginning", "--timeout", "2"], env)
    assert completions.stdout.strip() == "output  ok-1  stop  'A calm cup of tea'"

    everything = await asyncio.to_thread(pipeline, ["tail", "review", "--from-beginning", "--limit", "2"], env)
    assert everything.stdout.splitlines() == [
        "review  api_error(http 503, 5 attempts)  r-1  ",
        "review  flagged(input: violence 0.90)  r-2  'x'",
    ]
    flagged = await asyncio.to_thread(
        pipeline, ["tail", "review", "--from-beginning", "--reason", "flagged", "--json", "--timeout", "2"], env
    )
    (line,) = flagged.stdout.splitlines()
    assert json.loads(line)["id"] == "r-2"

    bad = await asyncio.to_thread(pipeline, ["tail", "review", "--reason", "bogus"], env)
    assert bad.returncode == 1
    assert "--reason: unknown kind bogus" in bad.stderr


async def test_replay_dry_run_then_for_real(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    await put(
        kafka,
        topics.review,
        [
            (b"a", review("a", API_ERROR, 1), []),
            (b"b", review("b", FLAGGED, 2), []),
            (b"a", review("a", API_ERROR, 3), []),  # the same job reviewed twice: replayed once
            (b"c", review("c", API_ERROR, 4), [(HEADER_REPLAY_COUNT, b"3")]),  # at the limit
            (b"d", review("d", API_ERROR, 5), [(HEADER_REPLAY_COUNT, b"1")]),
        ],
    )
    env = topic_env(kafka_broker, topics)
    dry = await asyncio.to_thread(pipeline, ["replay", "--reason", "api_error", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[:2] == [
        "would replay a  api_error(http 503, 5 attempts)  (replay 1)",
        "would replay d  api_error(http 503, 5 attempts)  (replay 2)",
    ]
    assert "would replay 2 jobs" in dry.stdout
    assert "1 already replayed in this run" in dry.stdout and "1 replayed 3 times already" in dry.stdout

    real = await asyncio.to_thread(pipeline, ["replay", "--reason", "api_error"], env)
    assert real.returncode == 0, real.stderr
    assert "replayed 2 jobs" in real.stdout
    replayed = await read_all(kafka, topics.input, 2)
    by_key = {key: (value, headers) for key, value, headers in replayed}
    assert set(by_key) == {b"a", b"d"}
    value, headers = by_key[b"d"]
    assert headers[HEADER_REPLAY_COUNT] == b"2"
    restored = msgspec.json.decode(value, type=Job)
    assert (restored.id, restored.metadata) == ("d", {"team": "qa"})


async def test_replay_continues_where_the_last_run_stopped(kafka_broker: Broker, topic_prefix: str) -> None:
    """Batches with --limit, no second send on a second run, --since, and --from-beginning."""
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics, partitions=1)
    now_ms = int(time.time() * 1000)
    producer = make_producer(kafka)
    await producer.start()
    try:
        for job_id, age_h in [("old", 5), ("a", 1), ("b", 1), ("c", 1)]:
            value = review(job_id, API_ERROR, 0)
            await producer.send_and_wait(
                topics.review, value, key=job_id.encode(), timestamp_ms=now_ms - age_h * 3_600_000
            )
    finally:
        await producer.stop()
    env = topic_env(kafka_broker, topics)

    def replay(*args: str) -> list[str]:
        done = pipeline(["replay", "--reason", "api_error", *args], env)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert (
        replay("--since", "2h", "--limit", "2")[0]
        == "replayed 2 jobs to " + topics.input + " (skipped: 1 older than --since)"
    )
    assert replay("--limit", "2")[0] == f"replayed 1 job to {topics.input}", "the next batch: only c was left"
    assert replay() == [f"replayed 0 jobs to {topics.input}"], "a second run sends nothing again"
    await put(kafka, topics.review, [(b"d", review("d", API_ERROR, 9), [])])
    assert replay() == [f"replayed 1 job to {topics.input}"], "what came since the last run"
    again = replay("--from-beginning", "--dry-run")
    assert [line.split()[2] for line in again[:-1]] == ["old", "a", "b", "c", "d"]
    assert again[-1] == f"would replay 5 jobs to {topics.input}"
    replayed = await read_all(kafka, topics.input, 4)
    assert sorted(key for key, _, _ in replayed) == [b"a", b"b", b"c", b"d"]


def busy_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["topics", "describe"], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, 1, "cannot reach Kafka at 127.0.0.1:1"),
        (
            ["run"],
            {"PIPELINE_CONCURRENCY": "lots", "OPENAI_API_KEY": "k"},
            2,
            "PIPELINE_CONCURRENCY='lots': expected an integer",
        ),
        (["run"], {"OPENAI_API_KEY": ""}, 2, "OPENAI_API_KEY: not set"),
        (["demo", "--provider", "openai"], {"OPENAI_API_KEY": ""}, 1, "--provider openai calls the real API"),
        (["run", "--ordering", "random", "--concurrency", "0"], {"OPENAI_API_KEY": "k"}, 2, "PIPELINE_ORDERING"),
    ],
)
def test_errors_are_one_clear_line(args: list[str], env: dict[str, str], code: int, message: str) -> None:
    done = pipeline(args, env, timeout=60)
    assert done.returncode == code
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"pipeline {args[0]}: ")


async def test_a_missing_topic_names_the_command_that_creates_it(kafka_broker: Broker, topic_prefix: str) -> None:
    env = topic_env(kafka_broker, Topics.named(topic_prefix))
    done = await asyncio.to_thread(pipeline, ["produce", "-"], env)
    assert done.returncode == 1
    assert f"topic {topic_prefix}-prompts not found" in done.stderr
    assert "`pipeline topics create`" in done.stderr


async def test_a_port_in_use_is_named(kafka_broker: Broker, topic_prefix: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    topics = Topics.named(topic_prefix)
    await create_topics(kafka, topics)
    sock, port = busy_port()
    with sock:
        env = {**topic_env(kafka_broker, topics), "OPENAI_API_KEY": "k", "PIPELINE_METRICS_HOST": "127.0.0.1"}
        done = await asyncio.to_thread(pipeline, ["run", "--metrics-port", str(port)], env)
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use (PIPELINE_METRICS_PORT" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["demo", "run", "produce", "tail", "topics", "replay", "simulate", "broker"])
def test_every_command_has_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_version() -> None:
    assert pipeline(["--version"]).stdout.startswith("pipeline ")
