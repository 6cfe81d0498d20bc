"""Batch files at the Batch API's maximum: ``pipeline batch submit`` and ``results`` on a 50,000-line file.

One process, the embedded broker (8 partitions per topic):

1. a Batch API input file of :data:`LINES` requests (prompts of 12 to 90 words, a system message,
   ``max_completion_tokens``, metadata), written to a temporary directory;
2. **submit**: :func:`pipeline.batch.submit_batch` (check every line, record the manifest, publish each job,
   acks=all), timed as a whole and split into checking and publishing;
3. the results a worker would write, produced straight to the output and review topics (90% clean Results
   carrying the whole completion with moderation on both sides, 10% flagged Reviews with the job and the
   completion), in shuffled order, so that the measurement is of ``results`` alone (no provider, no worker);
4. **results**: :func:`pipeline.batch.write_results` writing the output, errors and review files in input
   order, timed; then ``pipeline batch results`` once more as a user runs it, in a child process, for its
   wall time (start-up included) and its peak RSS; and once more in this process under ``tracemalloc`` for
   the peak of what Python allocates (bounded memory: the texts are spilled to disk, only an index of a few
   bytes per line stays in memory, so that peak is about the same for 5,000 and 50,000 lines).

    python -m bench.batch_files [--quick] [--json PATH]

``--quick`` uses 5,000 lines. For ``bench/__main__.py``: :func:`run` (``await run(quick)``) returns the
figures as a dict, and :func:`table` renders them as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec

from bench.harness import prompt
from pipeline.batch import ResultsRequest, SubmitRequest, Topics, create_batches_topic, submit_batch, write_results
from pipeline.batch.manifest import read_manifest
from pipeline.broker import EmbeddedBroker
from pipeline.kafka import KafkaSettings, ensure_topics, make_producer
from pipeline.outcomes import Completed
from pipeline.routing import route
from schemas.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    Choice,
    Moderation,
    ModerationResult,
    ModerationResults,
    Usage,
)
from schemas.moderations import OMNI_CATEGORIES
from schemas.topics import Job, Source

LINES: Final = 50_000
QUICK_LINES: Final = 5_000
PARTITIONS: Final = 8
FLAGGED_SHARE: Final = 0.1
MAX_JOB_BYTES: Final = 1_048_576


def write_input(path: Path, lines: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(lines):
            body = {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "You write short, friendly product descriptions."},
                    {"role": "user", "content": prompt(rng, flagged=False)},
                ],
                "max_completion_tokens": 200,
                "temperature": 0.7,
                "metadata": {"sku": f"sku-{i:06d}"},
            }
            request = {"custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(request) + "\n")


def _moderation(flagged: bool) -> Moderation:
    def side(score: float) -> ModerationResults:
        result = ModerationResult(
            categories={c: flagged and c == "violence" for c in OMNI_CATEGORIES},
            category_applied_input_types={c: ["text"] for c in OMNI_CATEGORIES},
            category_scores={c: score if c == "violence" else 0.00012345 for c in OMNI_CATEGORIES},
            flagged=flagged,
            model="omni-moderation-latest",
        )
        return ModerationResults(model="omni-moderation-latest", results=[result])

    return Moderation(input=side(0.93 if flagged else 0.0021), output=side(0.0017))


def result_records(path: Path, batch_id: str, seed: int = 11) -> Iterator[tuple[str, bytes, bytes]]:
    """(topic role, key, value) of what a worker writes for each job of the file, in shuffled order."""
    rng = random.Random(seed)
    lines = path.read_bytes().splitlines()
    order = list(range(len(lines)))
    rng.shuffle(order)
    source = Source(topic="prompts", partition=0, offset=0)
    for index in order:
        request = json.loads(lines[index])
        custom_id = request["custom_id"]
        flagged = rng.random() < FLAGGED_SHARE
        tags = {"batch_id": batch_id, "custom_id": custom_id, "batch_line": str(index + 1)}
        job = Job(id=f"{batch_id}:{custom_id}", messages=[], metadata={**request["body"]["metadata"], **tags})
        words = " ".join(rng.choice(("tea", "cup", "warm", "glaze", "blue", "gift")) for _ in range(60))
        message = ChatCompletionMessage(role="assistant", content=words)
        completion = ChatCompletion(
            id=f"chatcmpl-{index}",
            object="chat.completion",
            created=1_764_000_000,
            model="gpt-4o-mini-2024-07-18",
            choices=[Choice(index=0, finish_reason="stop", message=message)],
            usage=Usage(prompt_tokens=60, completion_tokens=80, total_tokens=140),
            moderation=_moderation(flagged),
        )
        routed = route(job, source, Completed(completion=completion, attempts=1, latency_ms=900.0))
        record = routed.review if flagged else routed.result  # type: ignore[union-attr]
        yield ("review" if flagged else "output"), job.id.encode(), msgspec.json.encode(record)


async def produce_results(kafka: KafkaSettings, topics: Topics, path: Path, batch_id: str) -> None:
    producer = make_producer(kafka, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        pending = []
        for role, key, value in result_records(path, batch_id):
            topic = topics.review if role == "review" else topics.output
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def results_command(kafka: KafkaSettings, topics: Topics, batch_id: str, directory: Path) -> tuple[float, float]:
    """``pipeline batch results`` in a child process: its wall time (s) and peak RSS (MB)."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "PIPELINE_INPUT_TOPIC": topics.input,
        "PIPELINE_OUTPUT_TOPIC": topics.output,
        "PIPELINE_REVIEW_TOPIC": topics.review,
        "PIPELINE_BATCHES_TOPIC": topics.batches,
    }
    files = ["--output", str(directory / "cli-out.jsonl"), "--errors", str(directory / "cli-errors.jsonl")]
    errors_log = directory / "cli-stderr.txt"
    started = time.perf_counter()
    with errors_log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "batch", "results", batch_id, *files],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        _, status, usage = os.wait4(process.pid, 0)  # the child's own peak RSS, not the broker's
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"pipeline batch results failed: {errors_log.read_text()}")
    return elapsed, usage.ru_maxrss / 1024


class _Phases:
    """When the submit's checking ended (its last line) and its publishing began (after the manifest)."""

    def __init__(self) -> None:
        self.checked_at: float | None = None
        self.publishing_at: float | None = None

    def checked(self, size: int) -> None:
        self.checked_at = time.perf_counter()

    def publishing(self, total: int) -> None:
        self.publishing_at = time.perf_counter()

    def published(self, count: int) -> None:
        pass


async def run(quick: bool = False) -> dict[str, Any]:
    """Submit and results on one file; the figures (lines per second, MB per second, sizes, memory)."""
    lines = QUICK_LINES if quick else LINES
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as scratch, EmbeddedBroker() as broker:
        directory = Path(scratch)
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        topics = Topics(input="prompts", output="completions", review="review", batches="batches")
        await ensure_topics(kafka, [topics.input, topics.output, topics.review], PARTITIONS)
        await create_batches_topic(kafka, topics.batches)
        source = directory / "requests.jsonl"
        write_input(source, lines)
        size = source.stat().st_size

        phases = _Phases()
        request = SubmitRequest(path=source, topics=topics, max_job_bytes=MAX_JOB_BYTES, batch_id="bench")
        started = time.perf_counter()
        report = await submit_batch(kafka, request, progress=phases)
        submit_s = time.perf_counter() - started
        check_s = (phases.checked_at or started) - started
        publish_s = submit_s - ((phases.publishing_at or started) - started)
        assert report.published == lines, report

        await produce_results(kafka, topics, source, "bench")
        manifest = await read_manifest(kafka, topics.batches, "bench")
        assert manifest is not None
        output, errors, reviews = directory / "out.jsonl", directory / "errors.jsonl", directory / "review.jsonl"
        started = time.perf_counter()
        written = await write_results(kafka, manifest, topics.batches, ResultsRequest(output, errors, reviews))
        results_s = time.perf_counter() - started
        assert written.output + written.errors == lines, written
        command_s, command_rss_mb = await asyncio.to_thread(results_command, kafka, topics, "bench", directory)
        tracemalloc.start()  # once more, for the peak of what Python allocates (flat in the number of lines)
        await write_results(kafka, manifest, topics.batches, ResultsRequest(output, errors, reviews))
        heap_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results_bytes = sum(p.stat().st_size for p in (output, errors))
        return {
            "lines": lines,
            "file_mb": round(size / 1e6, 1),
            "submit_s": round(submit_s, 2),
            "submit_lines_per_s": round(lines / submit_s),
            "submit_mb_per_s": round(size / 1e6 / submit_s, 1),
            "check_lines_per_s": round(lines / check_s) if check_s else None,
            "publish_lines_per_s": round(lines / publish_s) if publish_s > 0 else None,
            "submit_kafka_setup_s": round(submit_s - check_s - publish_s, 2),
            "results_s": round(results_s, 2),
            "results_lines_per_s": round(lines / results_s),
            "results_mb": round(results_bytes / 1e6, 1),
            "results_mb_per_s": round(results_bytes / 1e6 / results_s, 1),
            "review_file_mb": round(reviews.stat().st_size / 1e6, 1),
            "output_lines": written.output,
            "error_lines": written.errors,
            "results_command_s": round(command_s, 2),
            "results_command_peak_rss_mb": round(command_rss_mb, 1),
            "results_python_heap_peak_mb": round(heap_peak / 1e6, 1),
            "cores": os.cpu_count(),
        }


def table(figures: dict[str, Any]) -> str:
    f = figures
    return "\n".join(
        [
            f"Batch files: {f['lines']:,} lines, input file {f['file_mb']} MB, embedded broker, "
            f"{PARTITIONS} partitions a topic",
            "",
            "| step | time | lines/s | MB/s | notes |",
            "|---|---:|---:|---:|---|",
            f"| submit (check + publish) | {f['submit_s']} s | {f['submit_lines_per_s']:,} | {f['submit_mb_per_s']} | "
            f"checking {f['check_lines_per_s']:,} lines/s, publishing (acks=all) {f['publish_lines_per_s']:,} "
            f"lines/s, manifest and topic ends {f['submit_kafka_setup_s']} s |",
            f"| results (read, spill, write) | {f['results_s']} s | {f['results_lines_per_s']:,} | "
            f"{f['results_mb_per_s']} | {f['output_lines']:,} output + {f['error_lines']:,} errors lines, "
            f"{f['results_mb']} MB (+ review file {f['review_file_mb']} MB) |",
            f"| `pipeline batch results` (a process) | {f['results_command_s']} s | "
            f"{round(f['lines'] / f['results_command_s']):,} | | output and errors files, start-up included; "
            f"peak RSS {f['results_command_peak_rss_mb']} MB; Python heap peak "
            f"{f['results_python_heap_peak_mb']} MB (tracemalloc, in process) |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_LINES:,} lines instead of {LINES:,}")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.quick))
    print(table(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
