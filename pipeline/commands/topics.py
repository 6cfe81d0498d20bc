"""``pipeline topics create|describe``: the pipeline's topics (input, output, review, the review console's
decisions, the compacted batch manifests and the tenants' spend), idempotently; partitions, ends, the group's
lag."""

from __future__ import annotations

import argparse
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.batch.manifest import new_batches_topic
from pipeline.commands.common import (
    TOPIC_OPTIONS,
    add_kafka_flags,
    kafka_errors,
    load_common,
    partitions_of,
    require_topics,
    run_async,
)
from pipeline.kafka import committed_with_retries, make_admin, make_consumer
from pipeline.tenancy.spend_topic import SPEND_RETENTION_MS

DEFAULT_PARTITIONS = 6


async def create_topics(args: argparse.Namespace) -> int:
    common = load_common(args)
    # The decisions topic is an audit log: a normal topic, never compacted (every record is kept).
    names = [
        common.worker.input_topic,
        common.worker.output_topic,
        common.worker.review_topic,
        common.worker.decisions_topic,
    ]
    configs: dict[str, str] = {}
    if args.retention_ms is not None:
        configs["retention.ms"] = str(args.retention_ms)
    admin = make_admin(common.kafka)
    with kafka_errors(common.kafka):
        await admin.start()
    try:
        existing = set(await admin.list_topics())
        for name in names:
            if name in existing:
                print(f"exists   {name}")
                continue
            try:
                await admin.create_topics(
                    [NewTopic(name, args.partitions, args.replication_factor, topic_configs=configs)]
                )
                print(f"created  {name}  partitions={args.partitions} replication={args.replication_factor}")
            except TopicAlreadyExistsError:
                print(f"exists   {name}")
        # Batch manifests: compacted (a batch's latest manifest is kept however old), one partition, and
        # never given the job topics' retention.
        batches = common.worker.batches_topic
        if batches in existing:
            print(f"exists   {batches}")
        else:
            try:
                await admin.create_topics([new_batches_topic(batches, args.replication_factor)])
                print(f"created  {batches}  partitions=1 replication={args.replication_factor} cleanup.policy=compact")
            except TopicAlreadyExistsError:
                print(f"exists   {batches}")
        # Tenants' spend (budgets held across the group): kept as long as a monthly budget reads back, never
        # the job topics' retention.
        spend = common.worker.spend_topic
        if spend in existing:
            print(f"exists   {spend}")
        else:
            try:
                retention = {"retention.ms": str(SPEND_RETENTION_MS)}
                await admin.create_topics([NewTopic(spend, 1, args.replication_factor, topic_configs=retention)])
                shown = f"partitions=1 replication={args.replication_factor} retention.ms={SPEND_RETENTION_MS}"
                print(f"created  {spend}  {shown}")
            except TopicAlreadyExistsError:
                print(f"exists   {spend}")
    finally:
        await admin.close()
    return 0


async def describe_topics(args: argparse.Namespace) -> int:
    common = load_common(args)
    worker = common.worker
    names = [worker.input_topic, worker.output_topic, worker.review_topic]
    await require_topics(common.kafka, names)
    consumer = make_consumer(common.kafka, None)
    admin = make_admin(common.kafka)
    with kafka_errors(common.kafka):
        await consumer.start()
        await admin.start()
    try:
        rows: list[dict[str, Any]] = []
        for name in names:
            partitions = await partitions_of(common.kafka, name)
            ends = await _high_watermarks(consumer, partitions)
            committed = (
                await committed_with_retries(admin, worker.group_id, partitions, within_s=10.0)
                if name == worker.input_topic
                else {}
            )
            for tp in partitions:
                offset = committed.get(tp)
                rows.append(
                    {
                        "topic": name,
                        "partition": tp.partition,
                        "end": ends.get(tp),
                        "committed": offset.offset if offset else None,
                        "lag": (ends[tp] - offset.offset) if offset and ends.get(tp) is not None else None,
                    }
                )
    finally:
        await consumer.stop()
        await admin.close()
    print(f"consumer group: {worker.group_id} (committed offsets and lag are for {worker.input_topic})")
    print(f"{'topic':<24} {'partition':>9} {'end offset':>11} {'committed':>10} {'lag':>8}")
    for row in rows:
        show = {k: "-" if v is None else v for k, v in row.items()}
        print(f"{show['topic']:<24} {show['partition']:>9} {show['end']:>11} {show['committed']:>10} {show['lag']:>8}")
    return 0


async def _high_watermarks(consumer: Any, partitions: list[Any]) -> dict[Any, int]:
    """End offsets from a fetch's high watermark (``end_offsets()`` is wrong on the embedded broker)."""
    if not partitions:
        return {}
    consumer.assign(partitions)
    estimates = await consumer.end_offsets(partitions)
    for tp in partitions:
        consumer.seek(tp, max(0, estimates[tp] - 1))
    ends: dict[Any, int] = {}
    for _ in range(20):
        await consumer.getmany(timeout_ms=100)
        for tp in partitions:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = highwater
        if len(ends) == len(partitions):
            break
    return ends


def add_parser(commands: Any) -> None:
    topics = commands.add_parser(
        "topics",
        help="create or describe the pipeline's topics",
        description="Create the pipeline's topics: input, output, review, review-decisions and batches "
        "(compacted, one partition) (idempotent), or show their partitions, end offsets and the consumer group's "
        "committed offsets and lag.",
        epilog="examples:\n  pipeline topics create --partitions 12\n  pipeline topics describe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = topics.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="create the topics if missing",
        epilog="example: pipeline topics create --partitions 12 --replication-factor 3 --retention-ms 604800000",
    )
    create.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS, help="partitions per topic")
    create.add_argument("--replication-factor", type=int, default=1, help="replicas per partition")
    create.add_argument("--retention-ms", type=int, default=None, help="retention.ms for the topics")
    add_kafka_flags(create, TOPIC_OPTIONS)
    create.set_defaults(handler=run_async(create_topics))
    describe = actions.add_parser(
        "describe",
        help="partitions, end offsets, committed offsets and lag",
        epilog="example: pipeline topics describe --group-id pipeline",
    )
    add_kafka_flags(describe, TOPIC_OPTIONS)
    describe.set_defaults(handler=run_async(describe_topics))
