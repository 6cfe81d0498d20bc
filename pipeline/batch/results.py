"""Writing a batch's results files in the input file's order, in bounded memory.

Results arrive in the topics' order, not the file's. Each record that stands for its line (see
:class:`~pipeline.batch.progress.Tracker`) is turned into its file line at once
(:mod:`~pipeline.batch.output_lines`) and appended to a temporary file; an index in memory (a few bytes per
line of the input file) says where each line's latest text is. Once every line has a result (or, with
``partial``, once the topics are read to their current ends) the texts are copied out by line number.
Memory holds one fetch of records and the index, whatever the size of the results; the temporary disk holds
about as much as the files written. Each file is written under a temporary name beside its own and renamed
when complete, so a results file that exists is whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import msgspec

from pipeline.batch.output_lines import error_line, output_line
from pipeline.batch.progress import BatchFollower, BatchRecord, Counts
from pipeline.kafka import KafkaSettings
from schemas.batches import BatchManifest

log = logging.getLogger("pipeline.batch")


class NotFinished(Exception):
    """Some requests have no result yet (and neither waiting nor partial files were asked for)."""

    def __init__(self, counts: Counts) -> None:
        super().__init__(f"{counts.remaining:,} of {counts.total:,} requests have no result yet")
        self.counts = counts


@dataclass(frozen=True)
class ResultsRequest:
    output: Path
    errors: Path | None = None
    reviews: Path | None = None
    wait: bool = False
    partial: bool = False


@dataclass(frozen=True)
class Written:
    """Lines written to each file."""

    output: int
    errors: int
    reviews: int
    #: Records that stood for a line but could not be read (logged; their line is missing from the files).
    unreadable: int
    counts: Counts


class ResultsSpill:
    """Each line's standing file line, spilled to disk (see the module docstring).

    Texts are appended to a temporary file as they come; an index in memory says where each line's latest
    text (and review record) is: 17 bytes a line of the input file (41 with review records), whatever the
    size of the results. A line replaced by a later record leaves its earlier text unused in the file.
    """

    def __init__(self, directory: Path, lines: int, *, keep_reviews: bool) -> None:
        self._data: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by close()
        self._end = 0
        size = lines + 1
        self._is_output = bytearray(size)
        self._at = array("q", [-1]) * size
        self._length = array("q", [0]) * size
        self._keep_reviews = keep_reviews
        self._review_at = array("q", [-1]) * (size if keep_reviews else 0)
        self._review_length = array("q", [0]) * (size if keep_reviews else 0)
        self.unreadable = 0

    def _append(self, data: bytes) -> int:
        at = self._end
        self._data.write(data)
        self._end += len(data)
        return at

    def add(self, found: BatchRecord) -> None:
        """Keep the file line of a record that now stands for its line (replacing the one before)."""
        value: bytes = found.record.value
        try:
            if found.kind is None:
                text = output_line(value, found.custom_id, found.record.timestamp)
            else:
                text = error_line(value, found.custom_id)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
            self.unreadable += 1
            log.warning("a result record could not be read", extra={"detail": f"line {found.line}: {exc}"})
            return
        line = found.line
        self._is_output[line] = found.kind is None
        self._at[line] = self._append(text + b"\n")
        self._length[line] = len(text) + 1
        if self._keep_reviews:
            if found.kind is None:
                self._review_at[line] = -1
            else:
                self._review_at[line] = self._append(value + b"\n")
                self._review_length[line] = len(value) + 1

    def rows(self) -> Iterator[tuple[bool, bytes, bytes | None]]:
        """``(is_output, file line, review record)`` by line number, for the lines that have one."""
        self._data.flush()
        fd = self._data.fileno()
        for line in range(1, len(self._at)):
            at = self._at[line]
            if at < 0:
                continue
            review = None
            if self._keep_reviews and self._review_at[line] >= 0:
                review = os.pread(fd, self._review_length[line], self._review_at[line])
            yield bool(self._is_output[line]), os.pread(fd, self._length[line], at), review

    def close(self) -> None:
        self._data.close()


@contextlib.contextmanager
def _whole_file(path: Path | None) -> Iterator[IO[bytes] | None]:
    """A file written under a temporary name and renamed into place only when complete."""
    if path is None:
        yield None
        return
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as file:
        yield file
    os.replace(partial, path)


def write_files(spill: ResultsSpill, request: ResultsRequest, counts: Counts) -> Written:
    lines = errors_written = reviews_written = 0
    with (
        _whole_file(request.output) as output,
        _whole_file(request.errors) as errors,
        _whole_file(request.reviews) as reviews,
    ):
        for is_output, text, review in spill.rows():
            if is_output and output is not None:
                output.write(text)
                lines += 1
            elif not is_output and errors is not None:
                errors.write(text)
                errors_written += 1
            if reviews is not None and review is not None:
                reviews.write(review)
                reviews_written += 1
    return Written(lines, errors_written, reviews_written, unreadable=spill.unreadable, counts=counts)


async def write_results(
    kafka: KafkaSettings,
    manifest: BatchManifest,
    batches_topic: str,
    request: ResultsRequest,
    on_progress: Callable[[Counts], None] = lambda _: None,
) -> Written:
    """Read the batch's results and write the files; raises :class:`NotFinished` when requests have no result
    yet and the request neither waits nor accepts partial files."""
    with tempfile.TemporaryDirectory(prefix="pipeline-batch-") as scratch:
        spill = ResultsSpill(Path(scratch), manifest.input_file.lines, keep_reviews=request.reviews is not None)
        try:
            async with BatchFollower(kafka, manifest, batches_topic, spill.add) as follower:
                counts = await follower.catch_up()
                on_progress(counts)
                if counts.remaining and request.wait:
                    counts = await follower.until_done(on_progress)
                elif counts.remaining and not request.partial:
                    raise NotFinished(counts)
            return write_files(spill, request, counts)
        finally:
            spill.close()
