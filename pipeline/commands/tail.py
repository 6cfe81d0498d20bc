"""``pipeline tail completions|review``: follow the output or review topic, pretty-printed or raw."""

from __future__ import annotations

import argparse
import time
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
    require_topics,
    run_async,
)
from pipeline.kafka import make_consumer, seek_to_log_start
from schemas.topics import (
    ApiFailure,
    Cancelled,
    Flagged,
    InvalidJob,
    ModerationFailed,
    Reason,
    Result,
    Review,
    reason_kind,
)

_result_decoder = msgspec.json.Decoder(Result)
_review_decoder = msgspec.json.Decoder(Review)


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")


def describe_reason(reason: Reason) -> str:
    """A reason in a few words: ``flagged(output: violence 0.91)``, ``api_error(http 503, 4 attempts)``."""
    kind = reason_kind(reason)
    if isinstance(reason, Flagged):
        top = ", ".join(f"{c.category} {c.score:.2f}" for c in reason.categories[:3])
        return f"{kind}({reason.side}: {top})"
    if isinstance(reason, ModerationFailed):
        return f"{kind}({reason.side}: {reason.code})"
    if isinstance(reason, ApiFailure):
        what = f"http {reason.status}" if reason.status else reason.failure
        return f"{kind}({what}, {reason.attempts} attempts)"
    if isinstance(reason, InvalidJob):
        return f"{kind}({reason.error[:50]})"
    if isinstance(reason, Cancelled):
        return f"{kind}(batch {reason.batch_id})"
    return kind


def format_record(role: str, value: bytes) -> str:
    """One line for a human: route, reason, id, the start of the content."""
    try:
        if role == "completions":
            result = _result_decoder.decode(value)
            return f"output  {result.id}  {result.finish_reason}  {_short(result.content)}"
        review = _review_decoder.decode(value)
    except msgspec.MsgspecError as exc:
        return f"??????  (not a pipeline record: {exc})"
    content = None
    if review.completion is not None and review.completion.choices:
        content = review.completion.choices[0].message.content
    return f"review  {describe_reason(review.reason)}  {review.id or '(no id)'}  {_short(content)}"


def _review_kind(value: bytes) -> str | None:
    try:
        return reason_kind(_review_decoder.decode(value).reason)
    except msgspec.MsgspecError:
        return None


async def tail_topic(args: argparse.Namespace) -> int:
    common = load_common(args)
    topic = common.worker.output_topic if args.role == "completions" else common.worker.review_topic
    reasons = parse_reasons(args.reason) if args.reason else None
    if reasons is not None and args.role != "review":
        raise CliError("--reason filters review records: use `pipeline tail review --reason ...`")
    await require_topics(common.kafka, [topic])
    consumer = make_consumer(common.kafka, None)
    with kafka_errors(common.kafka):
        await consumer.start()
    shown = 0
    started_ms = int(time.time() * 1000)
    try:
        partitions = await partitions_of(common.kafka, topic)
        consumer.assign(partitions)
        if args.from_beginning:
            seek_to_log_start(consumer, partitions)
        else:
            # end_offsets() can point a little early on the embedded broker; the timestamp filter trims that.
            for tp, end in (await consumer.end_offsets(partitions)).items():
                consumer.seek(tp, end)
        idle_since = time.monotonic()
        while args.timeout is None or time.monotonic() - idle_since < args.timeout:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if not args.from_beginning and record.timestamp < started_ms:
                        continue
                    value = record.value or b""
                    if reasons is not None and _review_kind(value) not in reasons:
                        continue
                    idle_since = time.monotonic()
                    print(value.decode(errors="replace") if args.json else format_record(args.role, value), flush=True)
                    shown += 1
                    if args.limit is not None and shown >= args.limit:
                        return 0
    finally:
        await consumer.stop()
    return 0


def add_parser(commands: Any) -> None:
    tail = commands.add_parser(
        "tail",
        help="follow the completions or review topic",
        description="Print records as they arrive: route, reason, job id and the start of the content, or the "
        "raw JSON with --json.",
        epilog="examples:\n  pipeline tail completions\n"
        "  pipeline tail review --from-beginning --reason flagged,api_error\n"
        "  pipeline tail review --json --limit 10",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("role", choices=["completions", "review"], help="which topic to follow")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record, not now")
    tail.add_argument("--json", action="store_true", help="print each record's raw JSON")
    tail.add_argument("--reason", help="review only: comma-separated reason kinds to show")
    tail.add_argument("--limit", type=int, help="stop after this many records")
    tail.add_argument("--timeout", type=float, help="stop after this many seconds without a new record")
    add_kafka_flags(tail, TOPIC_OPTIONS)
    tail.set_defaults(handler=run_async(tail_topic))
