"""Submitting a batch file: check every line, record the manifest, publish each job once.

1. **Check the whole file** (:mod:`~pipeline.batch.lines`) before anything is published, spilling each job's
   record to a temporary file (memory stays flat whatever the file's size). With any bad line nothing is
   published, unless ``skip_invalid``.
2. **Read the batch's manifest.** None: record where the input, output and review topics end now and write
   the manifest as ``submitting``. The same file (by SHA-256) already ``submitted``: publish nothing. The
   same file still ``submitting`` (a submit that stopped half way): resume. Another file under the same id,
   or a cancelled batch: refused.
3. **Publish** the jobs keyed by job id (``<batch id>:<custom_id>``, acks=all), then mark the manifest
   ``submitted``.

**A crash in the middle resumes without duplicates.** Every job is published after the manifest that
recorded where the input topic ended before the first of them. Submitting the file again reads the input
topic from there, collects the keys that start with ``<batch id>:`` (what the stopped submit got into the
log, acknowledged or not) and publishes only the others. What remains possible is the producer's own retry
of a send whose acknowledgement was lost, which can write one record twice (the embedded broker has no
idempotent producer); the worker keys results by job id and ``results`` keeps one per line, so such a job
costs a second call, never a second line. Two submits of one batch at the same moment are not guarded
against.
"""

from __future__ import annotations

import asyncio
import re
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol

import msgspec
from aiokafka.structs import TopicPartition

from pipeline.batch.lines import BatchJob, FileScan, LineChecker, file_sha256, scan_file
from pipeline.batch.manifest import read_manifest, write_manifest
from pipeline.batch.reading import TopicReader, topic_ends, topic_partitions
from pipeline.kafka import KafkaSettings, make_producer
from schemas.batches import BATCH_ID_PATTERN, BatchFile, BatchManifest, TopicOffsets, batch_key_prefix
from schemas.topics import HEADER_JOB_ID

#: Sends awaited together: bounds what is held while keeping the producer's batches full.
WINDOW: Final = 5_000
#: Bytes one producer batch per partition may hold (aiokafka's 16 KiB default holds a dozen jobs).
PRODUCER_BATCH_BYTES: Final = 512 * 1024
_LENGTHS: Final = struct.Struct(">II")

Outcome = Literal["published", "resumed", "already_submitted"]


class SubmitRefused(Exception):
    """The file or the batch id cannot be submitted; the message says why (and nothing was published)."""


class InvalidLines(SubmitRefused):
    """The file has invalid lines (and ``skip_invalid`` was not asked for); ``scan.problems`` lists them."""

    def __init__(self, scan: FileScan) -> None:
        super().__init__(f"{scan.invalid:,} invalid line(s); nothing published (--skip-invalid publishes the rest)")
        self.scan = scan


class SubmitProgress(Protocol):
    """What a submit reports as it goes (the command draws progress bars with it)."""

    def checked(self, size: int) -> None:
        """``size`` more bytes of the file were checked."""

    def publishing(self, total: int) -> None:
        """The file is checked; ``total`` jobs are to be published (some may be found published already)."""

    def published(self, count: int) -> None:
        """``count`` more jobs are acknowledged (or were found published before)."""


class NoProgress:
    def checked(self, size: int) -> None:
        pass

    def publishing(self, total: int) -> None:
        pass

    def published(self, count: int) -> None:
        pass


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    review: str
    batches: str


@dataclass(frozen=True)
class SubmitRequest:
    path: Path
    topics: Topics
    max_job_bytes: int
    batch_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    skip_invalid: bool = False


@dataclass
class SubmitReport:
    batch_id: str
    outcome: Outcome
    scan: FileScan
    manifest: BatchManifest
    published: int = 0
    #: Jobs found already published by an earlier, stopped submit of this batch.
    found_published: int = 0


def default_batch_id(sha256: str) -> str:
    """A batch id from the file's content, so submitting the same file again names the same batch."""
    return f"batch_{sha256[:16]}"


class _Spill:
    """The checked jobs' records in a temporary file, in line order: (key, value) pairs, length-prefixed."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()

    def add(self, job: BatchJob) -> None:
        key = job.job.id.encode()
        self._file.write(_LENGTHS.pack(len(key), len(job.value)) + key + job.value)

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        self._file.seek(0)
        while header := self._file.read(_LENGTHS.size):
            key_size, value_size = _LENGTHS.unpack(header)
            yield self._file.read(key_size), self._file.read(value_size)

    def close(self) -> None:
        self._file.close()


async def published_keys(kafka: KafkaSettings, since: TopicOffsets, prefix: bytes) -> set[bytes]:
    """The keys starting with ``prefix`` in ``since.topic`` from the recorded offsets to the end."""
    counts = await topic_partitions(kafka, [since.topic])
    keys: set[bytes] = set()
    async with TopicReader(kafka) as reader:
        reader.assign(
            {
                TopicPartition(since.topic, p): since.offsets[p] if p < len(since.offsets) else 0
                for p in range(counts[since.topic])
            }
        )
        while True:
            records = await reader.fetch()
            keys.update(r.key for r in records if r.key is not None and r.key.startswith(prefix))
            if await reader.caught_up():
                return keys


def _checked_batch_id(request: SubmitRequest, sha256: str) -> str:
    batch_id = request.batch_id or default_batch_id(sha256)
    if not re.match(BATCH_ID_PATTERN, batch_id):
        rule = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a digit"
        raise SubmitRefused(f"--id {batch_id!r}: {rule}")
    return batch_id


async def submit_batch(
    kafka: KafkaSettings,
    request: SubmitRequest,
    *,
    progress: SubmitProgress | None = None,
    clock: Callable[[], float] = time.time,
) -> SubmitReport:
    """Check, record and publish a batch file (see the module docstring); raises :class:`SubmitRefused`."""
    path = request.path
    sha256 = file_sha256(path)
    batch_id = _checked_batch_id(request, sha256)
    progress = progress or NoProgress()
    spill = _Spill()
    try:
        checker = LineChecker(batch_id, max_job_bytes=request.max_job_bytes)
        with path.open("rb") as source:
            scan = scan_file(source, checker, spill.add, progress.checked)
        if scan.invalid and not request.skip_invalid:
            raise InvalidLines(scan)
        if not scan.requests:
            raise SubmitRefused(f"no requests in {path}")
        manifest = await read_manifest(kafka, request.topics.batches, batch_id)
        already: set[bytes] = set()
        outcome: Outcome = "published"
        if manifest is None:
            manifest = await _first_manifest(kafka, request, batch_id, sha256, scan, clock)
            await write_manifest(kafka, request.topics.batches, manifest)
        else:
            _same_batch(manifest, sha256)
            if manifest.status == "submitted":
                return SubmitReport(batch_id, "already_submitted", scan, manifest)
            outcome = "resumed"
            already = await published_keys(kafka, manifest.input, batch_key_prefix(batch_id))
        progress.publishing(scan.requests)
        published = await _publish(kafka, manifest.input.topic, spill.records(), already, progress.published)
    finally:
        spill.close()
    done = msgspec.structs.replace(manifest, status="submitted", submitted_ms=int(clock() * 1000))
    await write_manifest(kafka, request.topics.batches, done)
    return SubmitReport(batch_id, outcome, scan, done, published=published, found_published=len(already))


def _same_batch(manifest: BatchManifest, sha256: str) -> None:
    if manifest.input_file.sha256 != sha256:
        raise SubmitRefused(
            f"batch {manifest.id} is another file ({manifest.input_file.name}, sha256 "
            f"{manifest.input_file.sha256[:12]}…); give this one another --id"
        )
    if manifest.cancelled_ms is not None:
        raise SubmitRefused(f"batch {manifest.id} was cancelled; submit the file again under another --id")


async def _first_manifest(
    kafka: KafkaSettings,
    request: SubmitRequest,
    batch_id: str,
    sha256: str,
    scan: FileScan,
    clock: Callable[[], float],
) -> BatchManifest:
    topics = request.topics
    ends = await topic_ends(kafka, [topics.input, topics.output, topics.review])
    size = request.path.stat().st_size
    return BatchManifest(
        id=batch_id,
        status="submitting",
        created_ms=int(clock() * 1000),
        input_file=BatchFile(name=request.path.name, size=size, sha256=sha256, lines=scan.lines),
        requests=scan.requests,
        input=ends[topics.input],
        output=ends[topics.output],
        review=ends[topics.review],
        skipped_lines=scan.invalid,
        metadata=request.metadata or None,
    )


async def _publish(
    kafka: KafkaSettings,
    topic: str,
    records: Iterator[tuple[bytes, bytes]],
    already: set[bytes],
    on_published: Callable[[int], None],
) -> int:
    producer = make_producer(kafka, linger_ms=5, max_batch_size=PRODUCER_BATCH_BYTES)
    await producer.start()
    published = 0
    pending: list[asyncio.Future[Any]] = []
    try:
        for key, value in records:
            if key in already:
                on_published(1)
                continue
            pending.append(await producer.send(topic, value, key=key, headers=[(HEADER_JOB_ID, key)]))
            published += 1
            if len(pending) >= WINDOW:
                await asyncio.gather(*pending)
                on_published(len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        on_published(len(pending))
    finally:
        await producer.stop()
    return published
