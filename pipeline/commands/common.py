"""What every command shares: settings resolution, Kafka error translation, reading a topic to its end, the
progress bar."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Never

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from tqdm import tqdm

from pipeline.config import WORKER_OPTIONS, Option, WorkerSettings, add_option_flags, load_worker_settings
from pipeline.config import resolve_values as _resolve_values
from pipeline.kafka import KAFKA_OPTIONS, KafkaSettings, load_kafka_settings, make_admin
from schemas.topics import REASON_KINDS


class CliError(Exception):
    """A failure the user can act on, printed as one line (no traceback) with a non-zero exit."""


def parse_reasons(text: str) -> set[str]:
    """``--reason flagged,api_error``: the review reason kinds named, each one checked."""
    reasons = {part.strip() for part in text.split(",") if part.strip()}
    unknown = reasons - set(REASON_KINDS)
    if unknown:
        raise CliError(f"--reason: unknown kind {', '.join(sorted(unknown))}; known: {', '.join(REASON_KINDS)}")
    return reasons


def progress_bar(
    unit: str, total_bytes: int | None = None, *, total: int | None = None, initial: int = 0, desc: str | None = None
) -> tqdm[Never]:
    """A progress bar on stderr, drawn only when stderr is a terminal, so a pipe or a log never fills with it.

    With ``total_bytes`` (a file's size) it counts bytes, ``update(len(line))``, and shows the share done, the
    rate and the time left; without, it counts ``unit`` (``update()`` per line or record) and shows the rate,
    and with ``total`` (a known count) the share done and the time left too.
    Messages meant for the same terminal go through ``tqdm.write`` so they do not break the bar's line.
    """
    if total_bytes is not None:
        return tqdm(
            total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=None, desc=desc
        )
    return tqdm(total=total, initial=initial, unit=f" {unit}", file=sys.stderr, disable=None, desc=desc)


def run_async(
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
) -> Callable[[argparse.Namespace], int]:
    """An argparse handler that runs an async command on a fresh event loop."""

    def run(args: argparse.Namespace) -> int:
        return asyncio.run(handler(args))

    return run


#: Every setting any command reads, so one --config file can serve them all (filled by pipeline.cli).
KNOWN_SETTINGS: set[str] = {o.env for o in (*KAFKA_OPTIONS, *WORKER_OPTIONS)}


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file of settings (flags and env vars win over it)")


def add_kafka_flags(parser: argparse.ArgumentParser, topics: Iterable[Option] = ()) -> None:
    add_config_flag(parser)
    add_option_flags(parser, KAFKA_OPTIONS, "Kafka")
    if topics:
        add_option_flags(parser, topics, "topics")


def resolve_values(
    args: argparse.Namespace, options: Iterable[Option], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    return _resolve_values(args, options, os.environ if environ is None else environ, KNOWN_SETTINGS)


@dataclass(frozen=True)
class CommonSettings:
    kafka: KafkaSettings
    worker: WorkerSettings


TOPIC_OPTIONS: tuple[Option, ...] = tuple(
    o for o in WORKER_OPTIONS if o.env.endswith("_TOPIC") or o.env == "PIPELINE_GROUP_ID"
)


def load_common(args: argparse.Namespace) -> CommonSettings:
    values = resolve_values(args, (*KAFKA_OPTIONS, *TOPIC_OPTIONS))
    return CommonSettings(kafka=load_kafka_settings(values), worker=load_worker_settings(values))


@contextlib.contextmanager
def quiet(logger_name: str = "aiokafka") -> Iterator[None]:
    """Silence a library's own error lines while we turn its exception into one clear line."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextlib.contextmanager
def kafka_errors(settings: KafkaSettings) -> Iterator[None]:
    """Translate connection failures into one line naming the address tried, and any other Kafka error into
    one line naming it."""
    try:
        with quiet():
            yield
    except KafkaConnectionError:
        raise CliError(
            f"cannot reach Kafka at {settings.bootstrap_servers} (KAFKA_BOOTSTRAP_SERVERS): is the broker "
            "running? (`pipeline broker` starts a local one)"
        ) from None
    except KafkaError as exc:
        raise CliError(f"Kafka at {settings.bootstrap_servers} answered {type(exc).__name__}: {exc}") from None


async def require_topics(settings: KafkaSettings, topics: Iterable[str]) -> None:
    admin = make_admin(settings)
    with kafka_errors(settings):
        await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if missing:
        raise CliError(
            f"topic {', '.join(missing)} not found on {settings.bootstrap_servers}; "
            "create the pipeline's topics with `pipeline topics create`"
        )


async def partitions_of(settings: KafkaSettings, topic: str) -> list[TopicPartition]:
    """A topic's partitions, from the cluster (a consumer's cache only knows the topics it reads)."""
    admin = make_admin(settings)
    with kafka_errors(settings):
        await admin.start()
    try:
        (description,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [
        TopicPartition(topic, p["partition"]) for p in sorted(description["partitions"], key=lambda p: p["partition"])
    ]


async def read_to_end(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], idle_s: float = 3.0
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Every record from the current positions up to the end as of now.

    The end comes from each fetch's high watermark, which is right on every broker (``end_offsets()`` is
    not on the embedded one). A partition that returns nothing for ``idle_s`` counts as finished.
    """
    remaining = set(partitions)
    last_progress = time.monotonic()
    targets: dict[TopicPartition, int] = {}
    while remaining:
        try:
            batches = await consumer.getmany(*remaining, timeout_ms=200)
        except KafkaError:
            batches = {}
        for tp, records in batches.items():
            for record in records:
                if tp in targets and record.offset >= targets[tp]:
                    break
                yield record
            last_progress = time.monotonic()
        for tp in list(remaining):
            highwater = consumer.highwater(tp)
            if highwater is not None:
                targets.setdefault(tp, highwater)
                if await consumer.position(tp) >= targets[tp]:
                    remaining.discard(tp)
        if time.monotonic() - last_progress > idle_s:
            break
