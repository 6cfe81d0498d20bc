"""``pipeline run``: the worker, with its metrics/health server and signal handling.

SIGTERM or SIGINT starts a graceful stop (stop fetching, drain up to ``PIPELINE_DRAIN_TIMEOUT_S``, flush,
commit, leave the group, exit 0); a second signal exits at once with code 130 — whatever was not committed
is reprocessed by the next owner, nothing is lost. An error the worker cannot get past (Kafka refusing it
for good, a loop that died: see ``pipeline.worker``) drains what it can, then exits 1 with one line naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pipeline.client import CLIENT_OPTIONS, ChatClient, ClientConfig
from pipeline.commands.common import (
    CliError,
    add_config_flag,
    kafka_errors,
    resolve_values,
)
from pipeline.config import WORKER_OPTIONS, WorkerSettings, add_option_flags, load_worker_settings
from pipeline.kafka import KAFKA_OPTIONS, KafkaSettings, load_kafka_settings
from pipeline.logs import configure_logging
from pipeline.metrics import HealthServer, Metrics, MetricsObserver
from pipeline.worker import TopicMissing, Worker, WorkerFailed

log = logging.getLogger("pipeline.run")

RUN_OPTIONS = (*KAFKA_OPTIONS, *WORKER_OPTIONS, *CLIENT_OPTIONS)
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
#: The exit code of a second signal (128 + SIGINT, as a shell reports an interrupted command).
EXIT_AT_ONCE: Final = 130


class StopSignals:
    """The handler of SIGTERM and SIGINT: the first starts a graceful stop, a second exits at once."""

    def __init__(self, stop: asyncio.Event, exit_now: Callable[[int], object] = os._exit) -> None:
        self._stop = stop
        self._exit_now = exit_now
        self.received = 0

    def __call__(self) -> None:
        self.received += 1
        if self.received > 1:
            log.warning("second signal: exiting now; uncommitted jobs will be reprocessed")
            self._exit_now(EXIT_AT_ONCE)
            return
        log.info("stopping: draining in-flight jobs")
        self._stop.set()


@dataclass(frozen=True)
class RunSettings:
    kafka: KafkaSettings
    worker: WorkerSettings
    client: ClientConfig


def load_run_settings(values: Mapping[str, str]) -> RunSettings:
    return RunSettings(
        kafka=load_kafka_settings(values),
        worker=load_worker_settings(values),
        client=ClientConfig.from_env(values),
    )


async def run_worker(settings: RunSettings, stop: asyncio.Event | None = None) -> int:
    """Run one worker until ``stop`` is set or a signal arrives; returns the exit code."""
    stop = stop or asyncio.Event()
    metrics = Metrics()
    client = ChatClient(settings.client, observer=MetricsObserver(metrics))
    worker = Worker(settings.worker, settings.kafka, client, metrics)
    health = HealthServer(metrics, alive=lambda: worker.alive, ready=lambda: worker.ready)
    loop = asyncio.get_running_loop()
    on_signal = StopSignals(stop)
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal)
    try:
        try:
            await health.start(settings.worker.metrics_host, settings.worker.metrics_port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(
                    f"port {settings.worker.metrics_port} on {settings.worker.metrics_host} is in use "
                    "(PIPELINE_METRICS_PORT; 0 picks a free one)"
                ) from None
            raise
        log.info(
            "worker starting",
            extra={"detail": f"metrics on http://{settings.worker.metrics_host}:{health.port}/metrics"},
        )
        with kafka_errors(settings.kafka):
            try:
                await worker.run(stop)
            except (TopicMissing, WorkerFailed) as exc:
                raise CliError(f"worker stopped: {exc}" if isinstance(exc, WorkerFailed) else str(exc)) from None
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        await health.stop()
        await client.aclose()
    log.info("worker stopped")
    return 0


def run_command(args: argparse.Namespace) -> int:
    settings = load_run_settings(resolve_values(args, RUN_OPTIONS))
    configure_logging(settings.worker.log_level)
    return asyncio.run(run_worker(settings))


def add_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a worker (scale out by running more in the same group)",
        description="Consume prompt jobs, call the Chat Completions API with inline moderation, and route each "
        "job to the output or review topic. Every option is also an environment variable (in brackets).",
        epilog="example:\n  KAFKA_BOOTSTRAP_SERVERS=kafka:9092 OPENAI_API_KEY=sk-... pipeline run --concurrency 256",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_flag(run)
    add_option_flags(run, KAFKA_OPTIONS, "Kafka")
    add_option_flags(run, WORKER_OPTIONS, "worker")
    add_option_flags(run, CLIENT_OPTIONS, "provider")
    run.set_defaults(handler=run_command)
