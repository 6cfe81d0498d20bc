"""Batch files: the OpenAI Batch API's input and output lines, and a batch's manifest on the ``batches`` topic.

- **Input line** (:class:`BatchRequestLine`): ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
  "body"}``, the body a Chat Completions request whose unknown names are refused (as a job's ``params``).
- **Output line** (:class:`BatchOutputLine`): ``{"id", "custom_id", "response": {"status_code", "request_id",
  "body"}, "error"}``; in the output file ``error`` is null and ``body`` the ``chat.completion`` (moderation
  included); in the errors file ``error`` is ``{"code": <reason.kind>, "message"}`` and ``response`` holds the
  completion when there was one (or the provider's error body and status when it answered with one).
- **Manifest** (:class:`BatchManifest`, the compacted ``batches`` topic, keyed by batch id): what the batch is
  (its file, its request count, its metadata), where the output and review topics ended when it was submitted
  (reading its results starts there, not at the topics' start) and whether it was cancelled.

A job of a batch carries the batch in its ``metadata`` (:data:`META_BATCH_ID`, :data:`META_CUSTOM_ID`,
:data:`META_BATCH_LINE`; the line's own ``body.metadata`` is kept beside them), which the worker copies to the
Result or Review, and its id is :func:`batch_job_id` (``<batch id>:<custom_id>``), so it is found by the
Kafka key alone and a second submission of the same file publishes the same ids.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from schemas.request import ChatCompletionRequest
from schemas.wire import Metadata, Wire

BATCH_ENDPOINT: Final = "/v1/chat/completions"
BATCH_METHOD: Final = "POST"

#: Job metadata keys the pipeline sets on every job of a batch (a line may not set them itself).
META_BATCH_ID: Final = "batch_id"
META_CUSTOM_ID: Final = "custom_id"
#: The job's line number in the submitted file (1-based, in decimal): the order ``results`` writes in.
META_BATCH_LINE: Final = "batch_line"
RESERVED_METADATA_KEYS: Final = frozenset({META_BATCH_ID, META_CUSTOM_ID, META_BATCH_LINE})

#: Between a batch id and a custom id in a job id; a batch id never contains it, so the prefix is unambiguous.
JOB_ID_SEPARATOR: Final = ":"
MAX_BATCH_ID: Final = 64
#: So that ``<batch id>:<custom_id>`` fits a job id (512 characters).
MAX_CUSTOM_ID: Final = 400
BATCH_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

BatchId = Annotated[str, msgspec.Meta(pattern=BATCH_ID_PATTERN, description="Letters, digits, '.', '_', '-'.")]
CustomId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_CUSTOM_ID)]


def batch_job_id(batch_id: str, custom_id: str) -> str:
    """The id of the job a batch's line becomes: the same for the same batch and custom id, every time."""
    return f"{batch_id}{JOB_ID_SEPARATOR}{custom_id}"


def batch_key_prefix(batch_id: str) -> bytes:
    """What every Kafka key (the job id) of the batch's jobs, results and reviews starts with."""
    return f"{batch_id}{JOB_ID_SEPARATOR}".encode()


def batch_of(metadata: Metadata | None) -> str | None:
    """The batch a job (or its Result or Review, by their metadata) belongs to, if any."""
    return metadata.get(META_BATCH_ID) if metadata else None


# --------------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------------


class BatchRequestBody(ChatCompletionRequest, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A line's ``body``: a Chat Completions request. Unknown names are refused, so a typo such as
    ``max_token`` is reported at submit instead of being silently dropped. ``stream`` and
    ``moderation.policy`` are the worker's to set (a line naming them is refused); ``moderation.model`` becomes
    the job's moderation model and ``metadata`` the job's metadata."""


class BatchRequestLine(Wire, frozen=True, forbid_unknown_fields=True):
    """One line of a Batch API input file."""

    custom_id: CustomId
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: BatchRequestBody


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

#: A response body passed through as JSON: the ``chat.completion`` (see chat-completion.json) or, for a request
#: the provider refused, its error body ``{"error": {message, type, code}}``.
ResponseBody = Annotated[
    msgspec.Raw,
    msgspec.Meta(
        description="The chat.completion (moderation included), or the API's error body for a refused request.",
        extra_json_schema={"type": "object"},
    ),
]


class BatchResponse(Wire, frozen=True):
    status_code: int
    #: The ``X-Client-Request-Id`` the pipeline sent the provider for this job (derived from the job id).
    request_id: str
    body: ResponseBody


class BatchError(Wire, frozen=True):
    #: The review reason kind (``flagged``, ``api_error``, ``cancelled`` …).
    code: str
    message: str


class BatchOutputLine(Wire, frozen=True):
    """One line of an output or errors file (``response`` and ``error`` are always written, null or not)."""

    #: ``batch_req_`` and a digest of the job id: the same in every ``results`` run.
    id: str
    custom_id: str
    response: BatchResponse | None
    error: BatchError | None


# --------------------------------------------------------------------------------------------------
# The manifest on the batches topic
# --------------------------------------------------------------------------------------------------


class TopicOffsets(Wire, frozen=True):
    """A topic and an offset per partition (index = partition number)."""

    topic: str
    offsets: list[int]


class BatchFile(Wire, frozen=True):
    name: str
    size: int
    sha256: str
    #: Lines in the file, blank ones included (line numbers count them).
    lines: int


#: ``submitting`` until every job is published (a submit that stopped half way shows it until run again),
#: then ``submitted``. Progress (in progress, completed, cancelling …) is read from the topics, not stored.
ManifestStatus = Literal["submitting", "submitted"]


class BatchManifest(Wire, frozen=True):
    """A batch, as ``pipeline batch submit`` and ``cancel`` record it (keyed by ``id``, latest record wins)."""

    id: BatchId
    status: ManifestStatus
    #: Epoch ms of the first submit of this batch.
    created_ms: int
    input_file: BatchFile
    #: Jobs in the batch (the Batch API's ``request_counts.total``): the file's valid request lines.
    requests: int
    #: Where the input topic ended before the first job was published (a resumed submit looks from there for
    #: what it already published).
    input: TopicOffsets
    #: Where the output and review topics ended at submit: ``results`` and ``status`` read from there.
    output: TopicOffsets
    review: TopicOffsets
    #: Invalid lines left out with ``--skip-invalid``.
    skipped_lines: int = 0
    metadata: Metadata | None = None
    submitted_ms: int | None = None
    #: Set by ``pipeline batch cancel``: jobs of the batch published before it and not yet called are routed
    #: to review as ``cancelled``.
    cancelled_ms: int | None = None
