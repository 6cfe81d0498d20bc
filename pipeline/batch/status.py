"""A batch's status: the Batch API's status names and ``request_counts`` where they mean the same, our
review counts beside them, a rate and an ETA.

Status, derived from the manifest and the counts (only ``submitting`` is stored):

- ``submitting``: the submit has not finished publishing (one that stopped shows this until it is run again);
- ``in_progress``: requests without a result remain; ``cancelling`` when the batch was cancelled meanwhile
  (jobs still queued go to review as ``cancelled``, calls in flight finish);
- ``completed``: every request has a result (clean, failed or in review); ``cancelled`` when it was cancelled.

The rate is the requests done over the time from the first submit to the latest result; the ETA the
remaining requests at that rate. The cost is the sum of the ``cost_usd`` the worker wrote on every result and
review record of the batch (a job processed twice, or replayed, was paid twice).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

import msgspec

from pipeline.batch.progress import Counts
from schemas.batches import BatchFile, BatchManifest
from schemas.wire import Metadata

BatchState = Literal["submitting", "in_progress", "cancelling", "completed", "cancelled"]

_encoder: Final = msgspec.json.Encoder()


class RequestCounts(msgspec.Struct, frozen=True):
    total: int
    completed: int
    failed: int


class BatchStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``pipeline batch status --json`` prints (times in epoch seconds, as the Batch API gives them)."""

    id: str
    status: BatchState
    created_at: int
    submitted_at: int | None
    cancelled_at: int | None
    input_file: BatchFile
    request_counts: RequestCounts
    #: Requests in review, by reason (``failed`` ones apart).
    in_review: dict[str, int]
    remaining: int
    #: Requests done per second, from the submit to the latest result (None before the first).
    rate_per_s: float | None
    eta_s: float | None
    skipped_lines: int
    metadata: Metadata | None
    #: USD the provider billed for the batch's jobs so far (every processing counted); null when unknown.
    cost_usd: float | None = None


def batch_state(manifest: BatchManifest, counts: Counts) -> BatchState:
    if manifest.status == "submitting":
        return "submitting"
    cancelled = manifest.cancelled_ms is not None
    if counts.remaining:
        return "cancelling" if cancelled else "in_progress"
    return "cancelled" if cancelled else "completed"


def _seconds(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


def batch_status(
    manifest: BatchManifest, counts: Counts, last_done_ms: int | None, spent_usd: float | None = None
) -> BatchStatus:
    rate = eta = None
    if last_done_ms is not None and counts.done:
        elapsed_s = max(0.001, (last_done_ms - manifest.created_ms) / 1000)
        rate = counts.done / elapsed_s
        eta = counts.remaining / rate
    return BatchStatus(
        id=manifest.id,
        status=batch_state(manifest, counts),
        created_at=manifest.created_ms // 1000,
        submitted_at=_seconds(manifest.submitted_ms),
        cancelled_at=_seconds(manifest.cancelled_ms),
        input_file=manifest.input_file,
        request_counts=RequestCounts(counts.total, counts.completed, counts.failed),
        in_review=dict(sorted(counts.in_review.items())),
        remaining=counts.remaining,
        rate_per_s=None if rate is None else round(rate, 3),
        eta_s=None if eta is None else round(eta, 1),
        skipped_lines=manifest.skipped_lines,
        metadata=manifest.metadata,
        cost_usd=None if spent_usd is None else round(spent_usd, 6),
    )


def status_json(status: BatchStatus) -> str:
    return _encoder.encode(status).decode()


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def file_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:,.0f} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} GB"


def status_text(status: BatchStatus) -> str:
    """The status for a person: a header line, one line per count, the rate and the ETA."""
    file = status.input_file
    lines = [
        f"batch {status.id}  {status.status}  created {_when(status.created_at)}",
        f"  file       {file.name} ({file_size(file.size)}, {file.lines:,} lines, sha256 {file.sha256[:12]}…)",
        f"  total      {status.request_counts.total:>9,}",
        f"  completed  {status.request_counts.completed:>9,}",
        f"  failed     {status.request_counts.failed:>9,}",
        f"  in review  {sum(status.in_review.values()):>9,}"
        + (f"  ({', '.join(f'{k} {v:,}' for k, v in status.in_review.items())})" if status.in_review else ""),
        f"  remaining  {status.remaining:>9,}",
    ]
    if status.skipped_lines:
        lines.append(f"  skipped    {status.skipped_lines:>9,}  invalid lines left out at submit")
    if status.cancelled_at is not None:
        lines.append(f"  cancelled  {_when(status.cancelled_at)}")
    if status.rate_per_s is not None:
        eta = f"  eta {status.eta_s:,.0f} s" if status.remaining and status.eta_s is not None else ""
        lines.append(f"  rate       {status.rate_per_s:,.1f} requests/s{eta}")
    if status.cost_usd is not None:
        lines.append(f"  cost       ${status.cost_usd:,.6f}  billed by the provider so far")
    if status.metadata:
        lines.append("  metadata   " + ", ".join(f"{k}={v}" for k, v in sorted(status.metadata.items())))
    return "\n".join(lines)
