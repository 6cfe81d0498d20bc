"""Batch files: OpenAI Batch API input files in, Batch API output and errors files out, moderated.

A batch is a file's requests published as jobs (tagged with the batch in their metadata) and a manifest on
the compacted batches topic; its progress and results are read from the output and review topics, from
where they ended when it was submitted. Nothing is kept on local disk, so any machine can ask.

    lines         parse and check every line of a file (Batch API requests or our own jobs) into jobs
    reading       topic ends from the high watermark; a reader from given offsets to the end
    manifest      the batches topic: read, write, create (compacted)
    submit        check the whole file, record the manifest, publish each job once (resumable)
    progress      follow the output and review topics: each line's standing result, the counts
    status        the Batch API's status names and request_counts, rate and ETA
    output_lines  Result and Review records as Batch API output and errors lines
    results       the files, in input order, through an on-disk spill (bounded memory)
    cancel        mark a batch cancelled (workers route its queued jobs to review as ``cancelled``)
"""

from pipeline.batch.cancel import NothingToCancel, UnknownBatch, cancel_batch
from pipeline.batch.lines import LineProblem
from pipeline.batch.manifest import BatchesTopicMissing, create_batches_topic, read_manifest, read_manifests
from pipeline.batch.progress import BatchFollower, Counts
from pipeline.batch.results import NotFinished, ResultsRequest, Written, write_results
from pipeline.batch.status import BatchStatus, batch_status, status_json, status_text
from pipeline.batch.submit import InvalidLines, SubmitRefused, SubmitReport, SubmitRequest, Topics, submit_batch

__all__ = [
    "BatchFollower",
    "BatchStatus",
    "BatchesTopicMissing",
    "Counts",
    "InvalidLines",
    "LineProblem",
    "NotFinished",
    "NothingToCancel",
    "ResultsRequest",
    "SubmitRefused",
    "SubmitReport",
    "SubmitRequest",
    "Topics",
    "UnknownBatch",
    "Written",
    "batch_status",
    "cancel_batch",
    "create_batches_topic",
    "read_manifest",
    "read_manifests",
    "status_json",
    "status_text",
    "submit_batch",
    "write_results",
]
