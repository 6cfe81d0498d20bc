"""``pipeline replay``: send review records of chosen reasons back to the input topic.

For recovery after an outage: ``api_error`` reviews are re-driven once the provider is back. Each job is
sent at most once per run (a review topic can hold several records for one job after reprocessing), with
its id, model, params and metadata intact and the ``pipeline_replay-count`` header raised by one; jobs at
``--max-replays`` are left alone so a permanent failure cannot loop for ever.

Runs continue where the last one stopped: each reason kind keeps a cursor, the committed offsets of the
consumer group ``<group>.replay.<reason>`` on the review topic, moved after the run's sends are acknowledged
to just past the last record it looked at. So ``--limit`` sends an incident's jobs in batches, and a second
run does not send them again; ``--from-beginning`` ignores the cursors, ``--since`` skips older reviews.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from tqdm import tqdm

from pipeline.commands.common import (
    TOPIC_OPTIONS,
    CliError,
    add_kafka_flags,
    kafka_errors,
    load_common,
    parse_reasons,
    partitions_of,
    progress_bar,
    read_to_end,
    require_topics,
    run_async,
)
from pipeline.commands.tail import describe_reason
from pipeline.kafka import (
    KafkaSettings,
    committed_with_retries,
    make_admin,
    make_consumer,
    make_producer,
)
from schemas.topics import HEADER_JOB_ID, HEADER_REPLAY_COUNT, Review, reason_kind

_review_decoder = msgspec.json.Decoder(Review)
#: ``--since 30m``: seconds per unit of an age.
_AGE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_encoder = msgspec.json.Encoder()


def replay_count(headers: Any) -> int:
    for name, value in headers or ():
        if name == HEADER_REPLAY_COUNT:
            try:
                return int(value.decode())
            except (ValueError, AttributeError):
                return 0
    return 0


def parse_since(text: str, now: datetime | None = None) -> int:
    """``--since``: an ISO 8601 time (UTC when it names no zone) or an age like ``90s``, ``30m``, ``6h``,
    ``2d``; returns epoch milliseconds."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in _AGE_UNITS:
        return int((now - timedelta(seconds=int(text[:-1]) * _AGE_UNITS[text[-1]])).timestamp() * 1000)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since {text!r}: give an ISO 8601 time (2026-11-26T03:00Z) or an age (30m, 6h, 2d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


#: How long a coordinator that is loading or moving may take to answer for a cursor; a cursor that cannot
#: be read stops the run (it is never taken for "no cursor", which would replay everything again).
CURSOR_READ_WITHIN_S: Final = 30.0


def cursor_group(group_id: str, reason: str) -> str:
    return f"{group_id}.replay.{reason}"


async def read_cursors(
    kafka: KafkaSettings, group_id: str, reasons: set[str], partitions: list[TopicPartition]
) -> dict[str, dict[TopicPartition, int]]:
    """Each reason's cursor: per partition, the first review offset its earlier runs have not looked at."""
    admin = make_admin(kafka)
    await admin.start()
    try:
        return {
            reason: {
                tp: om.offset
                for tp, om in (
                    await committed_with_retries(
                        admin, cursor_group(group_id, reason), partitions, within_s=CURSOR_READ_WITHIN_S
                    )
                ).items()
            }
            for reason in sorted(reasons)
        }
    finally:
        await admin.close()


async def move_cursors(
    kafka: KafkaSettings,
    group_id: str,
    cursors: dict[str, dict[TopicPartition, int]],
    looked_at: dict[TopicPartition, int],
) -> None:
    """Move each reason's cursor to just past the last record this run looked at; never back (a run from
    the beginning that stopped early must not make the next run send again what an earlier one sent)."""
    for reason, cursor in sorted(cursors.items()):
        offsets = {tp: OffsetAndMetadata(max(offset, cursor.get(tp, 0)), "") for tp, offset in looked_at.items()}
        committer = make_consumer(kafka, cursor_group(group_id, reason))
        await committer.start()
        try:
            committer.assign(list(offsets))
            await committer.commit(offsets)
        finally:
            await committer.stop()


async def replay_reviews(args: argparse.Namespace) -> int:
    common = load_common(args)
    worker = common.worker
    reasons = parse_reasons(args.reason)
    if "invalid_job" in reasons:
        raise CliError("--reason invalid_job: invalid jobs carry no job to replay; fix them at the producer")
    since_ms = parse_since(args.since) if args.since else None
    await require_topics(common.kafka, [worker.review_topic, worker.input_topic])
    partitions = await partitions_of(common.kafka, worker.review_topic)
    with kafka_errors(common.kafka):
        stored = await read_cursors(common.kafka, worker.group_id, reasons, partitions)
    cursors = {reason: {} for reason in reasons} if args.from_beginning else stored
    consumer = make_consumer(common.kafka, None)
    producer = make_producer(common.kafka)
    with kafka_errors(common.kafka):
        await consumer.start()
        if not args.dry_run:
            await producer.start()
    sent: set[str] = set()
    skipped: Counter[str] = Counter()
    pending: list[asyncio.Future[Any]] = []
    looked_at: dict[TopicPartition, int] = {}
    progress = progress_bar("records")
    try:
        consumer.assign(partitions)
        for tp in partitions:  # the earliest of the chosen reasons' cursors; 0 is the log start (seek_to_log_start)
            consumer.seek(tp, min(cursor.get(tp, 0) for cursor in cursors.values()))
        async for record in read_to_end(consumer, partitions):
            tp = TopicPartition(record.topic, record.partition)
            looked_at[tp] = record.offset + 1
            progress.update()
            try:
                review = _review_decoder.decode(record.value or b"")
            except msgspec.MsgspecError:
                skipped["not a review record"] += 1
                continue
            reason = reason_kind(review.reason)
            if reason not in reasons or record.offset < cursors[reason].get(tp, 0):
                continue
            if since_ms is not None and record.timestamp < since_ms:
                skipped["older than --since"] += 1
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
                tqdm.write(f"would replay {review.job.id}  {describe_reason(review.reason)}  (replay {count})")
            else:
                key = review.job.id.encode()
                headers = [(HEADER_JOB_ID, key), (HEADER_REPLAY_COUNT, str(count).encode())]
                pending.append(
                    await producer.send(worker.input_topic, _encoder.encode(review.job), key=key, headers=headers)
                )
            if args.limit is not None and len(sent) >= args.limit:
                break
        await asyncio.gather(*pending)
        if not args.dry_run and looked_at:
            with kafka_errors(common.kafka):
                await move_cursors(common.kafka, worker.group_id, stored, looked_at)
    finally:
        progress.close()
        await consumer.stop()
        if not args.dry_run:
            await producer.stop()
    verb = "would replay" if args.dry_run else "replayed"
    details = "; ".join(f"{n} {why}" for why, n in skipped.items())
    jobs = f"{len(sent)} job{'' if len(sent) == 1 else 's'}"
    print(f"{verb} {jobs} to {worker.input_topic}" + (f" (skipped: {details})" if details else ""))
    if args.limit is not None and len(sent) >= args.limit and not args.dry_run:
        print("stopped at --limit: run it again to send the next batch")
    return 0


def add_parser(commands: Any) -> None:
    replay = commands.add_parser(
        "replay",
        help="re-drive review records of chosen reasons to the input topic",
        description="Read the review topic from where the last run stopped up to its current end and send the "
        "jobs of the chosen reasons back to the input topic, each at most once per run, with a raised "
        "replay-count header. Each reason's cursor is the consumer group <group>.replay.<reason>.",
        epilog="examples:\n  pipeline replay --reason api_error --since 2h --dry-run\n  pipeline replay --reason "
        "api_error --limit 5000   (again for the next 5000)\n  pipeline replay --reason api_error,"
        "moderation_error --max-replays 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("--reason", default="api_error", help="comma-separated reason kinds (default: api_error)")
    replay.add_argument("--dry-run", action="store_true", help="show what would be sent, send nothing")
    replay.add_argument("--max-replays", type=int, default=3, help="skip jobs replayed this many times already")
    replay.add_argument("--limit", type=int, help="replay at most this many jobs (the next run sends the next ones)")
    replay.add_argument(
        "--since",
        metavar="TIME",
        help="only reviews written since TIME: ISO 8601 (UTC unless it says) or an age like 30m, 6h, 2d",
    )
    replay.add_argument(
        "--from-beginning", action="store_true", help="read the whole review topic, not just what earlier runs left"
    )
    add_kafka_flags(replay, TOPIC_OPTIONS)
    replay.set_defaults(handler=run_async(replay_reviews))
