"""``pipeline demo``: the main job end to end on the embedded default, in one command.

Starts the embedded broker and the simulator on free ports, creates the three topics, publishes the sample
set (every route), runs K workers in one group until every job is handled, prints what happened (counts per
route against what the sample set expects, throughput, end-to-end latency, tokens, one example record per
route; :mod:`pipeline.commands.demo_report`) and shuts everything down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from aiokafka.structs import TopicPartition

from pipeline.broker import EmbeddedBroker
from pipeline.client import DEFAULT_BASE_URL, ChatClient
from pipeline.commands.common import CliError, partitions_of, run_async
from pipeline.commands.demo_report import Tally, print_summary, summary
from pipeline.commands.demo_review import DECISIONS_TOPIC, serve_review_console
from pipeline.config import ConfigError
from pipeline.kafka import KafkaSettings, ensure_topics, make_consumer, make_producer, seek_to_log_start
from pipeline.logs import configure_logging
from pipeline.metrics import Metrics, MetricsObserver
from pipeline.samples import ROUTES, Sample, sample_set
from pipeline.secret import Secret
from pipeline.simulator import Simulator
from pipeline.simulator.config import OPTIONS as SIMULATOR_OPTIONS
from pipeline.simulator.config import SimulatorConfig, with_values
from pipeline.worker import Worker

SIMULATOR_KEY = "sk-demo-simulator"
#: Fast group joins on the embedded broker (it holds JoinGroup for session/2) and frequent commits.
DEMO_WORKER_ENV = {
    "PIPELINE_SESSION_TIMEOUT_MS": "6000",
    "PIPELINE_HEARTBEAT_INTERVAL_MS": "2000",
    "PIPELINE_COMMIT_INTERVAL_MS": "200",
    "PIPELINE_DRAIN_TIMEOUT_S": "5",
    "PIPELINE_METRICS_PORT": "0",
    "PIPELINE_MAX_ATTEMPTS": "3",
    "PIPELINE_LOG_LEVEL": "WARNING",
}


@contextlib.asynccontextmanager
async def embedded_broker() -> AsyncIterator[EmbeddedBroker]:
    broker = EmbeddedBroker()
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


@contextlib.asynccontextmanager
async def provider(args: argparse.Namespace) -> AsyncIterator[tuple[str, Secret]]:
    """The base URL and key the workers use: a simulator of our own, or the real API."""
    if args.provider == "openai":
        key = os.environ.get("OPENAI_API_KEY", "").strip()
        if not key:
            raise CliError(
                "--provider openai calls the real API and needs OPENAI_API_KEY in the environment; it is not "
                "set (or drop --provider openai to use the local simulator)"
            )
        yield os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL), Secret(key)
        return
    values: dict[str, Any] = {}
    for option, text in (("latency", args.latency), ("faults", args.faults)):
        if text:
            parse = next(o.parse for o in SIMULATOR_OPTIONS if o.field == option)
            try:
                values[option] = parse(text)
            except ValueError as exc:
                raise CliError(f"--{option} {text!r}: {exc}") from None
    try:
        config = with_values(SimulatorConfig(api_key=SIMULATOR_KEY), values)
    except ValueError as exc:
        raise CliError(f"simulator settings: {exc}") from None
    simulator = Simulator(config)
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator.base_url, Secret(SIMULATOR_KEY)
    finally:
        await simulator.close()


async def publish(kafka: KafkaSettings, topic: str, samples: list[Sample]) -> dict[tuple[int, int], int]:
    """Publish the samples; returns each record's (partition, offset) → timestamp in ms."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        acks = [await producer.send(topic, s.value, key=s.key) for s in samples]
        metadata = await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return {(m.partition, m.offset): m.timestamp for m in metadata}


@contextlib.contextmanager
def worker_processes(count: int, env: dict[str, str], log_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` ``pipeline run`` processes in one group, logging to ``log_path``; SIGTERM on exit."""
    with log_path.open("ab") as log:
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "run"],
                env={**os.environ, **env},
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
            for _ in range(count)
        ]
        try:
            yield processes
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


async def collect(
    kafka: KafkaSettings,
    topics: dict[str, str],
    expected: int,
    published_ms: dict[tuple[int, int], int],
    deadline: float,
) -> Tally:
    """Read the output and review topics until every published record has a result (or the deadline)."""
    tally = Tally()
    consumer = make_consumer(kafka, None)
    await consumer.start()
    try:
        partitions: list[TopicPartition] = []
        for topic in topics.values():
            partitions += await partitions_of(kafka, topic)
        consumer.assign(partitions)
        seek_to_log_start(consumer, partitions)
        destination_of = {topic: destination for destination, topic in topics.items()}
        while tally.handled < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for record in records:
                    tally.add(destination_of[tp.topic], record.value or b"", record.timestamp, published_ms)
    finally:
        await consumer.stop()
    return tally


async def run_demo(args: argparse.Namespace) -> int:
    if args.jobs < 1 or args.workers < 1:
        raise CliError("--jobs and --workers must be at least 1")
    simulated = args.provider == "simulator"
    samples = sample_set(args.jobs, simulated=simulated)
    topics = {"output": "completions", "review": "review"}
    log_path = Path(tempfile.gettempdir()) / f"pipeline-demo-{os.getpid()}.log"
    quiet = args.json
    async with embedded_broker() as broker, provider(args) as (base_url, key):
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        if not quiet:
            where = f"simulator on {base_url}" if simulated else f"the real API at {base_url}"
            if not simulated:
                print("real provider: the simulator-only routes are left out of the sample set")
            print(f"embedded broker on {broker.bootstrap_servers}, {where}, {args.workers} worker(s)")
        await ensure_topics(kafka, ["prompts", *topics.values(), DECISIONS_TOPIC], partitions=max(6, args.workers))
        env = {
            **DEMO_WORKER_ENV,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": key.reveal(),
            "PIPELINE_GROUP_ID": "pipeline-demo",
        }
        started_ms = int(time.time() * 1000)
        published_ms = await publish(kafka, "prompts", samples)
        if not quiet:
            print(f"published {len(samples)} jobs to prompts; waiting for every job to be handled…")
        deadline = time.monotonic() + args.timeout
        async with _workers(args.workers, env, log_path):
            tally = await collect(kafka, topics, len(samples), published_ms, deadline)
            report = summary(tally, samples, started_ms, args.workers, args.provider)
            if args.json:
                print(json.dumps(report))
            else:
                print_summary(report, tally, samples)
            if args.review:
                await serve_review_console(kafka, args.review_port)
    if tally.handled < len(samples):
        print(
            f"pipeline demo: only {tally.handled} of {len(samples)} jobs were handled within {args.timeout:g}s "
            f"(worker log: {log_path})",
            file=sys.stderr,
        )
        return 1
    return 0 if report["matches_expected"] or not simulated else 1


@contextlib.asynccontextmanager
async def _workers(count: int, env: dict[str, str], log_path: Path) -> AsyncIterator[None]:
    """One worker in this process, or ``count`` worker processes in one group."""
    if count > 1:
        with worker_processes(count, env, log_path):
            yield
        return
    from pipeline.commands.run import load_run_settings

    try:
        settings = load_run_settings(env)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    metrics = Metrics()
    client = ChatClient(settings.client, observer=MetricsObserver(metrics))
    worker = Worker(settings.worker, settings.kafka, client, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await task
        await client.aclose()


def demo_command(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    return run_async(run_demo)(args)


def add_parser(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on an embedded broker and the local simulator, then summarise",
        description="Start an embedded broker and the OpenAI-compatible simulator, publish a sample set of jobs "
        "that takes every route (clean, flagged input, flagged output, moderation error, missing moderation, API "
        "error after retries, invalid job), run the worker(s) until every job is handled, print a summary and an "
        "example record of each route, and shut everything down.",
        epilog="examples:\n  pipeline demo\n  pipeline demo --jobs 2000 --workers 2\n"
        "  pipeline demo --jobs 500 --latency lognormal:200,1500 --faults '500@0.05' --json\n"
        "  OPENAI_API_KEY=sk-... pipeline demo --provider openai",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--jobs", type=int, default=len(ROUTES), help="jobs to publish (default: one per route)")
    demo.add_argument("--workers", type=int, default=1, help="worker processes in the group (default 1)")
    demo.add_argument("--json", action="store_true", help="print a machine-readable summary only")
    demo.add_argument("--latency", help="simulator latency, e.g. fixed:200 or lognormal:300,2000")
    demo.add_argument("--faults", help="simulator faults, e.g. '500@0.02,429@0.05'")
    demo.add_argument("--provider", choices=["simulator", "openai"], default="simulator")
    demo.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    demo.add_argument(
        "--review",
        action="store_true",
        help="then leave the review console running on the demo's data (prints its address and a token)",
    )
    demo.add_argument("--review-port", type=int, default=8090, help="the console's port with --review (0: any)")
    demo.set_defaults(handler=demo_command)
