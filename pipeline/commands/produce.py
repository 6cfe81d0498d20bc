"""``pipeline produce FILE.jsonl|-``: validate jobs line by line and publish the valid ones.

Invalid lines (not a job, a job the worker would refuse, or a job id already seen in this file) are reported
with their line number and reason and are not published; ``--strict`` stops at the first one. The exit code
is 1 when any line was invalid, so scripts notice.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from pipeline.commands.common import (
    TOPIC_OPTIONS,
    CliError,
    CommonSettings,
    add_kafka_flags,
    kafka_errors,
    load_common,
    progress_bar,
    require_topics,
)
from pipeline.kafka import make_producer
from pipeline.routing import repeated_key
from schemas.topics import HEADER_JOB_ID, Job, decode_job

#: Sends awaited together; bounds memory for long files while keeping the producer's batches full.
WINDOW = 2_000


def produce_command(args: argparse.Namespace) -> int:
    common = load_common(args)
    path: str = args.file
    if path == "-":
        return asyncio.run(produce_jobs(common, sys.stdin.buffer, None, args.strict))
    if not Path(path).is_file():
        raise CliError(f"no such file: {path}")
    with Path(path).open("rb") as source:
        return asyncio.run(produce_jobs(common, source, Path(path).stat().st_size, args.strict))


def check_line(line: bytes, *, max_job_bytes: int, seen: dict[str, int]) -> Job | str:
    """The job on ``line``, or why it is not one: what the worker would refuse (it decodes each record the
    same way, and refuses one where an object names a key twice), or an id already on an earlier line
    (``seen``: id → line number)."""
    job = decode_job(line, max_bytes=max_job_bytes)
    if not isinstance(job, Job):
        return job.error
    if (key := repeated_key(line)) is not None:
        return f"an object names the key {key!r} twice (ambiguous: the worker refuses it)"
    if job.id in seen:
        return f"duplicate id {job.id!r} (first on line {seen[job.id]})"
    return job


async def produce_jobs(common: CommonSettings, source: IO[bytes], size: int | None, strict: bool) -> int:
    topic = common.worker.input_topic
    await require_topics(common.kafka, [topic])
    producer = make_producer(common.kafka)
    with kafka_errors(common.kafka):
        await producer.start()
    progress = progress_bar("lines", total_bytes=size)
    seen: dict[str, int] = {}
    published = invalid = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        for number, raw in enumerate(source, start=1):
            progress.update(len(raw) if size is not None else 1)
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            job = check_line(line, max_job_bytes=common.worker.max_job_bytes, seen=seen)
            if not isinstance(job, Job):
                invalid += 1
                tqdm.write(f"line {number}: {job}", file=sys.stderr)
                if strict:
                    break
                continue
            seen[job.id] = number
            key = job.id.encode()
            pending.append(await producer.send(topic, line, key=key, headers=[(HEADER_JOB_ID, key)]))
            published += 1
            if len(pending) >= WINDOW:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        progress.close()
        await producer.stop()
    stopped = " (stopped at the first invalid line: --strict)" if strict and invalid else ""
    print(f"published {published:,} jobs to {topic}; {invalid:,} invalid lines not published{stopped}")
    return 1 if invalid else 0


def add_parser(commands: Any) -> None:
    produce = commands.add_parser(
        "produce",
        help="validate jobs from JSONL and publish them to the input topic",
        description="Read one job per line (JSON objects: id, messages, model?, params?, moderation_model?, "
        "metadata?), report invalid lines with their number and reason, publish the rest keyed by job id.",
        epilog="examples:\n  pipeline produce jobs.jsonl\n  cat jobs.jsonl | pipeline produce - --strict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    produce.add_argument("file", metavar="FILE.jsonl|-", help="JSONL file, or - for standard input")
    produce.add_argument("--strict", action="store_true", help="stop at the first invalid line")
    add_kafka_flags(produce, TOPIC_OPTIONS)
    produce.set_defaults(handler=produce_command)
