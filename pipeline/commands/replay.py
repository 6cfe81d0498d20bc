"""``pipeline replay``: send review records of chosen reasons back to the input topic.

For recovery after an outage: ``api_error`` reviews are re-driven once the provider is back. Each job is
sent at most once per run (a review topic can hold several records for one job after reprocessing), with
its id, model, params and metadata intact and the ``pipeline_replay-count`` header raised by one; jobs at
``--max-replays`` are left alone so a permanent failure cannot loop for ever.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from typing import Any

import msgspec

from pipeline.commands.common import (
    TOPIC_OPTIONS,
    CliError,
    add_kafka_flags,
    kafka_errors,
    load_common,
    parse_reasons,
    partitions_of,
    read_to_end,
    require_topics,
    run_async,
)
from pipeline.commands.tail import describe_reason
from pipeline.kafka import make_consumer, make_producer, seek_to_log_start
from schemas.topics import HEADER_JOB_ID, HEADER_REPLAY_COUNT, Review, reason_kind

_review_decoder = msgspec.json.Decoder(Review)
_encoder = msgspec.json.Encoder()


def replay_count(headers: Any) -> int:
    for name, value in headers or ():
        if name == HEADER_REPLAY_COUNT:
            try:
                return int(value.decode())
            except (ValueError, AttributeError):
                return 0
    return 0


async def replay_reviews(args: argparse.Namespace) -> int:
    common = load_common(args)
    worker = common.worker
    reasons = parse_reasons(args.reason)
    if "invalid_job" in reasons:
        raise CliError("--reason invalid_job: invalid jobs carry no job to replay; fix them at the producer")
    await require_topics(common.kafka, [worker.review_topic, worker.input_topic])
    consumer = make_consumer(common.kafka, None)
    producer = make_producer(common.kafka)
    with kafka_errors(common.kafka):
        await consumer.start()
        if not args.dry_run:
            await producer.start()
    sent: set[str] = set()
    skipped: Counter[str] = Counter()
    pending: list[asyncio.Future[Any]] = []
    try:
        partitions = await partitions_of(common.kafka, worker.review_topic)
        consumer.assign(partitions)
        seek_to_log_start(consumer, partitions)
        async for record in read_to_end(consumer, partitions):
            try:
                review = _review_decoder.decode(record.value or b"")
            except msgspec.MsgspecError:
                skipped["not a review record"] += 1
                continue
            if reason_kind(review.reason) not in reasons:
                continue
            if review.job is None:
                skipped["no job in the review record"] += 1
                continue
            if review.job.id in sent:
                skipped["already replayed in this run"] += 1
                continue
            count = replay_count(record.headers) + 1
            if count > args.max_replays:
                skipped[f"replayed {args.max_replays} times already (--max-replays)"] += 1
                continue
            sent.add(review.job.id)
            if args.dry_run:
                print(f"would replay {review.job.id}  {describe_reason(review.reason)}  (replay {count})")
                if args.limit is not None and len(sent) >= args.limit:
                    break
                continue
            key = review.job.id.encode()
            headers = [(HEADER_JOB_ID, key), (HEADER_REPLAY_COUNT, str(count).encode())]
            pending.append(
                await producer.send(worker.input_topic, _encoder.encode(review.job), key=key, headers=headers)
            )
            if args.limit is not None and len(sent) >= args.limit:
                break
        await asyncio.gather(*pending)
    finally:
        await consumer.stop()
        if not args.dry_run:
            await producer.stop()
    verb = "would replay" if args.dry_run else "replayed"
    details = "; ".join(f"{n} {why}" for why, n in skipped.items())
    print(f"{verb} {len(sent)} jobs to {worker.input_topic}" + (f" (skipped: {details})" if details else ""))
    return 0


def add_parser(commands: Any) -> None:
    replay = commands.add_parser(
        "replay",
        help="re-drive review records of chosen reasons to the input topic",
        description="Read the review topic up to its current end and send the jobs of the chosen reasons back "
        "to the input topic, each at most once per run, with a raised replay-count header.",
        epilog="examples:\n  pipeline replay --reason api_error --dry-run\n  pipeline replay --reason api_error,"
        "moderation_error --max-replays 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("--reason", default="api_error", help="comma-separated reason kinds (default: api_error)")
    replay.add_argument("--dry-run", action="store_true", help="show what would be sent, send nothing")
    replay.add_argument("--max-replays", type=int, default=3, help="skip jobs replayed this many times already")
    replay.add_argument("--limit", type=int, help="replay at most this many jobs")
    add_kafka_flags(replay, TOPIC_OPTIONS)
    replay.set_defaults(handler=run_async(replay_reviews))
