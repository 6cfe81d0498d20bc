"""A batch file's lines: each a Batch API request or one of our own jobs, checked and turned into the job it
publishes.

A line is a **Batch API request** when it names any of ``custom_id``, ``method``, ``url`` or ``body``, else a
**job** (our input topic's format) when it names ``id``; the job's ``id`` is then its custom id. Either becomes
a job whose id is ``<batch id>:<custom_id>`` and whose metadata is the line's own plus ``batch_id``,
``custom_id`` and ``batch_line``. Each line gets one reason at most, in this order: not JSON; neither kind;
(a job line) not a valid job; a custom id that is not a string of 1 to 400 characters; a custom id already
used on an earlier line; a method other than POST; a URL other than ``/v1/chat/completions``; a body that is
not a valid request (unknown names included); an object that names a key twice; ``stream`` or a moderation
policy (the worker's to set); a metadata key the pipeline sets; and last, a job the worker would refuse (it
is encoded and decoded as the worker will, so the size limit and every constraint of the Job contract are
checked here, not discovered later as ``invalid_job`` reviews). Blank lines are skipped, but counted in line
numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal

import msgspec

from pipeline.routing import repeated_key
from schemas.batches import (
    BATCH_ENDPOINT,
    BATCH_METHOD,
    MAX_CUSTOM_ID,
    META_BATCH_ID,
    META_BATCH_LINE,
    META_CUSTOM_ID,
    RESERVED_METADATA_KEYS,
    BatchRequestBody,
    batch_job_id,
)
from schemas.request import SamplingParams
from schemas.topics import Job, JobDecodeError, JobParams, decode_job
from schemas.wire import Metadata

ProblemKind = Literal[
    "not_json",
    "not_a_request",
    "invalid_custom_id",
    "duplicate_custom_id",
    "unsupported_method",
    "unsupported_url",
    "invalid_body",
    "invalid_job",
    "repeated_key",
    "unsupported_parameter",
    "reserved_metadata",
    "refused_job",
]

#: How many problems a scan keeps to show (all are counted).
PROBLEMS_KEPT: Final = 1000
_SAMPLING_FIELDS: Final = SamplingParams.__struct_fields__
_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class LineProblem:
    """Why one line cannot become a job."""

    line: int
    kind: ProblemKind
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True, slots=True)
class BatchJob:
    """The job a line becomes, and its record value (encoded once, exactly as checked)."""

    line: int
    custom_id: str
    job: Job
    value: bytes


class _Envelope(msgspec.Struct):
    """The keys that tell a Batch API request from a job, read before anything else."""

    custom_id: Any = None
    method: Any = None
    url: Any = None
    #: Empty when the line has no body (msgspec cannot make a Raw optional).
    body: msgspec.Raw = msgspec.Raw()
    id: Any = None


_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_body_decoder: Final = msgspec.json.Decoder(BatchRequestBody)


def _body_error(exc: Exception) -> str:
    text = str(exc).replace("- at `$", "- at `$.body")
    return f"body is not a valid Chat Completions request: {text}"


class LineChecker:
    """Checks the lines of one file, in order (it remembers the custom ids it has seen)."""

    def __init__(self, batch_id: str, *, max_job_bytes: int) -> None:
        self._batch_id = batch_id
        self._max_job_bytes = max_job_bytes
        self._seen: dict[str, int] = {}

    def check(self, number: int, line: bytes) -> BatchJob | LineProblem | None:
        """The job on line ``number``, why there is none, or None for a blank line."""
        if not line.strip():
            return None
        try:
            envelope = _envelope_decoder.decode(line)
        except msgspec.ValidationError:
            return LineProblem(number, "not_json", "not a JSON object")
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            return LineProblem(number, "not_json", f"not valid JSON: {exc}")
        request = any(v is not None for v in (envelope.custom_id, envelope.method, envelope.url)) or envelope.body
        if request:
            return self._request(number, line, envelope)
        if envelope.id is not None:
            return self._job(number, line)
        what = "neither a Batch API request (custom_id, method, url, body) nor a job (id, messages)"
        return LineProblem(number, "not_a_request", what)

    def _custom_id(self, number: int, custom_id: Any) -> LineProblem | None:
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
            shown = "missing" if custom_id is None else f"{custom_id!r:.60}"
            return LineProblem(
                number, "invalid_custom_id", f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters ({shown})"
            )
        first = self._seen.setdefault(custom_id, number)
        if first != number:
            return LineProblem(
                number, "duplicate_custom_id", f"custom_id {custom_id!r} repeats line {first} (they must be unique)"
            )
        return None

    def _request(self, number: int, line: bytes, envelope: _Envelope) -> BatchJob | LineProblem:
        if problem := self._custom_id(number, envelope.custom_id):
            return problem
        if envelope.method != BATCH_METHOD:
            return LineProblem(number, "unsupported_method", f"method {envelope.method!r} is not supported (only POST)")
        if envelope.url != BATCH_ENDPOINT:
            return LineProblem(
                number, "unsupported_url", f"url {envelope.url!r} is not supported (only {BATCH_ENDPOINT})"
            )
        if not envelope.body or bytes(envelope.body) == b"null":
            return LineProblem(number, "invalid_body", "no body: a Chat Completions request is expected")
        try:
            body = _body_decoder.decode(envelope.body)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
            return LineProblem(number, "invalid_body", _body_error(exc))
        if (key := repeated_key(line)) is not None:
            return LineProblem(number, "repeated_key", f"an object names the key {key!r} twice (ambiguous)")
        if body.stream or body.stream_options is not None:
            return LineProblem(number, "unsupported_parameter", "stream is not supported in a batch")
        if body.moderation is not None and body.moderation.policy is not None:
            return LineProblem(
                number,
                "unsupported_parameter",
                "moderation.policy is the worker's setting (PIPELINE_MODERATION_POLICY), not a request's",
            )
        params = {name: value for name in _SAMPLING_FIELDS if (value := getattr(body, name)) is not None}
        job = Job(
            id=batch_job_id(self._batch_id, envelope.custom_id),
            messages=body.messages,
            model=body.model,
            params=JobParams(**params) if params else None,
            moderation_model=body.moderation.model if body.moderation is not None else None,
        )
        return self._tagged(number, envelope.custom_id, job, body.metadata)

    def _job(self, number: int, line: bytes) -> BatchJob | LineProblem:
        decoded = decode_job(line, max_bytes=len(line))
        if isinstance(decoded, JobDecodeError):
            return LineProblem(number, "invalid_job", f"not a valid job: {decoded.error}")
        if problem := self._custom_id(number, decoded.id):
            return problem
        if (key := repeated_key(line)) is not None:
            return LineProblem(number, "repeated_key", f"an object names the key {key!r} twice (ambiguous)")
        job = msgspec.structs.replace(decoded, id=batch_job_id(self._batch_id, decoded.id))
        return self._tagged(number, decoded.id, job, decoded.metadata)

    def _tagged(self, number: int, custom_id: str, job: Job, metadata: Metadata | None) -> BatchJob | LineProblem:
        """The job with the batch's metadata, checked by the worker's own decoder."""
        reserved = sorted(RESERVED_METADATA_KEYS & set(metadata or ()))
        if reserved:
            return LineProblem(
                number, "reserved_metadata", f"metadata key {reserved[0]!r} is set by the pipeline for every job"
            )
        tags = {META_BATCH_ID: self._batch_id, META_CUSTOM_ID: custom_id, META_BATCH_LINE: str(number)}
        job = msgspec.structs.replace(job, metadata={**(metadata or {}), **tags})
        value = _encoder.encode(job)
        if isinstance(checked := decode_job(value, max_bytes=self._max_job_bytes), JobDecodeError):
            return LineProblem(number, "refused_job", f"the worker would refuse this job: {checked.error}")
        return BatchJob(number, custom_id, job, value)


def numbered_lines(source: IO[bytes]) -> Iterator[tuple[int, bytes, int]]:
    """``(line number, line without its end, bytes read)`` for each line of ``source``."""
    for number, raw in enumerate(source, start=1):
        yield number, raw.rstrip(b"\r\n"), len(raw)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FileScan:
    """What checking a whole file found."""

    lines: int = 0
    requests: int = 0
    invalid: int = 0
    #: The first :data:`PROBLEMS_KEPT` problems, in line order.
    problems: list[LineProblem] = field(default_factory=list)


def scan_file(
    source: IO[bytes],
    checker: LineChecker,
    on_job: Callable[[BatchJob], None],
    on_bytes: Callable[[int], None] = lambda _: None,
) -> FileScan:
    """Check every line, hand each job to ``on_job`` (in line order) and report what was found."""
    scan = FileScan()
    for number, line, size in numbered_lines(source):
        scan.lines = number
        on_bytes(size)
        checked = checker.check(number, line)
        if checked is None:
            continue
        if isinstance(checked, LineProblem):
            scan.invalid += 1
            if len(scan.problems) < PROBLEMS_KEPT:
                scan.problems.append(checked)
            continue
        scan.requests += 1
        on_job(checked)
    return scan
