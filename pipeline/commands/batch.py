"""``pipeline batch submit|status|results|list|cancel``: OpenAI Batch API files through the pipeline.

The work is done in :mod:`pipeline.batch`; this module parses the command line, draws the progress bars
(on a terminal only) and turns every failure into one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Never

from tqdm import tqdm

from pipeline.batch import (
    BatchesTopicMissing,
    BatchFollower,
    Counts,
    InvalidLines,
    LineProblem,
    NotFinished,
    NothingToCancel,
    ResultsRequest,
    SubmitRefused,
    SubmitRequest,
    Topics,
    UnknownBatch,
    batch_status,
    cancel_batch,
    read_manifest,
    read_manifests,
    status_json,
    status_text,
    submit_batch,
    write_results,
)
from pipeline.batch.status import file_size
from pipeline.commands.common import (
    TOPIC_OPTIONS,
    CliError,
    add_kafka_flags,
    kafka_errors,
    progress_bar,
    require_topics,
    resolve_values,
    run_async,
)
from pipeline.config import WORKER_OPTIONS, WorkerSettings, load_worker_settings
from pipeline.kafka import KAFKA_OPTIONS, KafkaSettings, load_kafka_settings
from schemas.batches import BatchManifest

_MAX_JOB_BYTES = tuple(o for o in WORKER_OPTIONS if o.env == "PIPELINE_MAX_JOB_BYTES")
_OPTIONS = (*KAFKA_OPTIONS, *TOPIC_OPTIONS, *_MAX_JOB_BYTES)


@dataclass(frozen=True)
class _Settings:
    kafka: KafkaSettings
    worker: WorkerSettings

    @property
    def topics(self) -> Topics:
        w = self.worker
        return Topics(input=w.input_topic, output=w.output_topic, review=w.review_topic, batches=w.batches_topic)


def _settings(args: argparse.Namespace) -> _Settings:
    values = resolve_values(args, _OPTIONS)
    return _Settings(kafka=load_kafka_settings(values), worker=load_worker_settings(values))


@contextlib.contextmanager
def _errors(settings: _Settings) -> Iterator[None]:
    """Kafka failures and the batch errors, each as one line."""
    try:
        with kafka_errors(settings.kafka):
            yield
    except BatchesTopicMissing as exc:
        raise CliError(
            f"topic {exc} not found on {settings.kafka.bootstrap_servers}; create the pipeline's topics with "
            "`pipeline topics create`"
        ) from None
    except UnknownBatch as exc:
        raise CliError(f"no batch {exc} on topic {settings.worker.batches_topic} (`pipeline batch list`)") from None
    except (SubmitRefused, NothingToCancel) as exc:
        raise CliError(str(exc)) from None
    except TimeoutError as exc:
        raise CliError(f"Kafka at {settings.kafka.bootstrap_servers} did not answer in time: {exc}") from None


async def _manifest(settings: _Settings, batch_id: str) -> BatchManifest:
    manifest = await read_manifest(settings.kafka, settings.worker.batches_topic, batch_id)
    if manifest is None:
        raise UnknownBatch(batch_id)
    return manifest


def _parse_metadata(pairs: list[str]) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata {pair!r}: expected KEY=VALUE")
        metadata[key] = value
    return metadata


class _SubmitBars:
    """Two bars: the file's bytes checked, then the jobs published."""

    def __init__(self, size: int) -> None:
        self._checking = progress_bar("lines", total_bytes=size, desc="checking")
        self._publishing: tqdm[Never] | None = None

    def checked(self, size: int) -> None:
        self._checking.update(size)

    def publishing(self, total: int) -> None:
        self._checking.close()
        self._publishing = progress_bar("jobs", total=total, desc="publishing")

    def published(self, count: int) -> None:
        if self._publishing is not None:
            self._publishing.update(count)

    def close(self) -> None:
        self._checking.close()
        if self._publishing is not None:
            self._publishing.close()


def submit_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no such file: {path}")
    request = SubmitRequest(
        path=path,
        topics=settings.topics,
        max_job_bytes=settings.worker.max_job_bytes,
        batch_id=args.id,
        metadata=_parse_metadata(args.metadata),
        skip_invalid=args.skip_invalid,
    )
    return asyncio.run(_submit(settings, request, _SubmitBars(path.stat().st_size)))


async def _submit(settings: _Settings, request: SubmitRequest, bars: _SubmitBars) -> int:
    topics = request.topics
    with _errors(settings):
        await require_topics(settings.kafka, [topics.input, topics.output, topics.review, topics.batches])
        try:
            report = await submit_batch(settings.kafka, request, progress=bars)
        except InvalidLines as exc:
            bars.close()
            _print_problems(exc.scan.problems, exc.scan.invalid)
            raise
        finally:
            bars.close()
    _print_problems(report.scan.problems, report.scan.invalid)
    skipped = f"; {report.scan.invalid:,} invalid line(s) left out" if report.scan.invalid else ""
    if report.outcome == "already_submitted":
        what = f"already submitted ({report.manifest.requests:,} requests): nothing published"
    elif report.outcome == "resumed":
        what = (
            f"resumed: {report.found_published:,} jobs were published before, {report.published:,} published now "
            f"to {topics.input}"
        )
    else:
        what = f"{report.published:,} jobs published to {topics.input}"
    print(f"batch {report.batch_id}: {what}{skipped}", file=sys.stderr)
    print(report.batch_id)
    return 0


def _print_problems(problems: list[LineProblem], invalid: int) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)
    if invalid > len(problems):
        print(f"… and {invalid - len(problems):,} more invalid lines", file=sys.stderr)


def _counts_postfix(counts: Counts) -> str:
    review = sum(counts.in_review.values())
    return f"completed {counts.completed:,}  failed {counts.failed:,}  in review {review:,}"


async def status_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _errors(settings):
        manifest = await _manifest(settings, args.id)
        async with BatchFollower(settings.kafka, manifest, settings.worker.batches_topic) as follower:
            counts = await follower.catch_up()
            if args.watch and counts.remaining:
                bar = progress_bar("requests", total=counts.total, initial=counts.done, desc=manifest.id)
                shown = counts.done

                def show(now: Counts) -> None:
                    nonlocal shown
                    bar.update(now.done - shown)
                    shown = now.done
                    bar.set_postfix_str(_counts_postfix(now), refresh=False)

                try:
                    counts = await follower.until_done(show)
                finally:
                    bar.close()
            status = batch_status(follower.manifest, counts, follower.tracker.last_done_ms, follower.spent_usd)
    print(status_json(status) if args.json else status_text(status))
    return 0


async def results_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    paths = [Path(p) for p in (args.output, args.errors, args.review) if p is not None]
    if len(set(paths)) < len(paths):
        raise CliError("--output, --errors and --review must name different files")
    for path in paths:
        if not path.parent.is_dir():
            raise CliError(f"no such directory: {path.parent}")
    request = ResultsRequest(
        output=Path(args.output),
        errors=Path(args.errors) if args.errors else None,
        reviews=Path(args.review) if args.review else None,
        wait=args.wait,
        partial=args.partial,
    )
    with _errors(settings):
        manifest = await _manifest(settings, args.id)
        if manifest.status == "submitting":
            raise CliError(
                f"batch {manifest.id} was not fully submitted: run `pipeline batch submit "
                f"{manifest.input_file.name} --id {manifest.id}` again to finish it"
            )
        bar = progress_bar("requests", total=manifest.requests, desc=manifest.id) if args.wait else None
        shown = 0

        def show(counts: Counts) -> None:
            nonlocal shown
            if bar is not None:
                bar.update(counts.done - shown)
                shown = counts.done
                bar.set_postfix_str(_counts_postfix(counts), refresh=False)

        try:
            written = await write_results(settings.kafka, manifest, settings.worker.batches_topic, request, show)
        except NotFinished as exc:
            hint = "--wait waits for them, --partial writes what there is"
            raise CliError(f"batch {manifest.id}: {exc}; {hint}") from None
        finally:
            if bar is not None:
                bar.close()
    counts = written.counts
    reasons = {**counts.in_review}
    detail = f" ({', '.join(f'{k} {v:,}' for k, v in sorted(reasons.items()))})" if reasons else ""
    print(f"{args.output}: {written.output:,} results", file=sys.stderr)
    if request.errors is not None:
        print(f"{args.errors}: {written.errors:,} errors: {counts.failed:,} failed, in review{detail}", file=sys.stderr)
    elif reviewed := counts.done - counts.completed:
        print(f"{reviewed:,} requests routed to review (--errors FILE writes them)", file=sys.stderr)
    if request.reviews is not None:
        print(f"{args.review}: {written.reviews:,} review records", file=sys.stderr)
    if counts.remaining:
        print(f"partial: {counts.remaining:,} requests have no result yet", file=sys.stderr)
    if written.unreadable:
        print(f"{written.unreadable:,} result records could not be read (see the log)", file=sys.stderr)
    return 0


def _when(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


async def list_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _errors(settings):
        manifests = await read_manifests(settings.kafka, settings.worker.batches_topic)
    ordered = sorted(manifests.values(), key=lambda m: m.created_ms)
    if not ordered:
        print(f"no batches on {settings.worker.batches_topic}", file=sys.stderr)
        return 0
    print(f"{'batch':<28} {'created':<20} {'submit':<10} {'requests':>9}  file")
    for m in ordered:
        state = "cancelled" if m.cancelled_ms is not None else m.status
        file = f"{m.input_file.name} ({file_size(m.input_file.size)})"
        print(f"{m.id:<28} {_when(m.created_ms):<20} {state:<10} {m.requests:>9,}  {file}")
    return 0


async def cancel_command(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _errors(settings):
        manifest, now = await cancel_batch(settings.kafka, settings.worker.batches_topic, args.id)
    if now:
        print(
            f"batch {manifest.id} cancelled: workers route its jobs not yet called to review as `cancelled` "
            "(within about a second); calls in flight finish"
        )
    else:
        print(f"batch {manifest.id} was already cancelled at {_when(manifest.cancelled_ms)}")
    return 0


def add_parser(commands: Any) -> None:
    batch = commands.add_parser(
        "batch",
        help="OpenAI Batch API files through the pipeline: submit, status, results, list, cancel",
        description="Submit a Batch API input file (or a file of our jobs), watch it, and write the Batch API's "
        "output and errors files, moderated, in the input file's order.",
        epilog="example:\n  ID=$(pipeline batch submit requests.jsonl)\n  pipeline batch status $ID --watch\n"
        "  pipeline batch results $ID --output results.jsonl --errors errors.jsonl --wait",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = batch.add_subparsers(dest="action", metavar="ACTION", required=True)

    submit = actions.add_parser(
        "submit",
        help="check a file and publish its requests as jobs (prints the batch id)",
        description="Check every line first (each bad line reported with its number and reason); publish "
        "nothing if any is bad unless --skip-invalid. Submitting the same file under the same id again "
        "publishes nothing twice, and finishes a submit that stopped half way.",
        epilog="example: pipeline batch submit requests.jsonl --id nightly-2026-12-01 --metadata team=search",
    )
    submit.add_argument("file", metavar="FILE.jsonl", help="Batch API input lines, or our job lines")
    submit.add_argument("--id", help="the batch id (default: batch_ and the start of the file's SHA-256)")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="batch metadata")
    submit.add_argument("--skip-invalid", action="store_true", help="publish the valid lines of a file with bad ones")
    submit.set_defaults(handler=submit_command)

    status = actions.add_parser(
        "status",
        help="counts, rate and ETA of a batch",
        epilog="example: pipeline batch status batch_3f2a9c1d0e4b5a67 --watch",
    )
    status.add_argument("id", metavar="ID")
    status.add_argument("--watch", action="store_true", help="follow until every request has a result")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=run_async(status_command))

    results = actions.add_parser(
        "results",
        help="write the Batch API output and errors files, in input order",
        epilog="example: pipeline batch results ID --output results.jsonl --errors errors.jsonl --wait",
    )
    results.add_argument("id", metavar="ID")
    results.add_argument("--output", required=True, metavar="FILE", help="one line per clean request")
    results.add_argument("--errors", metavar="FILE", help="one line per request routed to review")
    results.add_argument("--review", metavar="FILE", help="the full review records, in input order")
    results.add_argument("--wait", action="store_true", help="wait until every request has a result")
    results.add_argument("--partial", action="store_true", help="write what there is now, without waiting")
    results.set_defaults(handler=run_async(results_command))

    listing = actions.add_parser(
        "list",
        help="the batches on the batches topic",
        description="The batches on the batches topic, oldest first. The submit column is the "
        "submit's (submitting, submitted, cancelled): `pipeline batch status ID` reads the results and says "
        "whether a batch is in progress or completed.",
        epilog="example: pipeline batch list",
    )
    listing.set_defaults(handler=run_async(list_command))

    cancel = actions.add_parser(
        "cancel",
        help="cancel a batch: jobs not yet called go to review as cancelled",
        epilog="example: pipeline batch cancel batch_3f2a9c1d0e4b5a67",
    )
    cancel.add_argument("id", metavar="ID")
    cancel.set_defaults(handler=run_async(cancel_command))

    for parser in (submit, status, results, listing, cancel):
        add_kafka_flags(parser, (*TOPIC_OPTIONS, *_MAX_JOB_BYTES) if parser is submit else TOPIC_OPTIONS)
